//! The baseline: bug sites known and accepted (`report --write-baseline
//! FILE`), which a later walk given `--baseline FILE` reports without
//! letting them set its exit status.
//!
//! A JSON file: `{"mayfail_baseline": 1, "sites": [{"stack", "class",
//! "key"}]}`. A site is in the baseline when its stack id is (the same
//! build), or when its class and key are (another build of the same code:
//! stack ids are return addresses, which move with any change). The key is
//! the function names of the site's call chain, innermost first, without
//! files or lines, so that an edit elsewhere in a file keeps it.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Class;
use crate::failure::Failure;
use crate::model::{Site, Summary};
use crate::state::StackId;

/// The baseline format's version.
const VERSION: u32 = 1;

/// One known site.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    stack: String,
    class: String,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct File {
    mayfail_baseline: u32,
    sites: Vec<Entry>,
}

/// Known sites, read from a file or made from a report.
#[derive(Debug, Default)]
pub struct Baseline {
    stacks: BTreeSet<String>,
    keys: BTreeSet<(String, String)>,
    entries: Vec<Entry>,
}

/// A site's key: its chain's function names.
fn key(site: &Site) -> String {
    let frames = if site.chain.is_empty() {
        &site.frames
    } else {
        &site.chain
    };
    frames
        .iter()
        .map(|f| f.function.as_str())
        .collect::<Vec<_>>()
        .join(" <- ")
}

impl Baseline {
    fn from_entries(entries: Vec<Entry>) -> Baseline {
        Baseline {
            stacks: entries.iter().map(|e| e.stack.clone()).collect(),
            keys: entries
                .iter()
                .map(|e| (e.class.clone(), e.key.clone()))
                .collect(),
            entries,
        }
    }

    /// The bug sites of `summary`.
    pub fn of(summary: &Summary) -> Baseline {
        let mut entries: Vec<Entry> = summary
            .sites
            .iter()
            .filter(|s| s.class().is_bug())
            .map(|s| Entry {
                stack: StackId(s.id).to_string(),
                class: s.class().name().to_owned(),
                key: key(s),
            })
            .collect();
        entries.sort();
        entries.dedup();
        Baseline::from_entries(entries)
    }

    /// Reads a baseline file: bad input if it is not one.
    pub fn read(path: &Path) -> Result<Baseline, Failure> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Failure::bad_input(format!(
                "--baseline {}: no such file (write one with --write-baseline FILE)",
                path.display()
            )),
            _ => Failure::io("read", path, e),
        })?;
        let file: File = serde_json::from_str(&text).map_err(|e| {
            Failure::bad_input(format!(
                "--baseline {}: not a baseline written by --write-baseline ({e})",
                path.display()
            ))
        })?;
        if file.mayfail_baseline != VERSION {
            return Err(Failure::bad_input(format!(
                "--baseline {}: baseline format {} (this runner reads {VERSION})",
                path.display(),
                file.mayfail_baseline
            )));
        }
        if let Some(bad) = file
            .sites
            .iter()
            .find(|e| Class::from_name(&e.class).is_none())
        {
            return Err(Failure::bad_input(format!(
                "--baseline {}: unknown class {:?}",
                path.display(),
                bad.class
            )));
        }
        Ok(Baseline::from_entries(file.sites))
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let file = File {
            mayfail_baseline: VERSION,
            sites: self.entries.clone(),
        };
        let mut text =
            serde_json::to_string_pretty(&file).expect("a baseline of strings always serializes");
        text.push('\n');
        text
    }

    /// Whether `site` is known: by stack id, or by class and key.
    pub fn contains(&self, site: &Site) -> bool {
        self.stacks.contains(&StackId(site.id).to_string())
            || self
                .keys
                .contains(&(site.class().name().to_owned(), key(site)))
    }
}
