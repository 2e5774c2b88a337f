//! The state file of a site walk (`cargo mayfail sites`): its format, owned
//! here once for the writers inside the program under test and for the
//! runner that reads it back.
//!
//! The file is append-only text, one record per line, fields separated by
//! tabs; every line is written whole with one `O_APPEND` `write(2)`, so an
//! interrupted walk leaves it consistent:
//!
//! ```text
//! mayfail-sites\t1                                  header (format version)
//! baseline\t<ms>\t<status>                         a run without injection
//! run\t<n>\t<copies>\t<unix ms>\t<command>         a run starts
//! site\t<id>\t<pid>\t<what>\t<thread>\t<binary>\t<where>\t<frames>\t<facts>\t<chain>
//! fate\t<id>\t<pid>\t<outcome>\t<detail>
//! runtime\t<id>                                    a stack of the runtime: not a site
//! retry\t<id>                                      an interrupted site: fail it again
//! end\t<n>\t<ms>\t<how>                            a run ended (done, timeout, interrupted)
//! unattributed\t<n>\t<pid>\t<outcome>\t<detail>     a process of run n ended badly, no site to blame
//! other-shard\t<pid>                               the process met stacks of other shards
//! no-fork\t<pid>\t<reason>                         the process failed its site itself (`sites-fork`)
//! fallible\t<function>                            returns a Result with an allocation error (debug information)
//! panicked\t<id>\t<pid>\t<file:line>                the test of the process that failed it panicked there
//! handled-exit\t<codes>                            exit statuses that count as handled (1,7)
//! test\t<pid>\t<package>\t<kind>\t<target>\t<name>   process pid ran test name alone (written once it ended)
//! tested\t<package>\t<kind>\t<target>\t<name>        every stack of the test is walked
//! left-out\t<package>\t<kind>\t<target>\t<name>\t<detail>  the test fails without injection
//! ```
//!
//! A stack id is 16 lowercase hex digits, never all zeros nor all `f`. The
//! program under test writes `site`, `fate`, `runtime`, `other-shard` and
//! `no-fork` lines, the runner the others (a process that forks at its sites
//! writes the `fate` of a child that could not). The later kinds
//! (unattributed, other-shard, handled-exit, test, tested, left-out,
//! no-fork, fallible, panicked) came after the first: files without
//! them read as before; so did a site's `facts` (`panic`: the allocation
//! serves a panic's message or payload; `-`: nothing) and `chain` (its frames
//! outside the allocation machinery up to the test harness, `where`'s
//! format): a site line without them reads with both empty. A test is named
//! by its cargo package, its target's kind (`lib`, `bin`, `test`, `example`,
//! `bench`) and name, and its full name in the test harness (`module::test`);
//! none holds a tab.
//!
//! [`Line::write_to`] is the one writer of every kind (the program under
//! test writes into a fixed buffer, without allocating; the runner through
//! `Display`), [`parse_line`] the one reader; the program under test reads
//! only each line's kind and id, without allocating. Free-text fields are
//! escaped ([`write_field`], [`read_field`]): a tab, line feed or carriage
//! return as `\t`, `\n`, `\r`, a backslash doubled only where it would read
//! as one of those escapes, so that text without those characters is
//! written as it was before fields were escaped. A line of a kind this
//! version does not know is [`Line::Unknown`]: readers skip it (a newer
//! writer may add kinds).
//!
//! ```
//! use mayfail::state::{Line, parse_line};
//!
//! let line = parse_line("fate\t00000000000000ff\t42\taborted\tSIGABRT").unwrap();
//! assert!(matches!(line, Line::Fate { id: 255, pid: 42, .. }));
//! assert!(parse_line("fate\tnot-an-id").is_err());
//! ```

use core::fmt;

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::Outcome;
use crate::text::ShellWord;

/// The first line of a state file, without its line break.
pub const HEADER: &str = "mayfail-sites\t1";

/// One line of a state file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Line<'a> {
    /// The header.
    Header,
    /// An empty line (ignored).
    Empty,
    /// A run of the command without injection: its time and exit status.
    Baseline {
        /// Milliseconds it took.
        ms: u64,
        /// How it ended (`exit 0`, `signal 6`...).
        status: Cow<'a, str>,
    },
    /// A run starts.
    Run {
        /// Its number, from 1.
        number: u64,
        /// How many copies of the command run at once.
        copies: Cow<'a, str>,
        /// When it started, in milliseconds since the Unix epoch.
        start_ms: Cow<'a, str>,
        /// The command, shell-quoted.
        command: Cow<'a, str>,
    },
    /// A run ended.
    End {
        /// The run's number.
        number: u64,
        /// Milliseconds it took.
        ms: u64,
        /// How it ended (`done`, `timeout`, `interrupted`).
        how: Cow<'a, str>,
    },
    /// A process failed a new site.
    Site {
        /// The stack id.
        id: u64,
        /// The process that failed it.
        pid: u32,
        /// What failed (`alloc of 64 bytes (align 8)`).
        what: Cow<'a, str>,
        /// The thread that failed it.
        thread: Cow<'a, str>,
        /// The program's file name.
        binary: Cow<'a, str>,
        /// The first frames outside the allocation machinery.
        place: Cow<'a, str>,
        /// The raw frames, `module+offset`, comma-separated.
        frames: Cow<'a, str>,
        /// What the failing process knew of the site, comma-separated:
        /// `panic` (the allocation serves a panic's message or payload),
        /// `after=ID+ID` (found on the error path of those sites), `forked`
        /// and `parent=PID` (the process is a child forked at the site by
        /// process PID, `sites-fork`), or `-`; empty in a line written
        /// before this field existed.
        facts: Cow<'a, str>,
        /// Its frames outside the allocation machinery up to the test
        /// harness, as `place` writes them; empty in an older line.
        chain: Cow<'a, str>,
    },
    /// How the process that failed a site ended.
    Fate {
        /// The stack id.
        id: u64,
        /// The process.
        pid: u32,
        /// Its outcome.
        outcome: Outcome,
        /// The signal or exit status.
        detail: Cow<'a, str>,
    },
    /// A new stack of the runtime: passed, and not a site.
    Runtime {
        /// The stack id.
        id: u64,
    },
    /// A site to fail again (its run was interrupted).
    Retry {
        /// The stack id.
        id: u64,
    },
    /// A process the runner started for run `run` ended badly (a timeout, a
    /// non-zero status, a signal) and no site of the run accounts for it.
    Unattributed {
        /// The run's number.
        run: u64,
        /// The process the runner started.
        pid: u32,
        /// How it counts: `hung`, `failed`, `crashed`...
        outcome: Outcome,
        /// How it ended (`killed after 600 s`, `exit 1`).
        detail: Cow<'a, str>,
    },
    /// The process met stacks of other shards (`sites-shard`): it was
    /// reached, though nothing of its shard was.
    OtherShard {
        /// The process.
        pid: u32,
    },
    /// The process was asked to fork at its new sites (`sites-fork`) and
    /// could not: it failed its first new site itself.
    NoFork {
        /// The process.
        pid: u32,
        /// Why (`3 threads`, `standard input is a pipe or a socket`).
        reason: Cow<'a, str>,
    },
    /// The test of the process that failed a site panicked (the test
    /// harness's `panicked at` line).
    Panicked {
        /// The stack id.
        id: u64,
        /// The process.
        pid: u32,
        /// Where, `file:line` as the panic message gives it.
        location: Cow<'a, str>,
    },
    /// A function on the chain of a walked site whose return type, as its
    /// binary's debug information gives it, is a `Result` with an
    /// allocation error: it promises to report an allocation failure.
    Fallible {
        /// The function, as the sites' chains name it.
        function: Cow<'a, str>,
    },
    /// Exit statuses the walk counts as handled, besides 0.
    HandledExit {
        /// The statuses, from 1 to 255, comma-separated (`1,7`).
        codes: Cow<'a, str>,
    },
    /// The process `pid` ran one test alone and has ended: the sites it
    /// wrote before this line were reached by that test.
    Test {
        /// The process the runner started.
        pid: u32,
        /// The test.
        test: TestName<'a>,
    },
    /// Every stack of a test is walked: a process of it failed no new site.
    Tested {
        /// The test.
        test: TestName<'a>,
    },
    /// A test that fails or exceeds the timeout without any injection: left
    /// out of the walk.
    LeftOut {
        /// The test.
        test: TestName<'a>,
        /// How it ended (`exit 101`, `killed after 600 s`).
        detail: Cow<'a, str>,
    },
    /// A line of a kind this version does not know (a newer writer's):
    /// skipped by the reader, written back as it is.
    Unknown {
        /// The whole line.
        line: &'a str,
    },
}

/// A test of a cargo package's test binary, as the state file names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TestName<'a> {
    /// The cargo package.
    pub package: Cow<'a, str>,
    /// The kind of its target: `lib`, `bin`, `test`, `example`, `bench`.
    pub kind: Cow<'a, str>,
    /// The target's name.
    pub target: Cow<'a, str>,
    /// The test's full name in the harness (`module::test`).
    pub name: Cow<'a, str>,
}

/// Reads the statuses of a `handled-exit` line (or of the runner's
/// `--handled-exit`): numbers from 1 to 255 in decimal digits,
/// comma-separated, nothing else.
///
/// ```
/// assert_eq!(mayfail::state::parse_exit_codes("1,7"), Some(vec![1, 7]));
/// assert_eq!(mayfail::state::parse_exit_codes("0"), None);
/// assert_eq!(mayfail::state::parse_exit_codes("+1"), None);
/// ```
pub fn parse_exit_codes(text: &str) -> Option<Vec<u8>> {
    text.split(',')
        .map(|code| {
            let digits = !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit());
            digits
                .then(|| code.parse::<u8>().ok())
                .flatten()
                .filter(|&c| c != 0)
        })
        .collect()
}

/// A line that does not parse: its kind, or what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LineError {}

/// Parses one line (without its line break). A line of a kind this version
/// does not know (lowercase letters and dashes before the first tab, as
/// every kind is named) is [`Line::Unknown`]: a newer writer may add kinds,
/// and a reader skips them; anything else that does not parse is an error.
/// Free-text fields are read back as [`write_field`] wrote them.
pub fn parse_line(line: &str) -> Result<Line<'_>, LineError> {
    if line == HEADER {
        return Ok(Line::Header);
    }
    if line.is_empty() {
        return Ok(Line::Empty);
    }
    let fields: Vec<&str> = line.split('\t').collect();
    let (kind, rest) = (fields[0], &fields[1..]);
    let parsed = match kind {
        "baseline" | "run" | "end" | "unattributed" | "handled-exit" | "fallible" => {
            run_line(kind, rest)
        }
        "site" | "fate" | "runtime" | "retry" | "other-shard" | "no-fork" | "panicked" => {
            site_line(kind, rest)
        }
        "test" | "tested" | "left-out" => test_line(kind, rest),
        other if is_kind(other) => return Ok(Line::Unknown { line }),
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(LineError {
                message: format!("unknown line \"{shown}\""),
            });
        }
    };
    parsed.ok_or_else(|| LineError {
        message: format!("a {kind} line that does not parse"),
    })
}

/// Whether `text` names a kind of line as every kind is named: lowercase
/// ASCII letters and dashes, a letter first.
fn is_kind(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
}

fn number(field: &str) -> Option<u64> {
    field.parse().ok()
}

fn pid(field: &str) -> Option<u32> {
    field.parse().ok()
}

fn id(field: &str) -> Option<u64> {
    parse_id(field.as_bytes())
}

/// The runner's lines about runs: `baseline`, `run`, `end`,
/// `unattributed`, `handled-exit`.
fn run_line<'a>(kind: &str, fields: &[&'a str]) -> Option<Line<'a>> {
    Some(match (kind, fields) {
        ("baseline", &[ms, status]) => Line::Baseline {
            ms: number(ms)?,
            status: read_field(status),
        },
        ("run", &[n, copies, start_ms, command]) => Line::Run {
            number: number(n)?,
            copies: read_field(copies),
            start_ms: read_field(start_ms),
            command: read_field(command),
        },
        ("end", &[n, ms, how]) => Line::End {
            number: number(n)?,
            ms: number(ms)?,
            how: read_field(how),
        },
        ("unattributed", &[n, process, outcome, detail]) => Line::Unattributed {
            run: number(n)?,
            pid: pid(process)?,
            outcome: outcome.parse().ok()?,
            detail: read_field(detail),
        },
        ("handled-exit", &[codes]) if parse_exit_codes(codes).is_some() => Line::HandledExit {
            codes: read_field(codes),
        },
        ("fallible", &[function]) if !function.is_empty() => Line::Fallible {
            function: read_field(function),
        },
        _ => return None,
    })
}

/// The lines the program under test writes, and the runner's `retry`:
/// `site`, `fate`, `runtime`, `retry`, `other-shard`, `no-fork`.
fn site_line<'a>(kind: &str, fields: &[&'a str]) -> Option<Line<'a>> {
    Some(match (kind, fields) {
        ("site", &[site_id, process, what, thread, binary, place, ref rest @ ..])
            if rest.len() <= 3 && rest.len() != 2 =>
        {
            let rest = |i: usize| read_field(rest.get(i).copied().unwrap_or(""));
            Line::Site {
                id: id(site_id)?,
                pid: pid(process)?,
                what: read_field(what),
                thread: read_field(thread),
                binary: read_field(binary),
                place: read_field(place),
                frames: rest(0),
                facts: rest(1),
                chain: rest(2),
            }
        }
        ("fate", &[site_id, process, outcome, detail]) => Line::Fate {
            id: id(site_id)?,
            pid: pid(process)?,
            outcome: outcome.parse().ok()?,
            detail: read_field(detail),
        },
        ("runtime", &[site_id]) => Line::Runtime { id: id(site_id)? },
        ("retry", &[site_id]) => Line::Retry { id: id(site_id)? },
        ("other-shard", &[process]) => Line::OtherShard { pid: pid(process)? },
        ("panicked", &[site_id, process, location]) if !location.is_empty() => Line::Panicked {
            id: id(site_id)?,
            pid: pid(process)?,
            location: read_field(location),
        },
        ("no-fork", &[process, reason]) => Line::NoFork {
            pid: pid(process)?,
            reason: read_field(reason),
        },
        _ => return None,
    })
}

/// The per-test engine's lines: `test`, `tested`, `left-out`.
fn test_line<'a>(kind: &str, fields: &[&'a str]) -> Option<Line<'a>> {
    let test = |package, kind, target, name| {
        filled(&[package, kind, target, name]).then(|| TestName {
            package: read_field(package),
            kind: read_field(kind),
            target: read_field(target),
            name: read_field(name),
        })
    };
    Some(match (kind, fields) {
        ("test", &[process, package, kind, target, name]) => Line::Test {
            pid: pid(process)?,
            test: test(package, kind, target, name)?,
        },
        ("tested", &[package, kind, target, name]) => Line::Tested {
            test: test(package, kind, target, name)?,
        },
        ("left-out", &[package, kind, target, name, detail]) => Line::LeftOut {
            test: test(package, kind, target, name)?,
            detail: read_field(detail),
        },
        _ => return None,
    })
}

impl Line<'_> {
    /// Writes the line as the file holds it, without its line break: the
    /// one writer of every kind, for the program under test (into a fixed
    /// buffer: it never allocates) and the runner (through `Display`).
    /// [`parse_line`] reads back what it writes.
    pub fn write_to<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        match self {
            Line::Header => out.write_str(HEADER),
            Line::Empty => Ok(()),
            Line::Unknown { line } => out.write_str(line),
            Line::Baseline { ms, status } => {
                write!(out, "baseline\t{ms}\t")?;
                write_fields(out, &[status])
            }
            Line::Run {
                number,
                copies,
                start_ms,
                command,
            } => {
                write!(out, "run\t{number}\t")?;
                write_fields(out, &[copies, start_ms, command])
            }
            Line::End { number, ms, how } => {
                write!(out, "end\t{number}\t{ms}\t")?;
                write_fields(out, &[how])
            }
            Line::Unattributed {
                run,
                pid,
                outcome,
                detail,
            } => {
                write!(out, "unattributed\t{run}\t{pid}\t{outcome}\t")?;
                write_fields(out, &[detail])
            }
            Line::HandledExit { codes } => {
                out.write_str("handled-exit\t")?;
                write_fields(out, &[codes])
            }
            Line::Fallible { function } => {
                out.write_str("fallible\t")?;
                write_fields(out, &[function])
            }
            _ => self.write_site_or_test(out),
        }
    }

    /// [`Line::write_to`] for the lines of the program under test, `retry`
    /// and the per-test engine's.
    fn write_site_or_test<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        match self {
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
            } => {
                write!(out, "site\t{}\t{pid}\t", StackId(*id))?;
                write_fields(out, &[what, thread, binary, place, frames, facts, chain])
            }
            Line::Fate {
                id,
                pid,
                outcome,
                detail,
            } => {
                write!(out, "fate\t{}\t{pid}\t{outcome}\t", StackId(*id))?;
                write_fields(out, &[detail])
            }
            Line::Runtime { id } => write!(out, "runtime\t{}", StackId(*id)),
            Line::Retry { id } => write!(out, "retry\t{}", StackId(*id)),
            Line::OtherShard { pid } => write!(out, "other-shard\t{pid}"),
            Line::Panicked { id, pid, location } => {
                write!(out, "panicked\t{}\t{pid}\t", StackId(*id))?;
                write_fields(out, &[location])
            }
            Line::NoFork { pid, reason } => {
                write!(out, "no-fork\t{pid}\t")?;
                write_fields(out, &[reason])
            }
            Line::Test { pid, test } => {
                write!(out, "test\t{pid}\t")?;
                test.write_to(out)
            }
            Line::Tested { test } => {
                out.write_str("tested\t")?;
                test.write_to(out)
            }
            Line::LeftOut { test, detail } => {
                out.write_str("left-out\t")?;
                test.write_to(out)?;
                out.write_char('\t')?;
                write_fields(out, &[detail])
            }
            _ => unreachable!("written by Line::write_to"),
        }
    }
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl TestName<'_> {
    /// Its four fields, tab-separated.
    fn write_to<W: fmt::Write + ?Sized>(&self, out: &mut W) -> fmt::Result {
        write_fields(out, &[&self.package, &self.kind, &self.target, &self.name])
    }
}

/// Writes free-text fields, tab-separated, each as [`write_field`] does.
fn write_fields<W: fmt::Write + ?Sized>(out: &mut W, fields: &[&Cow<'_, str>]) -> fmt::Result {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.write_char('\t')?;
        }
        write_field(out, field)?;
    }
    Ok(())
}

/// Whether a backslash before `next` (`None`: at the end) must be doubled:
/// where [`read_field`] would otherwise read it as the start of an escape.
fn doubled_before(next: Option<u8>) -> bool {
    matches!(
        next,
        None | Some(b't' | b'n' | b'r' | b'\\' | b'\t' | b'\n' | b'\r')
    )
}

/// Writes one free-text field of a line: a tab, line feed or carriage
/// return as `\t`, `\n`, `\r`, and a backslash as `\\` where it would
/// otherwise read as the start of one of those (before `t`, `n`, `r`, a
/// backslash, one of the three characters, or at the end); everything else
/// as it is. Text without those characters is written unchanged, so the
/// lines of files written before fields were escaped read as they did.
/// Never allocates.
pub fn write_field<W: fmt::Write + ?Sized>(out: &mut W, text: &str) -> fmt::Result {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = match b {
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\\' if doubled_before(bytes.get(i + 1).copied()) => "\\\\",
            _ => continue,
        };
        // Each of those bytes is ASCII: `i` is a char boundary.
        out.write_str(&text[start..i])?;
        out.write_str(escape)?;
        start = i + 1;
    }
    out.write_str(&text[start..])
}

/// Reads one free-text field as [`write_field`] wrote it: `\t`, `\n`, `\r`
/// and `\\` decoded, any other backslash kept. Borrowed when there is
/// nothing to decode (every field of a file written before fields were
/// escaped, but for those sequences).
pub fn read_field(text: &str) -> Cow<'_, str> {
    let decoded = |next: Option<&u8>| match next {
        Some(b't') => Some('\t'),
        Some(b'n') => Some('\n'),
        Some(b'r') => Some('\r'),
        Some(b'\\') => Some('\\'),
        _ => None,
    };
    let bytes = text.as_bytes();
    let any = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\\' && decoded(bytes.get(i + 1)).is_some());
    if !any {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        match decoded(rest.as_bytes().get(at + 1)) {
            Some(c) => {
                out.push(c);
                rest = &rest[at + 2..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Whether every field holds something.
fn filled(fields: &[&str]) -> bool {
    fields.iter().all(|f| !f.is_empty())
}

/// Parses a stack id: exactly 16 hex digits, not all zeros nor all `f`.
pub fn parse_id(field: &[u8]) -> Option<u64> {
    if field.len() != 16 {
        return None;
    }
    let id = field.iter().try_fold(0u64, |id, &b| {
        Some(id << 4 | u64::from((b as char).to_digit(16)?))
    })?;
    (id != 0 && id != u64::MAX).then_some(id)
}

/// What the program under test needs of a line: whether it names a known
/// stack (`site`, `runtime`), one to forget (`retry`), or neither. Reads
/// only the line's start; never allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Stack(u64),
    Retry(u64),
    Other,
}

/// The kind and id at the start of a line (see [`Known`]).
pub(crate) fn id_of_line(line: &[u8]) -> Known {
    let mut fields = line.split(|&b| b == b'\t');
    let kind = fields.next().unwrap_or(b"");
    match (kind, fields.next().and_then(parse_id)) {
        (b"site" | b"runtime", Some(id)) => Known::Stack(id),
        (b"retry", Some(id)) => Known::Retry(id),
        _ => Known::Other,
    }
}

/// One argument as a POSIX shell reads it back: as it is when every byte is
/// safe, else single-quoted (bytes that are not UTF-8 in bash's `$'\xNN'`
/// form). Commands in the state file and every replay line printed for a
/// person to paste are quoted with it.
///
/// ```
/// use mayfail::state::{quote_command, quote_word};
///
/// assert_eq!(quote_word("cargo".as_ref()), "cargo");
/// assert_eq!(quote_word("x; rm -rf ~".as_ref()), "'x; rm -rf ~'");
/// assert_eq!(quote_command(["cargo", "test", "it's"]), "cargo test 'it'\\''s'");
/// ```
pub fn quote_word(word: &OsStr) -> String {
    ShellWord(word.as_bytes()).to_string()
}

/// A whole command, each argument quoted as [`quote_word`] does, separated
/// by spaces.
pub fn quote_command<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter()
        .map(|arg| quote_word(arg.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads back a command quoted by [`quote_command`]: its
/// arguments, or `None` if `text` is not exactly what that function writes
/// for some arguments (so nothing else can pass for a command).
pub fn unquote_command(text: &str) -> Option<Vec<OsString>> {
    let bytes = text.as_bytes();
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        let mut word = Vec::new();
        if bytes[i..].starts_with(b"$'") {
            // $'...': printable ASCII and \xNN escapes.
            i += 2;
            loop {
                match *bytes.get(i)? {
                    b'\'' => break,
                    b'\\' => {
                        let hex = bytes.get(i + 1..i + 4)?;
                        if hex[0] != b'x' {
                            return None;
                        }
                        let digits = std::str::from_utf8(&hex[1..]).ok()?;
                        word.push(u8::from_str_radix(digits, 16).ok()?);
                        i += 4;
                    }
                    b => {
                        word.push(b);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else if bytes.get(i) == Some(&b'\'') {
            // '...', with '\'' for a quote.
            i += 1;
            loop {
                match *bytes.get(i)? {
                    b'\'' if bytes[i..].starts_with(b"'\\''") => {
                        word.push(b'\'');
                        i += 4;
                    }
                    b'\'' => break,
                    b => {
                        word.push(b);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while let Some(&b) = bytes.get(i).filter(|&&b| b != b' ') {
                word.push(b);
                i += 1;
            }
        }
        words.push(OsString::from_vec(word));
        match bytes.get(i) {
            None => break,
            Some(b' ') => i += 1,
            Some(_) => return None,
        }
    }
    (quote_command(&words) == text).then_some(words)
}

/// Writes a stack id as the file holds it: 16 lowercase hex digits.
#[derive(Clone, Copy, Debug)]
pub struct StackId(pub u64);

impl fmt::Display for StackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

pub use crate::text::{merged_doctest_names, registry_crate};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::StackBuf;

    #[test]
    fn ids_are_sixteen_hex_digits() {
        assert_eq!(parse_id(b"00000000000000ff"), Some(255));
        assert_eq!(parse_id(b"ff"), None);
        assert_eq!(parse_id(b"0000000000000000"), None);
        assert_eq!(parse_id(b"ffffffffffffffff"), None);
        assert_eq!(parse_id(b"000000000000000g"), None);
        assert_eq!(StackId(255).to_string(), "00000000000000ff");
    }

    #[test]
    fn every_kind_of_line_parses_and_a_bad_one_is_named() {
        let site = "site\t00000000000000ab\t7\talloc of 8 bytes (align 8)\tmain\tprog\tf (a.rs:1)\tprog+0x10";
        assert_eq!(
            parse_line(site),
            Ok(Line::Site {
                id: 0xab,
                pid: 7,
                what: "alloc of 8 bytes (align 8)".into(),
                thread: "main".into(),
                binary: "prog".into(),
                place: "f (a.rs:1)".into(),
                frames: "prog+0x10".into(),
                facts: "".into(),
                chain: "".into(),
            })
        );
        // The facts and the chain, written since: an older line reads
        // with both empty (above), a newer one with them.
        let newer = format!("{site}\tpanic\tf (a.rs:1) <- g (b.rs:2)");
        assert_eq!(
            parse_line(&newer),
            Ok(Line::Site {
                id: 0xab,
                pid: 7,
                what: "alloc of 8 bytes (align 8)".into(),
                thread: "main".into(),
                binary: "prog".into(),
                place: "f (a.rs:1)".into(),
                frames: "prog+0x10".into(),
                facts: "panic".into(),
                chain: "f (a.rs:1) <- g (b.rs:2)".into(),
            })
        );
        assert!(parse_line(&format!("{site}\tpanic")).is_err());
        assert_eq!(parse_line(HEADER), Ok(Line::Header));
        assert_eq!(
            parse_line("end\t3\t120\tdone"),
            Ok(Line::End {
                number: 3,
                ms: 120,
                how: "done".into()
            })
        );
        assert_eq!(
            parse_line("retry\t00000000000000ab"),
            Ok(Line::Retry { id: 0xab })
        );
        let err = parse_line("run\tx\t1\t2\tcmd").unwrap_err();
        assert_eq!(err.to_string(), "a run line that does not parse");
        let err = parse_line("bogus?\t1").unwrap_err();
        assert_eq!(err.to_string(), "unknown line \"bogus?\"");
        // A kind named as kinds are: a newer writer's, skipped by readers.
        assert_eq!(
            parse_line("bogus\t1"),
            Ok(Line::Unknown { line: "bogus\t1" })
        );
        assert!(parse_line("fate\t00000000000000ab\t1\texploded\tx").is_err());
        assert_eq!(
            parse_line("unattributed\t3\t77\thung\tkilled after 1 s"),
            Ok(Line::Unattributed {
                run: 3,
                pid: 77,
                outcome: Outcome::Hung,
                detail: "killed after 1 s".into()
            })
        );
        assert_eq!(
            parse_line("other-shard\t9"),
            Ok(Line::OtherShard { pid: 9 })
        );
        assert_eq!(
            parse_line("handled-exit\t1,7"),
            Ok(Line::HandledExit {
                codes: "1,7".into()
            })
        );
        let test = TestName {
            package: "thin-vec".into(),
            kind: "lib".into(),
            target: "thin_vec".into(),
            name: "tests::drain".into(),
        };
        assert_eq!(
            parse_line("test\t12\tthin-vec\tlib\tthin_vec\ttests::drain"),
            Ok(Line::Test {
                pid: 12,
                test: test.clone()
            })
        );
        assert_eq!(
            parse_line("tested\tthin-vec\tlib\tthin_vec\ttests::drain"),
            Ok(Line::Tested { test: test.clone() })
        );
        assert_eq!(
            parse_line("left-out\tthin-vec\tlib\tthin_vec\ttests::drain\texit 101"),
            Ok(Line::LeftOut {
                test,
                detail: "exit 101".into()
            })
        );
        for bad in [
            "test\tx\tp\tlib\tt\tn",
            "test\t1\tp\tlib\tt",
            "tested\tp\t\tt\tn",
            "left-out\tp\tlib\tt\tn",
            "handled-exit\t0",
            "handled-exit\t1,,2",
            "handled-exit\t256",
            "other-shard\tx",
            "unattributed\t1\t2\tbad\tx",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    /// Each kind as the writers formatted it by hand before `write_to`
    /// existed: files stay byte for byte what they were.
    #[test]
    fn every_kind_is_written_as_before() {
        let test = TestName {
            package: "thin-vec".into(),
            kind: "lib".into(),
            target: "thin_vec".into(),
            name: "tests::drain".into(),
        };
        let cases: [(Line<'_>, &str); 18] = [
            (Line::Header, "mayfail-sites\t1"),
            (
                Line::Baseline {
                    ms: 400,
                    status: "exit 0".into(),
                },
                "baseline\t400\texit 0",
            ),
            (
                Line::Run {
                    number: 4,
                    copies: "2".into(),
                    start_ms: "1796434202649".into(),
                    command: r"cargo test 'it'\''s' $'\xff'".into(),
                },
                r"run	4	2	1796434202649	cargo test 'it'\''s' $'\xff'",
            ),
            (
                Line::End {
                    number: 4,
                    ms: 532,
                    how: "done".into(),
                },
                "end\t4\t532\tdone",
            ),
            (
                Line::Site {
                    id: 0xab,
                    pid: 7,
                    what: "alloc of 8 bytes (align 8)".into(),
                    thread: r"w\x01".into(),
                    binary: "prog".into(),
                    place: "f (a.rs:1)".into(),
                    frames: "prog+0x10,libc.so.6+0x2a1ca".into(),
                    facts: "panic".into(),
                    chain: "f (a.rs:1) <- g (b.rs:2)".into(),
                },
                "site\t00000000000000ab\t7\talloc of 8 bytes (align 8)\tw\\x01\tprog\t\
                 f (a.rs:1)\tprog+0x10,libc.so.6+0x2a1ca\tpanic\tf (a.rs:1) <- g (b.rs:2)",
            ),
            (
                Line::Fate {
                    id: 0xab,
                    pid: 7,
                    outcome: Outcome::Crashed,
                    detail: "SIGSEGV at 0x0".into(),
                },
                "fate\t00000000000000ab\t7\tcrashed\tSIGSEGV at 0x0",
            ),
            (Line::Runtime { id: 0xab }, "runtime\t00000000000000ab"),
            (Line::Retry { id: 0xab }, "retry\t00000000000000ab"),
            (
                Line::Unattributed {
                    run: 3,
                    pid: 77,
                    outcome: Outcome::Hung,
                    detail: "killed after 1 s".into(),
                },
                "unattributed\t3\t77\thung\tkilled after 1 s",
            ),
            (Line::OtherShard { pid: 9 }, "other-shard\t9"),
            (
                Line::NoFork {
                    pid: 9,
                    reason: "3 threads".into(),
                },
                "no-fork\t9\t3 threads",
            ),
            (
                Line::Fallible {
                    function: "a::B<T>::grow".into(),
                },
                "fallible\ta::B<T>::grow",
            ),
            (
                Line::Panicked {
                    id: 0xab,
                    pid: 7,
                    location: "src/repr/mod.rs:361".into(),
                },
                "panicked\t00000000000000ab\t7\tsrc/repr/mod.rs:361",
            ),
            (
                Line::HandledExit {
                    codes: "1,7".into(),
                },
                "handled-exit\t1,7",
            ),
            (
                Line::Test {
                    pid: 12,
                    test: test.clone(),
                },
                "test\t12\tthin-vec\tlib\tthin_vec\ttests::drain",
            ),
            (
                Line::Tested { test: test.clone() },
                "tested\tthin-vec\tlib\tthin_vec\ttests::drain",
            ),
            (
                Line::LeftOut {
                    test,
                    detail: "exit 101".into(),
                },
                "left-out\tthin-vec\tlib\tthin_vec\ttests::drain\texit 101",
            ),
            (
                Line::Unknown {
                    line: "checkpoint\t3",
                },
                "checkpoint\t3",
            ),
        ];
        for (line, text) in cases {
            assert_eq!(line.to_string(), text);
            assert_eq!(parse_line(text), Ok(line), "{text}");
        }
    }

    /// A tab, line feed or carriage return in a free-text field cannot cut
    /// the line; a backslash is doubled only where it would read as an
    /// escape; the program under test writes without allocating.
    #[test]
    fn free_text_fields_escape_only_what_would_break_the_line() {
        for (text, written) in [
            ("plain text", "plain text"),
            ("a\tb\nc\rd", r"a\tb\nc\rd"),
            (r"'it'\''s' \x01 C:\dir", r"'it'\''s' \x01 C:\dir"),
            (r"a\tb", r"a\\tb"),
            (r"a\\b", r"a\\\b"),
            ("end\\", r"end\\"),
            ("\\\t", r"\\\t"),
        ] {
            let mut out = StackBuf::<64>::new();
            write_field(&mut out, text).unwrap();
            assert_eq!(out.as_bytes(), written.as_bytes(), "{text:?}");
            assert_eq!(read_field(written), text, "{written:?}");
        }
        let line = Line::Fate {
            id: 0xab,
            pid: 7,
            outcome: Outcome::Failed,
            detail: "exit 1\tthen\nmore".into(),
        };
        let mut out = StackBuf::<80>::new();
        line.write_to(&mut out).unwrap();
        let text = core::str::from_utf8(out.as_bytes()).unwrap();
        assert_eq!(text, r"fate	00000000000000ab	7	failed	exit 1\tthen\nmore");
        assert_eq!(parse_line(text), Ok(line));
    }

    #[test]
    fn the_program_reads_only_kind_and_id() {
        assert_eq!(id_of_line(b"runtime\t00000000000000ab"), Known::Stack(0xab));
        assert_eq!(id_of_line(b"retry\t00000000000000ab"), Known::Retry(0xab));
        assert_eq!(id_of_line(b"run\t1\t1\t0\tcmd"), Known::Other);
    }
}
