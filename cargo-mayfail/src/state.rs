//! The state file of `mayfail sites`: append-only lines, read back whole.
//!
//! ```text
//! mayfail-sites\t1                                   header (format version)
//! baseline\t<ms>\t<status>                          a run without injection
//! run\t<n>\t<copies>\t<unix ms>\t<command>          a run starts
//! site\t<id>\t<pid>\t<what>\t<thread>\t<binary>\t<where>\t<frames>
//! fate\t<id>\t<pid>\t<outcome>\t<detail>
//! runtime\t<id>                                     a stack of the runtime: not a site
//! retry\t<id>                                       an interrupted site: fail it again
//! end\t<n>\t<ms>\t<how>                             a run ended (done, timeout, interrupted)
//! ```
//!
//! Processes under test write `site`, `fate` and `runtime` lines (each with
//! one `O_APPEND` write), the runner the others. Every line is whole, so an
//! interruption leaves the file consistent; a line that does not parse makes
//! the file corrupt, and the runner refuses to go on with it rather than
//! overwrite anything.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use mayfail::Outcome;
pub use mayfail::state::{HEADER, StackId};
use mayfail::state::{Line, parse_line};

#[derive(Clone, Debug)]
pub struct Record {
    pub id: u64,
    pub pid: u32,
    /// The run it happened in (0: before any `run` line).
    pub run: u64,
    pub what: String,
    pub thread: String,
    pub binary: String,
    /// `function (file:line) <- caller (file:line) <- ...`
    pub place: String,
    pub frames: String,
    /// Set once a `fate` line for (id, pid) is read.
    pub fate: Option<(Outcome, String)>,
    /// A later `retry` line asks for this site again.
    pub retried: bool,
}

/// One `run` line and its `end`.
#[derive(Clone, Debug)]
pub struct Run {
    pub number: u64,
    pub command: String,
    pub elapsed_ms: Option<u64>,
    pub how: Option<String>,
}

/// Everything a state file holds.
#[derive(Debug, Default)]
pub struct State {
    pub records: Vec<Record>,
    pub runs: Vec<Run>,
    pub baseline: Option<(u64, String)>,
    pub runtime_stacks: usize,
    /// Bytes read: where the next run's lines start.
    pub len: u64,
}

/// Why a state file cannot be used.
#[derive(Debug)]
pub enum StateError {
    Unreadable(PathBuf, std::io::Error),
    Corrupt(PathBuf, usize, String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Unreadable(path, e) => {
                write!(f, "cannot read the state file {}: {e}", path.display())
            }
            StateError::Corrupt(path, line, why) => write!(
                f,
                "the state file {} is corrupt at line {line}: {why}; it was left as it is \
                 (move it away to start afresh)",
                path.display()
            ),
        }
    }
}

impl State {
    /// Reads a state file; a missing or empty file is a new state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(StateError::Unreadable(path.to_owned(), e)),
        };
        let corrupt = |line: usize, why: String| StateError::Corrupt(path.to_owned(), line, why);
        let text = String::from_utf8_lossy(&bytes);
        let mut state = State {
            len: bytes.len() as u64,
            ..State::default()
        };
        if text.is_empty() {
            return Ok(state);
        }
        if !text.ends_with('\n') {
            let line = text.lines().count();
            return Err(corrupt(line, "its last line is cut short".to_owned()));
        }
        // Fates are paired with their site at the end: a process that exits
        // while its failing thread still resolves symbols writes its fate first.
        let mut fates: BTreeMap<(u64, u32), (Outcome, String)> = BTreeMap::new();
        let mut run = 0;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if index == 0 && line != HEADER {
                return Err(corrupt(
                    1,
                    format!(
                        "it does not start with the header \"{}\"",
                        HEADER.replace('\t', " ")
                    ),
                ));
            }
            let parsed = parse_line(line).map_err(|e| corrupt(number, e.to_string()))?;
            match parsed {
                Line::Baseline { ms, status } => state.baseline = Some((ms, status.to_owned())),
                Line::Run {
                    number, command, ..
                } => {
                    run = number;
                    state.runs.push(Run {
                        number,
                        command: command.to_owned(),
                        elapsed_ms: None,
                        how: None,
                    });
                }
                Line::End { number, ms, how } => {
                    if let Some(r) = state.runs.iter_mut().rev().find(|r| r.number == number) {
                        r.elapsed_ms = Some(ms);
                        r.how = Some(how.to_owned());
                    }
                }
                Line::Site {
                    id,
                    pid,
                    what,
                    thread,
                    binary,
                    place,
                    frames,
                } => state.records.push(Record {
                    id,
                    pid,
                    run,
                    what: what.to_owned(),
                    thread: thread.to_owned(),
                    binary: binary.to_owned(),
                    place: place.to_owned(),
                    frames: frames.to_owned(),
                    fate: None,
                    retried: false,
                }),
                Line::Fate {
                    id,
                    pid,
                    outcome,
                    detail,
                } => {
                    fates
                        .entry((id, pid))
                        .or_insert((outcome, detail.to_owned()));
                }
                Line::Runtime { .. } => state.runtime_stacks += 1,
                Line::Retry { id } => {
                    for r in state.records.iter_mut().filter(|r| r.id == id) {
                        r.retried = true;
                    }
                }
                // The header, empty lines, and kinds a newer writer may add.
                _ => {}
            }
        }
        for record in &mut state.records {
            record.fate = fates.get(&(record.id, record.pid)).cloned();
        }
        Ok(state)
    }

    /// The number the next run gets.
    pub fn next_run(&self) -> u64 {
        self.runs.iter().map(|r| r.number).max().unwrap_or(0) + 1
    }

    /// The records still in force (not asked to be retried).
    pub fn live(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| !r.retried)
    }
}

/// Appends one line (with its newline) in one write.
pub fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new().append(true).create(true).open(path)?;
    let mut text = line.replace('\n', " ");
    text.push('\n');
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<State, StateError> {
        let dir = std::env::temp_dir().join(format!("mayfail-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}", text.len() * 31 + text.lines().count()));
        std::fs::write(&path, text).unwrap();
        let state = State::load(&path);
        std::fs::remove_file(&path).unwrap();
        state
    }

    #[test]
    fn fates_pair_with_their_process_in_any_order_and_retries_drop_records() {
        let text = "mayfail-sites\t1\nrun\t1\t1\t0\tcmd\n\
            fate\t00000000000000aa\t7\taborted\tSIGABRT\n\
            site\t00000000000000aa\t7\talloc\tmain\tbin\tf (a.rs:1)\tbin+0x1\n\
            fate\t00000000000000aa\t8\tcrashed\tSIGSEGV\n\
            fate\t00000000000000aa\t7\thandled\texit 0\n\
            runtime\t00000000000000bb\nend\t1\t5\tdone\n";
        let s = load_text(text).unwrap();
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.records[0].fate.as_ref().unwrap().0, Outcome::Aborted);
        assert_eq!((s.runtime_stacks, s.next_run()), (1, 2));
        let s = load_text(&format!("{text}retry\t00000000000000aa\n")).unwrap();
        assert_eq!(s.live().count(), 0);
    }

    #[test]
    fn corrupt_files_say_where() {
        for (text, line) in [
            ("hello\n", 1),
            ("mayfail-sites\t1\nsite\tzz\t1\n", 2),
            ("mayfail-sites\t1\nrun\t1\t1\t0\tcmd\nwhat\n", 3),
            ("mayfail-sites\t1\nrun\t1", 2),
        ] {
            match load_text(text) {
                Err(StateError::Corrupt(_, at, _)) => assert_eq!(at, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
