//! The state file of `mayfail sites`: append-only lines, read back whole.
//!
//! ```text
//! mayfail-sites\t1                                   header (format version)
//! baseline\t<ms>\t<status>                          a run without injection
//! run\t<n>\t<copies>\t<unix ms>\t<command>          a run starts
//! site\t<id>\t<pid>\t<what>\t<thread>\t<binary>\t<where>\t<frames>\t<facts>\t<chain>
//! fate\t<id>\t<pid>\t<outcome>\t<detail>
//! runtime\t<id>                                     a stack of the runtime: not a site
//! retry\t<id>                                       an interrupted site: fail it again
//! end\t<n>\t<ms>\t<how>                             a run ended (done, timeout, interrupted)
//! unattributed\t<n>\t<pid>\t<outcome>\t<detail>      a process of run n ended badly, no site to blame
//! other-shard\t<pid>                                the process met stacks of other shards
//! handled-exit\t<codes>                             exit statuses that count as handled (1,7)
//! test\t<pid>\t<package>\t<kind>\t<target>\t<name>    process pid ran that test alone (written once it ended)
//! tested\t<package>\t<kind>\t<target>\t<name>         every stack of the test is walked
//! left-out\t<package>\t<kind>\t<target>\t<name>\t<detail>  the test fails without injection: not walked
//! ```
//!
//! The last three come from the per-test engine (`--engine tests`): the
//! runner writes a `test` line once the process it started for one test
//! has ended, so every `site` line that process wrote comes before it, and
//! a later process with the same pid comes after it: the sites of pid P
//! not yet given a test belong to the next `test` line of P.
//!
//! Processes under test write `site`, `fate`, `runtime` and `other-shard`
//! lines (each with one `O_APPEND` write), the runner the others. A `fate`
//! `failed` with `exit N` where N is one of the `handled-exit` statuses
//! reads as `handled`, whoever wrote it: `sites` and `report` agree. Every line is whole, so an
//! interruption leaves the file consistent. A line of a kind this runner
//! does not know (a newer one's) is skipped and counted, and the runner
//! says how many it skipped; any other line that does not parse makes the
//! file corrupt, and the runner refuses to go on with it rather than
//! overwrite anything. Every line is written and read by `mayfail::state`
//! (`Line`'s `Display`, `parse_line`). A `run` line's command must read back as the runner
//! quoted it ([`unquote_command`]), so every replay line is built from the
//! arguments, never from the file's text.
//!
//! A line cut short at the end of the file (a
//! full disk, `ENOSPC`, took the rest of a process's write; or a writer was
//! killed mid-line) is not corruption: the line is left out when the file
//! is read, and the runner, which holds the exclusive lock, cuts it off
//! ([`drop_torn_tail`]) before it appends, so that the rest of the walk is
//! kept. A line that does not parse anywhere else still makes the file
//! corrupt.
//!
//! A `site` line belongs to the run whose `run` line precedes it, if that
//! run has no `end` line yet: the runner writes `end` only once every
//! process of the run is gone. A site written outside any run (by a process
//! that outlived its run, or a command run by hand with `sites=FILE`) is
//! *stray*: not reported, and the runner asks for it again with `retry`.
//!
//! The file is opened once per walk ([`open`]) and held with `flock`: an
//! exclusive lock for `sites`, a shared one for `report`, so that two
//! walks never share a file. It must be a regular file (a symbolic link to
//! one is followed), or absent for `sites`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use mayfail::Outcome;
pub use mayfail::state::{HEADER, StackId};
use mayfail::state::{Line, parse_line, unquote_command};

#[derive(Clone, Debug)]
pub struct Record {
    pub id: u64,
    pub pid: u32,
    /// The run it happened in (0: outside any run, see `stray`).
    pub run: u64,
    /// Written outside any run: not reported, failed again.
    pub stray: bool,
    pub what: String,
    pub thread: String,
    pub binary: String,
    /// `function (file:line) <- caller (file:line) <- ...`
    pub place: String,
    pub frames: String,
    /// The allocation serves a panic's message or payload (`facts` holds
    /// `panic`).
    pub panic: bool,
    /// Its frames outside the allocation machinery up to the test harness,
    /// `place`'s format (empty in a line of an older writer).
    pub chain: String,
    /// Set once a `fate` line for (id, pid) is read.
    pub fate: Option<(Outcome, String)>,
    /// A later `retry` line asks for this site again.
    pub retried: bool,
    /// The test whose process failed it (per-test walks).
    pub test: Option<Test>,
    /// The sites its process failed first, in order, when it was found on
    /// their error path (`facts` holds `after=ID+ID`); empty otherwise.
    pub after: Vec<u64>,
    /// Its process was forked at the site by a process of the walk
    /// (`facts` holds `forked`): not a process the command started.
    pub forked: bool,
    /// Where its process's test panicked (`panicked` line), `file:line`.
    pub panicked_at: Option<String>,
}

/// A test of a cargo test binary, owned (see `mayfail::state::TestName`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Test {
    pub package: String,
    pub kind: String,
    pub target: String,
    pub name: String,
}

impl Test {
    pub fn from_line(test: &mayfail::state::TestName<'_>) -> Test {
        Test {
            package: test.package.to_string(),
            kind: test.kind.to_string(),
            target: test.target.to_string(),
            name: test.name.to_string(),
        }
    }

    /// The test as its state lines name it.
    pub fn line_name(&self) -> mayfail::state::TestName<'_> {
        mayfail::state::TestName {
            package: self.package.as_str().into(),
            kind: self.kind.as_str().into(),
            target: self.target.as_str().into(),
            name: self.name.as_str().into(),
        }
    }

    /// Its four names, tab-separated: what `--shard` hashes (shards of one
    /// walk must agree on it, whatever the runner's version).
    pub fn fields(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}",
            self.package, self.kind, self.target, self.name
        )
    }

    /// `thin-vec lib tests::drain`, `thin-vec test:integration tests::x`.
    pub fn display(&self) -> String {
        if self.kind == "lib" {
            format!("{} lib {}", self.package, self.name)
        } else {
            format!(
                "{} {}:{} {}",
                self.package, self.kind, self.target, self.name
            )
        }
    }

    /// The cargo arguments that select its target: `--lib`, `--test NAME`...
    pub fn target_selector(&self) -> Vec<String> {
        match self.kind.as_str() {
            "lib" | "proc-macro" => vec!["--lib".to_owned()],
            "doctest" => vec!["--doc".to_owned()],
            kind => vec![format!("--{kind}"), self.target.clone()],
        }
    }

    /// The command that runs this test alone, from `cargo test ARGS`: the
    /// arguments before `--` that build what was walked (features,
    /// profile, target), without those that choose packages or targets,
    /// then `-p PACKAGE`, its target, and `-- --exact NAME`.
    pub fn replay_command(&self, walked: &[OsString]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        let mut words = walked.iter();
        let mut skip_value = false;
        for word in words.by_ref() {
            if skip_value {
                skip_value = false;
                continue;
            }
            let text = word.to_string_lossy();
            if text == "--" {
                break;
            }
            if SELECTORS_WITH_VALUE.contains(&text.as_ref()) {
                skip_value = true;
                continue;
            }
            let selector = SELECTORS.contains(&text.as_ref())
                || SELECTORS_WITH_VALUE
                    .iter()
                    .any(|s| text.starts_with(&format!("{s}=")));
            if !selector {
                argv.push(word.clone());
            }
        }
        argv.extend(["-p".into(), self.package.clone().into()]);
        argv.extend(self.target_selector().into_iter().map(OsString::from));
        if self.kind == "doctest" {
            argv.extend(["--".into(), doctest_filter(&self.name).into()]);
        } else {
            // The walk ran it so: a panic's message is written as it
            // happens, not kept (its allocations are not the same).
            argv.extend([
                "--".into(),
                "--exact".into(),
                self.name.clone().into(),
                "--nocapture".into(),
            ]);
        }
        argv
    }
}

/// The path a site was found after: the ids of a `facts` field's
/// `after=ID+ID` (none when a word is not a stack id).
fn after_of(facts: &str) -> Vec<u64> {
    facts
        .split(',')
        .find_map(|fact| fact.strip_prefix("after="))
        .map(|path| {
            path.split('+')
                .map(|id| u64::from_str_radix(id, 16))
                .collect::<Result<Vec<u64>, _>>()
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// The filter that runs the doctest `name` (`src/lib.rs - Foo::bar (line
/// 12)`) with as few others as cargo allows: rustdoc splits its test
/// arguments at whitespace, so no filter can hold the whole name; its item
/// path (`Foo::bar`: that item's doctests) when it has no whitespace, else
/// its file.
fn doctest_filter(name: &str) -> String {
    let (file, rest) = name.split_once(" - ").unwrap_or((name, ""));
    let item = rest.rsplit_once(" (line ").map_or("", |(item, _)| item);
    if !item.is_empty() && !item.contains(char::is_whitespace) {
        item.to_owned()
    } else {
        file.to_owned()
    }
}

/// `cargo test` arguments that choose packages or targets, alone...
const SELECTORS: [&str; 11] = [
    "--workspace",
    "--all",
    "--lib",
    "--bins",
    "--tests",
    "--examples",
    "--benches",
    "--all-targets",
    "--doc",
    "--no-run",
    "--no-fail-fast",
];

/// ...and with a value.
const SELECTORS_WITH_VALUE: [&str; 7] = [
    "-p",
    "--package",
    "--exclude",
    "--bin",
    "--test",
    "--example",
    "--bench",
];

/// One `run` line and its `end`.
#[derive(Clone, Debug)]
pub struct Run {
    pub number: u64,
    /// As the file holds it: quoted for a shell.
    pub command: String,
    /// The same command, read back into its arguments.
    pub argv: Vec<OsString>,
    /// `runtime` lines written during the run.
    pub runtime_stacks: usize,
    pub elapsed_ms: Option<u64>,
    pub how: Option<String>,
}

/// A process a run started that ended badly with no site to blame (an
/// `unattributed` line).
#[derive(Clone, Debug)]
pub struct Unattributed {
    pub run: u64,
    pub pid: u32,
    pub outcome: Outcome,
    pub detail: String,
}

/// Everything a state file holds.
#[derive(Debug, Default)]
pub struct State {
    pub records: Vec<Record>,
    pub runs: Vec<Run>,
    pub baseline: Option<(u64, String)>,
    pub runtime_stacks: usize,
    /// Runs' processes that ended badly with no site to blame.
    pub unattributed: Vec<Unattributed>,
    /// `other-shard` lines: processes that met stacks of other shards.
    pub other_shard: usize,
    /// `no-fork` lines: why processes asked to fork at their sites could
    /// not, one per process.
    pub no_fork: Vec<String>,
    /// `fallible` lines: functions whose return type promises to report an
    /// allocation failure.
    pub fallible: std::collections::BTreeSet<String>,
    /// Exit statuses counted as handled besides 0 (`handled-exit`), sorted.
    pub handled_exit: Vec<u8>,
    /// Tests whose walk is complete (`tested`).
    pub tested: std::collections::BTreeSet<Test>,
    /// Tests that fail without injection, and how (`left-out`).
    pub left_out: Vec<(Test, String)>,
    /// Processes of the per-test engine (`test` lines).
    pub test_processes: usize,
    /// Lines of kinds this runner does not know (a newer one's), skipped.
    pub unknown_lines: usize,
    /// Bytes read: where the next run's lines start (a line cut short at
    /// the end excluded).
    pub len: u64,
    /// A last line cut short, left out: its first bytes, as text.
    pub torn: Option<String>,
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
    #[cfg(test)]
    pub fn load(path: &Path) -> Result<State, StateError> {
        match File::open(path) {
            Ok(file) => State::read(&file, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StateError::Unreadable(path.to_owned(), e)),
        }
    }

    /// Reads the state file open as `file` (`path` names it in messages),
    /// from its start whatever the file's offset.
    pub fn read(file: &File, path: &Path) -> Result<State, StateError> {
        let mut bytes = Vec::new();
        let mut offset = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match std::os::unix::fs::FileExt::read_at(file, &mut chunk, offset) {
                Ok(0) => break,
                Ok(n) => {
                    bytes.extend_from_slice(&chunk[..n]);
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StateError::Unreadable(path.to_owned(), e)),
            }
        }
        State::parse(&bytes, path)
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<State, StateError> {
        let corrupt = |line: usize, why: String| StateError::Corrupt(path.to_owned(), line, why);
        let mut state = State::default();
        let mut bytes = bytes;
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
                // Not even a whole header: nothing to keep.
                return Err(corrupt(1, "its only line is cut short".to_owned()));
            };
            state.torn = Some(shown_torn(&bytes[end + 1..]));
            bytes = &bytes[..=end];
        }
        let text = String::from_utf8_lossy(bytes);
        state.len = bytes.len() as u64;
        if text.is_empty() {
            return Ok(state);
        }
        let mut reader = Reader {
            state,
            fates: BTreeMap::new(),
            current: None,
        };
        for (index, line) in text.lines().enumerate() {
            if index == 0 && line != HEADER {
                return Err(corrupt(
                    1,
                    format!(
                        "it does not start with the header \"{}\"",
                        HEADER.replace('\t', " ")
                    ),
                ));
            }
            let parsed = parse_line(line).map_err(|e| corrupt(index + 1, e.to_string()))?;
            reader
                .line(parsed)
                .map_err(|why| corrupt(number_of_line(index), why))?;
        }
        Ok(reader.finish())
    }

    /// The `handled-exit` statuses as `--handled-exit` takes them (`1,7`),
    /// empty for none.
    pub fn handled_exit_text(&self) -> String {
        exit_codes_text(&self.handled_exit)
    }

    /// The number the next run gets; `None` if the file already holds the
    /// last number there is.
    pub fn next_run(&self) -> Option<u64> {
        self.runs
            .iter()
            .map(|r| r.number)
            .max()
            .unwrap_or(0)
            .checked_add(1)
    }

    /// The records still in force: written during a run, not asked to be
    /// retried.
    pub fn live(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| !r.retried && !r.stray)
    }

    /// Stray records (written outside any run) not yet asked for again.
    pub fn stray(&self) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(|r| r.stray && !r.retried)
    }

    /// The time of every run that ended, summed (saturating: the numbers
    /// come from a file).
    pub fn total_ms(&self) -> u64 {
        self.runs
            .iter()
            .filter_map(|r| r.elapsed_ms)
            .fold(0u64, u64::saturating_add)
    }

    /// The run numbered `number` (the last one of that number).
    pub fn run(&self, number: u64) -> Option<&Run> {
        self.runs.iter().rev().find(|r| r.number == number)
    }
}

/// A state file being read: the state so far, the fates not yet paired
/// with their site, and the run under way.
struct Reader {
    state: State,
    /// Fates are paired with their site at the end: a process that exits
    /// while its failing thread still resolves symbols writes its fate first.
    fates: BTreeMap<(u64, u32), (Outcome, String)>,
    /// The run under way: after its `run` line, before its `end`.
    current: Option<u64>,
}

impl Reader {
    /// Takes in one line; what is wrong with it, if anything.
    fn line(&mut self, line: Line<'_>) -> Result<(), String> {
        match line {
            Line::Baseline { .. }
            | Line::Run { .. }
            | Line::End { .. }
            | Line::Unattributed { .. }
            | Line::HandledExit { .. } => return self.run_line(line),
            Line::Site { .. }
            | Line::Fate { .. }
            | Line::Runtime { .. }
            | Line::Retry { .. }
            | Line::OtherShard { .. }
            | Line::Panicked { .. }
            | Line::NoFork { .. } => self.site_line(line),
            Line::Test { .. } | Line::Tested { .. } | Line::LeftOut { .. } => self.test_line(line),
            Line::Fallible { function } => {
                self.state.fallible.insert(function.into_owned());
            }
            // Kinds a newer writer may add.
            Line::Unknown { .. } => self.state.unknown_lines += 1,
            // The header and empty lines.
            _ => {}
        }
        Ok(())
    }

    /// The runner's lines about runs.
    fn run_line(&mut self, line: Line<'_>) -> Result<(), String> {
        match line {
            Line::Baseline { ms, status } => self.state.baseline = Some((ms, status.into_owned())),
            Line::Run {
                number, command, ..
            } => {
                let Some(argv) = unquote_command(&command) else {
                    return Err(
                        "its command is not quoted as the runner quotes commands".to_owned()
                    );
                };
                self.current = Some(number);
                self.state.runs.push(Run {
                    number,
                    command: command.into_owned(),
                    argv,
                    runtime_stacks: 0,
                    elapsed_ms: None,
                    how: None,
                });
            }
            Line::End { number, ms, how } => {
                if self.current == Some(number) {
                    self.current = None;
                }
                if let Some(r) = self
                    .state
                    .runs
                    .iter_mut()
                    .rev()
                    .find(|r| r.number == number)
                {
                    r.elapsed_ms = Some(ms);
                    r.how = Some(how.into_owned());
                }
            }
            Line::Unattributed {
                run,
                pid,
                outcome,
                detail,
            } => self.state.unattributed.push(Unattributed {
                run,
                pid,
                outcome,
                detail: detail.into_owned(),
            }),
            Line::HandledExit { codes } => {
                self.state.handled_exit =
                    mayfail::state::parse_exit_codes(&codes).unwrap_or_default();
                self.state.handled_exit.sort_unstable();
                self.state.handled_exit.dedup();
            }
            _ => {}
        }
        Ok(())
    }

    /// The lines of the processes under test, and `retry`.
    fn site_line(&mut self, line: Line<'_>) {
        match line {
            Line::Site {
                id,
                pid,
                what,
                thread,
                binary,
                place,
                frames,
                facts,
                chain,
            } => self.state.records.push(Record {
                id,
                pid,
                run: self.current.unwrap_or(0),
                stray: self.current.is_none(),
                what: what.into_owned(),
                thread: thread.into_owned(),
                binary: binary.into_owned(),
                place: place.into_owned(),
                frames: frames.into_owned(),
                panic: facts.split(',').any(|fact| fact == "panic"),
                after: after_of(&facts),
                forked: facts.split(',').any(|fact| fact == "forked"),
                panicked_at: None,
                chain: chain.into_owned(),
                fate: None,
                retried: false,
                test: None,
            }),
            Line::Fate {
                id,
                pid,
                outcome,
                detail,
            } => {
                self.fates
                    .entry((id, pid))
                    .or_insert((outcome, detail.into_owned()));
            }
            Line::Runtime { .. } => {
                self.state.runtime_stacks += 1;
                if let (Some(_), Some(run)) = (self.current, self.state.runs.last_mut()) {
                    run.runtime_stacks += 1;
                }
            }
            Line::Retry { id } => {
                for r in self.state.records.iter_mut().filter(|r| r.id == id) {
                    r.retried = true;
                }
            }
            Line::OtherShard { .. } => self.state.other_shard += 1,
            Line::NoFork { reason, .. } => self.state.no_fork.push(reason.into_owned()),
            Line::Panicked { id, pid, location } => {
                for r in self
                    .state
                    .records
                    .iter_mut()
                    .filter(|r| r.id == id && r.pid == pid)
                {
                    r.panicked_at = Some(location.to_string());
                }
            }
            _ => {}
        }
    }

    /// The per-test engine's lines.
    fn test_line(&mut self, line: Line<'_>) {
        match line {
            Line::Test { pid, test } => {
                let test = Test::from_line(&test);
                for record in self
                    .state
                    .records
                    .iter_mut()
                    .filter(|r| r.pid == pid && r.test.is_none())
                {
                    record.test = Some(test.clone());
                }
                self.state.test_processes += 1;
            }
            Line::Tested { test } => {
                self.state.tested.insert(Test::from_line(&test));
            }
            Line::LeftOut { test, detail } => {
                let test = Test::from_line(&test);
                if !self.state.left_out.iter().any(|(t, _)| *t == test) {
                    self.state.left_out.push((test, detail.into_owned()));
                }
            }
            _ => {}
        }
    }

    /// The state, each site given its fate.
    fn finish(mut self) -> State {
        for record in &mut self.state.records {
            record.fate = self
                .fates
                .get(&(record.id, record.pid))
                .map(|(outcome, detail)| state_outcome(&self.state.handled_exit, *outcome, detail));
        }
        self.state
    }
}

/// `1,7`: statuses as `handled-exit` and `--handled-exit` write them.
pub fn exit_codes_text(codes: &[u8]) -> String {
    codes
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The outcome a fate counts as: `failed` with `exit N`, where N is one of
/// the `handled` statuses, is `handled`.
pub fn state_outcome(handled: &[u8], outcome: Outcome, detail: &str) -> (Outcome, String) {
    let declared = outcome == Outcome::Failed
        && detail
            .strip_prefix("exit ")
            .and_then(|code| code.parse::<u8>().ok())
            .is_some_and(|code| handled.contains(&code));
    if declared {
        (
            Outcome::Handled,
            format!("{detail} (declared handled: --handled-exit)"),
        )
    } else {
        (outcome, detail.to_owned())
    }
}

/// 1-based, for messages.
fn number_of_line(index: usize) -> usize {
    index.saturating_add(1)
}

/// The first bytes of a line cut short, as text for a message.
fn shown_torn(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).replace('\t', " ");
    if bytes.len() > 60 {
        format!("{text}...")
    } else {
        text
    }
}

/// Cuts off a last line cut short (see the module docs) from the state
/// file open as `file`, whose exclusive lock the caller holds and whose
/// writers are gone. Returns the line's first bytes if there was one;
/// reads one byte if there was none. A file without a whole line is left
/// as it is: it is no state file to repair.
pub fn drop_torn_tail(file: &File) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut last = [0u8];
    if len == 0 || (file.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n') {
        return Ok(None);
    }
    // Back to the last line break, a block at a time.
    let mut end = len;
    let keep = loop {
        let start = end.saturating_sub(4096);
        let mut block = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut block, start)?;
        if let Some(at) = block.iter().rposition(|&b| b == b'\n') {
            break start + at as u64 + 1;
        }
        if start == 0 {
            return Ok(None);
        }
        end = start;
    };
    let mut torn = vec![0u8; (len - keep).min(64) as usize];
    file.read_exact_at(&mut torn, keep)?;
    file.set_len(keep)?;
    Ok(Some(shown_torn(&torn)))
}

/// Appends one line (with its newline) in one write to the state file open
/// as `file`.
pub fn append(mut file: &File, line: &str) -> std::io::Result<()> {
    let mut text = line.replace('\n', " ");
    text.push('\n');
    file.write_all(text.as_bytes())
}

/// What a subcommand does with the state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `sites`: read and append, created if missing, held exclusively.
    Walk,
    /// `report`: read, must exist, shared with other reports.
    Report,
}

/// Why the state file cannot be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Absent (for `report`).
    Missing,
    /// Not a regular file: what it is (`a FIFO`...).
    NotRegular(&'static str),
    /// Opening or locking failed.
    Io(std::io::Error),
    /// Another walk holds it: its pid, if the system says.
    InUse(Option<u32>),
}

/// What a file type is, in words, if it is not a regular file.
fn not_regular(file_type: std::fs::FileType) -> Option<&'static str> {
    Some(if file_type.is_file() {
        return None;
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    })
}

/// Opens the state file at `path` for `access` and locks it (see the
/// module docs). Nothing is read or run before this succeeds: a FIFO is
/// never opened for reading (which would wait for a writer), and a file
/// that cannot be written is found before the walk starts.
pub fn open(path: &Path, access: Access) -> Result<File, OpenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(target) => {
                if let Some(kind) = not_regular(target.file_type()) {
                    return Err(OpenError::NotRegular(kind));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(OpenError::NotRegular("a symbolic link to nothing"));
            }
            Err(e) => return Err(OpenError::Io(e)),
        },
        Ok(meta) => {
            if let Some(kind) = not_regular(meta.file_type()) {
                return Err(OpenError::NotRegular(kind));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if access == Access::Report {
                return Err(OpenError::Missing);
            }
        }
        Err(e) => return Err(OpenError::Io(e)),
    }
    let mut options = OpenOptions::new();
    options.read(true);
    if access == Access::Walk {
        options.append(true).create(true);
    }
    // Should the path have become a FIFO since: do not wait for a writer.
    let file = options
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(OpenError::Io)?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    if let Some(kind) = not_regular(meta.file_type()) {
        return Err(OpenError::NotRegular(kind));
    }
    let operation = match access {
        Access::Walk => libc::LOCK_EX,
        Access::Report => libc::LOCK_SH,
    };
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(if error.kind() == std::io::ErrorKind::WouldBlock {
            OpenError::InUse(lock_holder(&meta))
        } else {
            OpenError::Io(error)
        });
    }
    Ok(file)
}

/// The pid holding a `flock` on the file `meta` describes, from
/// `/proc/locks` (Linux), if it says.
fn lock_holder(meta: &std::fs::Metadata) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let device = meta.dev() as libc::dev_t;
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        libc::major(device),
        libc::minor(device),
        meta.ino()
    );
    locks.lines().find_map(|line| {
        // `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`; waiters have `->`.
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, file, ..] if *file == wanted => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn a_test_replays_alone_with_the_walk_s_build_arguments() {
        let words = |text: &str| -> Vec<OsString> { text.split(' ').map(OsString::from).collect() };
        let test = Test {
            package: "thin-vec".to_owned(),
            kind: "lib".to_owned(),
            target: "thin_vec".to_owned(),
            name: "tests::drain".to_owned(),
        };
        let walked =
            words("cargo test --offline --workspace -p other --features=x --lib -- --skip y");
        assert_eq!(
            test.replay_command(&walked),
            words(
                "cargo test --offline --features=x -p thin-vec --lib -- --exact tests::drain --nocapture"
            )
        );
        let integration = Test {
            kind: "test".to_owned(),
            target: "it".to_owned(),
            ..test.clone()
        };
        assert_eq!(
            integration.replay_command(&words("cargo test --test=it")),
            words("cargo test -p thin-vec --test it -- --exact tests::drain --nocapture")
        );
        assert_eq!(integration.display(), "thin-vec test:it tests::drain");
        // A doctest: its item's doctests, or its file's when the item has
        // whitespace or there is none (a module's doctest).
        let doctest = |name: &str| Test {
            kind: "doctest".to_owned(),
            name: name.to_owned(),
            ..test.clone()
        };
        let filter = |name: &str| {
            doctest(name)
                .replay_command(&words("cargo test"))
                .last()
                .unwrap()
                .clone()
        };
        assert_eq!(
            doctest("src/lib.rs - ThinVec<T>::push (line 12)")
                .replay_command(&words("cargo test -q")),
            words("cargo test -q -p thin-vec --doc -- ThinVec<T>::push")
        );
        assert_eq!(filter("src/lib.rs - (line 42)"), "src/lib.rs");
        assert_eq!(filter("src/a.rs - <X as Y>::f (line 3)"), "src/a.rs");
        assert_eq!(filter("src/lib.rs - f (line 3) - should panic"), "f");
    }

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
        assert_eq!((s.runtime_stacks, s.next_run()), (1, Some(2)));
        let s = load_text(&format!("{text}retry\t00000000000000aa\n")).unwrap();
        assert_eq!(s.live().count(), 0);
    }

    #[test]
    fn sites_outside_a_run_are_stray_and_runtime_stacks_count_per_run() {
        let text = "mayfail-sites\t1\nrun\t1\t1\t0\tcmd\nruntime\t00000000000000bb\n\
            end\t1\t5\tdone\n\
            site\t00000000000000aa\t7\talloc\tmain\tbin\tf (a.rs:1)\tbin+0x1\n";
        let s = load_text(text).unwrap();
        assert_eq!(s.live().count(), 0);
        assert_eq!(s.stray().count(), 1);
        assert_eq!(s.runs[0].runtime_stacks, 1);
        let max = u64::MAX;
        let s = load_text(&format!("mayfail-sites\t1\nrun\t{max}\t1\t0\tcmd\nend\t{max}\t{max}\tdone\nend\t{max}\t{max}\tdone\n")).unwrap();
        assert_eq!((s.next_run(), s.total_ms()), (None, max));
    }

    #[test]
    fn commands_read_back_only_as_the_runner_quotes_them() {
        let argv: Vec<OsString> = [
            &b"cargo"[..],
            b"",
            b"a b",
            b"it's",
            b"'",
            b"''x",
            b"$(id)",
            "caf\u{e9}".as_bytes(),
            b"\xff'\\ x",
        ]
        .iter()
        .map(|w| OsString::from_vec(w.to_vec()))
        .collect();
        let text = mayfail::state::quote_command(&argv);
        assert_eq!(unquote_command(&text), Some(argv));
        for bad in [
            "", "a  b", " a", "a;b", "'a", "$'\\q'", "a 'b'c", "\"a\"", "a\tb",
        ] {
            assert_eq!(unquote_command(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn declared_exit_statuses_read_as_handled_whoever_wrote_the_fate() {
        let text = "mayfail-sites\t1\nhandled-exit\t7,1\nrun\t1\t1\t0\tcmd\n\
            site\t00000000000000aa\t7\talloc\tmain\tbin\tf (a.rs:1)\tbin+0x1\n\
            site\t00000000000000bb\t8\talloc\tmain\tbin\tg (a.rs:2)\tbin+0x2\n\
            site\t00000000000000cc\t9\talloc\tmain\tbin\th (a.rs:3)\tbin+0x3\n\
            fate\t00000000000000aa\t7\tfailed\texit 1\n\
            fate\t00000000000000bb\t8\tfailed\texit 2\n\
            fate\t00000000000000cc\t9\tfailed\texit 7\n\
            unattributed\t1\t6\thung\tkilled after 1 s\nother-shard\t5\nend\t1\t5\ttimeout\n";
        let s = load_text(text).unwrap();
        let outcomes: Vec<Outcome> = s
            .records
            .iter()
            .map(|r| r.fate.as_ref().unwrap().0)
            .collect();
        assert_eq!(
            outcomes,
            [Outcome::Handled, Outcome::Failed, Outcome::Handled]
        );
        assert_eq!(s.handled_exit_text(), "1,7");
        assert_eq!((s.unattributed.len(), s.other_shard), (1, 1));
        assert_eq!(s.unattributed[0].outcome, Outcome::Hung);
        // Without the line, exit 1 is a failure.
        let s = load_text(&text.replace("handled-exit\t7,1\n", "")).unwrap();
        assert_eq!(s.records[0].fate.as_ref().unwrap().0, Outcome::Failed);
    }

    #[test]
    fn a_last_line_cut_short_is_left_out_and_cut_off_by_the_walk() {
        let whole = "mayfail-sites\t1\nrun\t1\t1\t0\tcmd\n\
            site\t00000000000000aa\t7\talloc\tmain\tbin\tf (a.rs:1)\tbin+0x1\n";
        let text = format!("{whole}site\t00000000000000bb\t8\tall");
        let s = load_text(&text).unwrap();
        assert_eq!(s.records.len(), 1);
        assert_eq!(s.len, whole.len() as u64);
        assert_eq!(s.torn.as_deref(), Some("site 00000000000000bb 8 all"));
        assert!(load_text(whole).unwrap().torn.is_none());

        let dir = std::env::temp_dir().join(format!("mayfail-torn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("walk.state");
        for (content, kept, dropped) in [
            (text.as_str(), whole, Some("site 00000000000000bb 8 all")),
            (whole, whole, None),
            ("", "", None),
            ("no line break", "no line break", None),
        ] {
            std::fs::write(&path, content).unwrap();
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .unwrap();
            assert_eq!(drop_torn_tail(&file).unwrap().as_deref(), dropped);
            assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
        }
        // Longer than a block read back.
        let long = format!("{whole}{}", "x".repeat(10_000));
        std::fs::write(&path, &long).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        assert!(drop_torn_tail(&file).unwrap().unwrap().ends_with("..."));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), whole);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_say_where() {
        for (text, line) in [
            ("hello\n", 1),
            ("mayfail-sites\t1\nsite\tzz\t1\n", 2),
            ("mayfail-sites\t1\nrun\t1\t1\t0\tcmd\nwhat?\n", 3),
            ("mayfail-sites\t1\nrun\t1\t1\t0\tcmd\nSite\t1\n", 3),
            ("mayfail-sites", 1),
            ("mayfail-sites\t1\nrun\t1\t1\t0\tx; rm -rf ~\n", 2),
            // A line cut short at the end is left out, not what is before it.
            ("mayfail-sites\t1\nwhat?\nrun\t1", 2),
        ] {
            match load_text(text) {
                Err(StateError::Corrupt(_, at, _)) => assert_eq!(at, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    /// A file written before free-text fields were escaped (a per-test
    /// walk: its runs, sites, fates, tests, left-out tests, a handled exit
    /// status) reads as it did, and every line is written back byte for
    /// byte.
    #[test]
    fn a_file_written_before_fields_were_escaped_reads_as_it_did() {
        let text = include_str!("../tests/fixtures/state-before-escaping.state");
        let state = load_text(text).unwrap();
        assert_eq!(state.runs.len(), 3);
        assert_eq!(state.runs[1].argv.len(), 5);
        assert_eq!(state.records.len(), 7);
        assert!(state.records.iter().all(|r| r.fate.is_some()));
        assert_eq!(state.tested.len(), 3);
        assert_eq!(state.left_out.len(), 2);
        assert_eq!(state.handled_exit, [3]);
        assert_eq!(state.test_processes, 12);
        assert_eq!(state.unknown_lines, 0);
        for line in text.lines() {
            assert_eq!(parse_line(line).unwrap().to_string(), line);
        }
    }

    /// An argument with a tab or a line break is kept on the `run` line and
    /// read back as it was.
    #[test]
    fn a_command_with_tabs_and_line_breaks_survives_the_file() {
        let argv: Vec<OsString> = ["sh", "-c", "printf 'a\tb\n' \\\\n"]
            .map(OsString::from)
            .to_vec();
        let run = Line::Run {
            number: 1,
            copies: "1".into(),
            start_ms: "0".into(),
            command: mayfail::state::quote_command(&argv).into(),
        };
        let state = load_text(&format!("{HEADER}\n{run}\nend\t1\t5\tdone\n")).unwrap();
        assert_eq!(state.runs[0].argv, argv);
    }

    /// A kind a newer writer may add is skipped and counted, wherever it
    /// comes and whatever its fields; the lines around it read as before.
    #[test]
    fn lines_of_unknown_kinds_are_skipped_and_counted() {
        let text = "mayfail-sites\t1\nrun\t1\t1\t0\tcmd\nsite-weight\t00000000000000ab\t9\n\
                    site\t00000000000000ab\t7\talloc\tmain\tprog\tf (a.rs:1)\tprog+0x10\t-\t\n\
                    checkpoint\nend\t1\t5\tdone\n";
        let state = load_text(text).unwrap();
        assert_eq!(state.unknown_lines, 2);
        assert_eq!(state.records.len(), 1);
        assert_eq!(state.records[0].run, 1);
        assert_eq!(state.runs[0].how.as_deref(), Some("done"));
    }
}
