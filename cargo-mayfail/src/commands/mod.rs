//! The subcommands, one file each, and what they share: the value parsers
//! of their options and the files of a walk.

pub(crate) mod preload;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod sites;
pub(crate) mod test;
pub(crate) mod walk;

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::failure::Failure;
use crate::state::{self, Access, OpenError, State, StateError};

/// The most copies `--jobs` runs at once.
const MAX_JOBS: u64 = 1024;

/// `--jobs`, `--max-runs`, `--timeout`: a whole number >= 1.
fn at_least_one(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("takes a whole number >= 1, not \"{value}\"")),
    }
}

/// `--jobs`: a whole number from 1 to [`MAX_JOBS`].
fn jobs(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if (1..=MAX_JOBS).contains(&n) => Ok(n),
        _ => Err(format!(
            "takes a whole number from 1 to {MAX_JOBS}, not \"{value}\""
        )),
    }
}

/// `--shard`: `K/N`, checked by the library's own parser of `sites-shard`.
fn shard(value: &str) -> Result<String, String> {
    // One value, not more attributes after a comma.
    let valid = !value.contains(',')
        && mayfail::check_injection(&format!("sites=state,sites-shard={value}")).is_ok();
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "takes K/N, shard K (from 1 to N) of N shards, as in 2/4; not \"{value}\""
        ))
    }
}

/// `--handled-exit`: exit statuses from 1 to 255, comma-separated; returned
/// sorted, without repeats (`7,1,7` is `1,7`).
fn exit_statuses(value: &str) -> Result<String, String> {
    match mayfail::state::parse_exit_codes(value) {
        Some(mut codes) => {
            codes.sort_unstable();
            codes.dedup();
            Ok(crate::state::exit_codes_text(&codes))
        }
        None => Err(format!(
            "takes exit statuses from 1 to 255, comma-separated, as in 1,7; not \"{value}\""
        )),
    }
}

/// `--retries`: -1, 0 or a count.
fn retries(value: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(n) if n >= -1 => Ok(n),
        _ => Err(format!(
            "takes -1 (forever), 0 (never) or a count N >= 1, not \"{value}\""
        )),
    }
}

/// `--inject`: a spec in the grammar of `MAYFAIL_INJECT`, checked by the
/// library that will read it.
fn injection_spec(value: &str) -> Result<String, String> {
    mayfail::check_injection(value)
        .map(|()| value.to_owned())
        .map_err(|e| format!("takes key=value pairs as MAYFAIL_INJECT does: {e}"))
}

/// The command after `--`, or why there is none.
fn command_to_run(command: Vec<OsString>, separator_given: bool) -> Result<Vec<OsString>, Failure> {
    if !command.is_empty() {
        Ok(command)
    } else if separator_given {
        Err(Failure::bad_input("no command after `--`"))
    } else {
        Err(Failure::bad_input(
            "missing `--` and the command to run: mayfail ... -- CMD ARGS...",
        ))
    }
}

/// The state file and the reports derived from it.
#[derive(Args, Debug)]
pub(crate) struct StateFiles {
    /// State file of the walk (sites: resumed if it exists, created if not)
    #[arg(long, value_name = "FILE", default_value = "mayfail-sites.state")]
    state: PathBuf,
    /// JSON report [default: the state file with .json]
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// HTML report [default: the state file with .html]
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

/// Where the state file, the reports and the command's output are.
pub(crate) struct Paths {
    pub(crate) state: PathBuf,
    pub(crate) json: PathBuf,
    pub(crate) html: PathBuf,
    pub(crate) log: PathBuf,
}

impl StateFiles {
    fn paths(&self) -> Result<Paths, Failure> {
        let state = std::path::absolute(&self.state)
            .map_err(|e| Failure::bad_input(format!("--state {}: {e}", self.state.display())))?;
        let derived = |extension| state.with_extension(extension);
        Ok(Paths {
            json: self.json.clone().unwrap_or_else(|| derived("json")),
            html: self.html.clone().unwrap_or_else(|| derived("html")),
            log: derived("log"),
            state,
        })
    }
}

impl Paths {
    /// Refuses two of the files a subcommand reads and writes that are one
    /// file: `states` (the state files read), the log (the runs' output,
    /// which a report must not overwrite either), and the JSON and HTML
    /// reports. Paths are compared as the system resolves
    /// them (symbolic links, `..`), and files that exist by device and inode
    /// too (hard links). A report written over the state file would lose the
    /// walk; output appended to it would corrupt it.
    pub(crate) fn refuse_collisions(&self, states: &[PathBuf]) -> Result<(), Failure> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        for state in states {
            files.push((format!("the state file {}", state.display()), state));
        }
        files.push((
            format!("the log {} (the state file with .log)", self.log.display()),
            &self.log,
        ));
        files.push((
            format!("the JSON report {}", self.json.display()),
            &self.json,
        ));
        files.push((
            format!("the HTML report {}", self.html.display()),
            &self.html,
        ));
        let identities: Vec<FileIdentity> = files.iter().map(|(_, p)| identify(p)).collect();
        for (i, a) in identities.iter().enumerate() {
            for (j, b) in identities.iter().enumerate().skip(i + 1) {
                if a.is_same(b) {
                    return Err(Failure::bad_input(format!(
                        "{} and {} are the same file: give each its own path (--state, \
                         --json, --html; the log is the state file with .log)",
                        files[i].0, files[j].0
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Where a path leads: its resolved path, and its device and inode if the
/// file exists.
struct FileIdentity {
    resolved: PathBuf,
    inode: Option<(u64, u64)>,
}

impl FileIdentity {
    fn is_same(&self, other: &FileIdentity) -> bool {
        self.resolved == other.resolved
            || matches!((self.inode, other.inode), (Some(a), Some(b)) if a == b)
    }
}

/// The identity of `path` (see [`Paths::refuse_collisions`]): a file that
/// does not exist yet is its resolved directory and its name; a symbolic
/// link to nothing leads where the file would be created.
fn identify(path: &Path) -> FileIdentity {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    FileIdentity {
        resolved: resolve(path, 0),
        inode,
    }
}

fn resolve(path: &Path, depth: u32) -> PathBuf {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return resolved;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return absolute;
    };
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
    let joined = parent.join(name);
    match std::fs::read_link(&joined) {
        // A link to nothing (yet): where writing through it creates the file.
        Ok(target) if depth < 40 => resolve(&parent.join(target), depth + 1),
        _ => joined,
    }
}

/// Opens and locks the state file (see [`state::open`]): a path that is not
/// a regular file is bad input, a file that cannot be opened (for `sites`:
/// written) an I/O error, one another walk holds [`Failure::StateInUse`].
fn open_state(path: &Path, access: Access) -> Result<File, Failure> {
    state::open(path, access).map_err(|e| match e {
        OpenError::Missing => Failure::bad_input(format!(
            "no state file at {} (give --state FILE, written by `mayfail sites`)",
            path.display()
        )),
        OpenError::NotRegular(kind) => Failure::bad_input(format!(
            "--state {} is {kind}, not a regular file: give a file's path{}",
            path.display(),
            match access {
                Access::Walk => " (created if missing)",
                Access::Report => "",
            }
        )),
        OpenError::Io(error) => Failure::io(
            match access {
                Access::Walk => "write the state file",
                Access::Report => "read the state file",
            },
            path,
            error,
        ),
        OpenError::InUse(holder) => Failure::StateInUse(path.to_owned(), holder),
    })
}

/// Reads the state file open as `file`; a corrupt one is bad input, an
/// unreadable one an I/O error.
/// Says how many lines of kinds this runner does not know `state` (read
/// from `path`) holds: they are skipped, not taken for corruption.
fn note_unknown_lines(state: &State, path: &Path) {
    if state.unknown_lines > 0 {
        crate::progress::note!(
            "mayfail: note: the state file {} holds {} line{} of kinds this runner does not know \
             (written by a newer mayfail?): skipped",
            path.display(),
            state.unknown_lines,
            if state.unknown_lines == 1 { "" } else { "s" }
        );
    }
}

fn load(file: &File, path: &Path) -> Result<State, Failure> {
    State::read(file, path).map_err(|e| match e {
        StateError::Unreadable(path, error) => Failure::io("read the state file", &path, error),
        corrupt @ StateError::Corrupt(..) => Failure::bad_input(corrupt.to_string()),
    })
}

/// Turns Rust backtraces off for a command run under injection. std's panic
/// hook prints a backtrace under its backtrace lock, and its out-of-memory
/// hook takes the same lock: a failure injected inside the printer would
/// deadlock the process, or be blamed on the printer's own code (`gimli`)
/// rather than on the program. Every subcommand that runs a command sets
/// this, whatever the environment says.
pub(crate) fn without_backtraces(command: &mut std::process::Command) {
    command
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0");
}

/// Runs `command` (whose program is `program`) to its end and returns its
/// shell status. The command is in our process group: a Ctrl-C at the
/// terminal reaches it directly; a SIGINT sent to us alone is passed on
/// once.
pub(crate) fn run_to_end(
    command: &mut std::process::Command,
    program: &std::ffi::OsStr,
) -> Result<i32, Failure> {
    crate::process::catch_interrupts();
    let mut child = command
        .spawn()
        .map_err(|e| Failure::spawn(crate::process::shell_quote(program), e))?;
    let mut forwarded = false;
    loop {
        if let Some(status) = child.try_wait().map_err(Failure::Wait)? {
            return Ok(crate::process::shell_status(status));
        }
        if crate::process::interrupted() && !forwarded {
            forwarded = true;
            crate::process::signal_child(&child, libc::SIGINT);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_below_one_and_words_are_refused_with_the_accepted_form() {
        assert_eq!(at_least_one("3"), Ok(3));
        for bad in ["0", "-1", "two", ""] {
            let message = at_least_one(bad).unwrap_err();
            assert!(message.contains("whole number >= 1"), "{message}");
        }
        assert_eq!(jobs("1024"), Ok(1024));
        assert!(jobs("1025").unwrap_err().contains("from 1 to 1024"));
        assert_eq!(retries("-1"), Ok(-1));
        assert!(retries("-2").unwrap_err().contains("-1 (forever)"));
    }
}
