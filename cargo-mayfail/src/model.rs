//! The report's data model: a walk's sites, their frames, the processes no
//! site explains, and how the report is read. Built from the state file by
//! [`crate::report::summarize`], classified by [`crate::findings`], and
//! rendered by [`crate::report`], [`crate::json`] and the SARIF writer; this
//! module only holds the data, so that every one of them stands above it.

use std::collections::BTreeSet;

use clap::ValueEnum;
use serde::Serialize;

use crate::state::Outcome;

/// One frame of a site's `where`: `function (file:line)`.
#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    pub function: String,
    pub location: Option<String>,
}

/// One site: every process that failed it, merged.
#[derive(Clone, Debug)]
pub struct Site {
    pub id: u64,
    pub outcome: Outcome,
    pub detail: String,
    /// How many processes failed it (more than one when copies ran at once).
    pub seen: usize,
    pub first_run: u64,
    pub what: String,
    pub thread: String,
    pub binary: String,
    pub frames: Vec<Frame>,
    pub raw_frames: String,
    pub replay: String,
    /// The allocation served a panic's message or payload.
    pub panic: bool,
    /// Its frames up to the test (empty when the process did not write
    /// them): what its class and blamed frame are read from.
    pub chain: Vec<Frame>,
    /// The test whose process first failed it (per-test walks).
    pub test: Option<String>,
    /// Found on an error path: the sites its process failed first, in
    /// order (error-path exploration, `--depth`); empty otherwise.
    pub after: Vec<u64>,
    /// The first frame of the last of those sites, the failure whose error
    /// path it is on (`function (file:line)`).
    pub error_path_of: Option<String>,
    /// Functions of its chain whose return type, as the debug information
    /// gives it, promises to report an allocation failure (`fallible`
    /// lines).
    pub promising: Vec<String>,
    /// Where the test of the process that failed it panicked (`file:line`),
    /// when the test harness said so.
    pub panicked_at: Option<String>,
}

/// What the report says about a whole walk.
#[derive(Debug, Default)]
pub struct Summary {
    pub command: String,
    pub state: String,
    pub runs: u64,
    pub stopped: String,
    pub elapsed_ms: u64,
    pub baseline_ms: Option<u64>,
    pub last_run_ms: Option<u64>,
    pub runtime_stacks: usize,
    pub sites: Vec<Site>,
    /// Processes of runs that ended badly with no site to blame: the walk
    /// is not all handled while any is listed.
    pub unattributed: Vec<Unattributed>,
    /// Tests that fail without injection, left out of the walk.
    pub left_out: Vec<LeftOut>,
    /// Why processes asked to fork at their sites could not (each reason
    /// once, with how many processes gave it): they failed one site each.
    pub no_fork: Vec<(String, usize)>,
    /// Exit statuses counted as handled besides 0 (`1,7`), or empty.
    pub handled_exit: String,
    /// How the sites are read: shown, blamed, baselined.
    pub view: View,
}

/// A test that fails without injection, left out of a per-test walk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeftOut {
    pub test: String,
    pub detail: String,
}

/// A process a run started that ended badly with no site to blame.
#[derive(Clone, Debug, Serialize)]
pub struct Unattributed {
    pub run: u64,
    pub pid: u32,
    #[serde(serialize_with = "outcome_name")]
    pub outcome: Outcome,
    pub detail: String,
}

fn outcome_name<S: serde::Serializer>(outcome: &Outcome, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(outcome.name())
}

/// Which sites a report lists row by row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Show {
    /// The bug classes row by row; infallible and failed sites as counts
    /// with their top lines; handled as a count
    #[default]
    Bugs,
    /// Every site row by row
    All,
}

/// Which frame a site is blamed on (and grouped by).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    /// The innermost frame outside test frameworks (proptest, quickcheck,
    /// criterion, rstest, arbitrary, libfuzzer-sys): the crate's own frame
    /// or the test that called the framework
    #[default]
    Crate,
    /// The innermost frame in the workspace's files (not cargo's registry
    /// or git checkouts): a site wholly in dependencies is grouped apart
    Workspace,
    /// The innermost frame outside the allocation machinery, whoever's
    All,
}

/// How a report is read: the rows it lists, the frame it blames, and the
/// sites a baseline knows.
#[derive(Debug, Default)]
pub struct View {
    pub show: Show,
    pub scope: Scope,
    /// The stack ids of the summary's sites that the baseline given
    /// (`--baseline`) lists; `None` without a baseline.
    pub baselined: Option<BTreeSet<u64>>,
}

impl View {
    /// Whether the baseline lists `site`.
    pub fn knows(&self, site: &Site) -> bool {
        self.baselined
            .as_ref()
            .is_some_and(|ids| ids.contains(&site.id))
    }
}
