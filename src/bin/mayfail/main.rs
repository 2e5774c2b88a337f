//! `mayfail`: run a program or a whole test suite under injected allocation
//! failures.
//!
//! - `mayfail run [--retries N] [--inject SPEC] -- CMD ARGS...` runs `CMD`
//!   with `MAYFAIL_RETRIES` / `MAYFAIL_INJECT` set and passes its exit status
//!   through (a death by signal `S` exits `128 + S`, as shells do).
//! - `mayfail sites [OPTIONS] -- CMD ARGS...` walks every allocation site of
//!   `CMD` (mallocfail's and Failgrind's method): it runs `CMD` again and
//!   again with `MAYFAIL_INJECT=sites=STATE`, under which each process fails
//!   the first allocation whose call stack is not in the state file yet (one
//!   per process, so the process's fate is that site's outcome) and appends
//!   the site and its fate to the file, until a run finds no new site.
//! - `mayfail report [--state FILE]` prints the report of a state file again.
//!
//! The programs must use `mayfail::MayFail` as their global allocator.
//!
//! ## Decisions of `sites`
//!
//! - One new site per process per run: the process's fate (exit status,
//!   `SIGABRT`, `SIGSEGV`) is then that site's outcome. A `cargo test` with
//!   several test binaries fails one site in each binary per run (use
//!   `--no-fail-fast`, or cargo stops at the first binary that fails).
//! - Stack ids are hashes of module-relative return addresses (see
//!   `src/sites.rs`): stable across runs of one build, despite ASLR; a
//!   rebuild changes them, and a resumed state then finds the sites anew.
//! - Symbols are resolved by the process that fails a site, right then
//!   (`where` in the state file); the runner never needs the binaries.
//! - Stacks whose innermost frame outside std/alloc/core/mayfail is in the
//!   Rust runtime, libtest or libc are recorded as `runtime` and skipped, so
//!   the walk costs one run per site of the program, not per start-up
//!   allocation of std (`--all-stacks` counts them).
//! - Stop: a run that fails no new site and meets no new runtime stack has
//!   walked every stack of the command: nothing is left, and its time is the
//!   steady cost of sites mode, reported against the baseline.
//! - `--jobs N`: N copies per run, copy `k` with `sites-skip=k`. Concurrent
//!   `cargo test` invocations do run their tests in parallel.
//! - Ctrl-C / `SIGTERM`: forwarded to the command's process group (it runs
//!   in its own, so that timeouts reach cargo's test binaries too); sites
//!   the interrupted run failed get a `retry` line and are failed again on
//!   resume. Every line of the state file is written whole, with one write.
//! - A corrupt state file is refused (exit 2) and never written to.

mod output;
mod state;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use output::Summary;
use state::{Outcome, State};

const USAGE: &str = "\
usage: mayfail run [--retries N] [--inject SPEC] -- CMD ARGS...
       mayfail sites [--state FILE] [--max-runs N] [--jobs N] [--timeout SECS]
                     [--inject SPEC] [--all-stacks] [--no-baseline]
                     [--json FILE] [--html FILE] -- CMD ARGS...
       mayfail report [--state FILE] [--json FILE] [--html FILE]

run     Runs CMD with MAYFAIL_RETRIES=N and MAYFAIL_INJECT=SPEC; exits with its
        status (128+signal if a signal killed it).
sites   Runs CMD (e.g. `cargo test`) again and again; in each process the first
        allocation whose call stack is new fails, once, and the site and how the
        process ended are kept in the state file. Stops when a run fails no new
        site and meets no new stack at all (one more run confirms a run that
        met new runtime stacks), or after --max-runs. Sites whose innermost
        frame outside std/alloc/core is in the Rust runtime, the test harness
        or libc are not counted (--all-stacks: counted). Replay a site with
        MAYFAIL_INJECT='stack=ID' CMD (the report prints it).
          --state FILE    state file, resumed if it exists [mayfail-sites.state]
          --max-runs N    at most N runs this time [1000]
          --jobs N        N copies of CMD at once per run; copy k lets the first
                          k new sites pass and fails the next one, so a
                          deterministic CMD yields up to N sites per run [1]
          --timeout SECS  a run taking longer is killed; its site is 'hung' [600]
          --inject SPEC   more MAYFAIL_INJECT attributes (after=N, thread=NAME...)
          --no-baseline   do not run CMD without injection first (twice: it must
                          pass, and the faster time is the cost baseline)
          --json FILE     JSON report [state file with .json]
          --html FILE     HTML report [state file with .html]
        Outcomes, worst first: crashed (SIGSEGV/SIGBUS: likely an unchecked
        null), aborted (SIGABRT: an infallible allocation), hung (--timeout),
        failed (exit status not 0: a test failed), unknown (no fate recorded),
        handled (exit 0). CMD's output is appended to the state file with .log.
        Exit status: 0 if every site was handled, 1 if not, 2 on bad input,
        130 if interrupted (the state file stays consistent: run again to resume).
report  Prints the table and writes the JSON and HTML reports of a state file.";

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let code = match run_cli(args) {
        Ok(code) => code,
        Err(Usage(message)) => {
            eprintln!("mayfail: {message}");
            eprintln!(
                "usage: mayfail run|sites|report [OPTIONS] -- CMD ARGS...   (mayfail --help)"
            );
            2
        }
    };
    std::process::exit(code);
}

/// Bad input: one line, a usage hint, exit status 2.
struct Usage(String);

fn usage<T>(message: impl Into<String>) -> Result<T, Usage> {
    Err(Usage(message.into()))
}

fn run_cli(args: Vec<OsString>) -> Result<i32, Usage> {
    let Some(first) = args.first().and_then(|a| a.to_str()) else {
        return usage("no subcommand: give run, sites or report");
    };
    match first {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(0)
        }
        "run" => run_command(Options::parse(&args[1..], RUN_FLAGS, true)?),
        "sites" => sites_command(Options::parse(&args[1..], SITES_FLAGS, true)?),
        "report" => report_command(Options::parse(&args[1..], REPORT_FLAGS, false)?),
        other => usage(format!(
            "unknown subcommand \"{other}\": give run, sites or report"
        )),
    }
}

// ---------------------------------------------------------------------------
// Options.

/// A flag: its name and whether it takes a value.
type Flag = (&'static str, bool);

const RUN_FLAGS: &[Flag] = &[("--retries", true), ("--inject", true)];
const SITES_FLAGS: &[Flag] = &[
    ("--state", true),
    ("--max-runs", true),
    ("--jobs", true),
    ("--timeout", true),
    ("--inject", true),
    ("--all-stacks", false),
    ("--no-baseline", false),
    ("--json", true),
    ("--html", true),
];
const REPORT_FLAGS: &[Flag] = &[("--state", true), ("--json", true), ("--html", true)];

#[derive(Default)]
struct Options {
    values: Vec<(&'static str, String)>,
    command: Vec<OsString>,
}

impl Options {
    fn parse(args: &[OsString], flags: &[Flag], wants_command: bool) -> Result<Options, Usage> {
        let mut options = Options::default();
        let mut i = 0;
        while i < args.len() {
            let Some(arg) = args[i].to_str() else {
                return usage(format!("{:?} is not valid UTF-8", args[i]));
            };
            if arg == "--" {
                if !wants_command {
                    return usage("this subcommand takes no command");
                }
                options.command = args[i + 1..].to_vec();
                if options.command.is_empty() {
                    return usage("no command after `--`");
                }
                return Ok(options);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value)),
                _ => (arg, None),
            };
            let Some(&(flag, takes_value)) = flags.iter().find(|(f, _)| *f == name) else {
                if name.starts_with('-') {
                    return usage(format!("unknown option {name}"));
                }
                return usage(format!(
                    "missing `--` before the command \"{arg}\": mayfail ... -- CMD ARGS..."
                ));
            };
            if options.values.iter().any(|(f, _)| *f == flag) {
                return usage(format!("{flag} is given twice"));
            }
            let value = if takes_value {
                match inline {
                    Some(v) => v.to_owned(),
                    None => {
                        i += 1;
                        match args.get(i).and_then(|a| a.to_str()) {
                            Some(v) if v != "--" => v.to_owned(),
                            _ => return usage(format!("{flag} needs a value")),
                        }
                    }
                }
            } else if inline.is_some() {
                return usage(format!("{flag} takes no value"));
            } else {
                String::new()
            };
            options.values.push((flag, value));
            i += 1;
        }
        if wants_command {
            return usage("missing `--` and the command to run: mayfail ... -- CMD ARGS...");
        }
        Ok(options)
    }

    fn get(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, flag: &str) -> bool {
        self.get(flag).is_some()
    }

    fn number(&self, flag: &str, default: u64, min: u64) -> Result<u64, Usage> {
        match self.get(flag) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= min => Ok(n),
                _ => usage(format!("{flag} takes a whole number >= {min}, not \"{v}\"")),
            },
        }
    }

    fn inject(&self) -> Result<Option<String>, Usage> {
        let Some(spec) = self.get("--inject") else {
            return Ok(None);
        };
        match mayfail::check_injection(spec) {
            Ok(()) => Ok(Some(spec.to_owned())),
            Err(e) => usage(format!("--inject: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------
// Signals: Ctrl-C and SIGTERM are forwarded to the command, not obeyed.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_sig: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid; the handler only stores to
        // an atomic, which is async-signal-safe. Handlers reset to the
        // default in the command after exec.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Relaxed)
}

/// A shell's exit status for a process status.
fn shell_status(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

fn spawn_error(command: &[OsString], e: &std::io::Error) -> Usage {
    Usage(format!(
        "cannot run {}: {e}",
        shell_quote(&command[0].to_string_lossy())
    ))
}

// ---------------------------------------------------------------------------
// run

fn run_command(options: Options) -> Result<i32, Usage> {
    let mut command = Command::new(&options.command[0]);
    command.args(&options.command[1..]);
    if let Some(retries) = options.get("--retries") {
        match retries.parse::<isize>() {
            Ok(n) if n >= -1 => {
                command.env("MAYFAIL_RETRIES", retries);
            }
            _ => {
                return usage(format!(
                    "--retries takes -1 (forever), 0 (never) or a count N >= 1, not \"{retries}\""
                ));
            }
        }
    }
    if let Some(spec) = options.inject()? {
        command.env("MAYFAIL_INJECT", spec);
    }
    catch_interrupts();
    let mut child = command
        .spawn()
        .map_err(|e| spawn_error(&options.command, &e))?;
    // The command is in our process group: a Ctrl-C at the terminal reaches
    // it directly; a SIGINT sent to us alone is passed on once.
    let mut forwarded = false;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(shell_status(status)),
            Ok(None) => {}
            Err(e) => {
                eprintln!("mayfail: waiting for the command: {e}");
                return Ok(1);
            }
        }
        if interrupted() && !forwarded {
            forwarded = true;
            // SAFETY: `id` is our child, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// sites

/// Where the state file and the reports are.
struct Paths {
    state: PathBuf,
    json: PathBuf,
    html: PathBuf,
    log: PathBuf,
}

impl Paths {
    fn new(options: &Options) -> Result<Paths, Usage> {
        let state = options.get("--state").unwrap_or("mayfail-sites.state");
        let state =
            std::path::absolute(state).map_err(|e| Usage(format!("--state {state}: {e}")))?;
        let derived = |ext: &str| state.with_extension(ext);
        let given = |flag: &str, ext: &str| {
            options
                .get(flag)
                .map_or_else(|| derived(ext), PathBuf::from)
        };
        Ok(Paths {
            json: given("--json", "json"),
            html: given("--html", "html"),
            log: derived("log"),
            state,
        })
    }
}

fn load(path: &Path) -> Result<State, Usage> {
    if path.is_dir() {
        return usage(format!(
            "cannot read the state file {}: it is a directory",
            path.display()
        ));
    }
    State::load(path).map_err(|e| Usage(e.to_string()))
}

fn quoted(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn sites_command(options: Options) -> Result<i32, Usage> {
    let paths = Paths::new(&options)?;
    let max_runs = options.number("--max-runs", 1000, 1)?;
    let jobs = options.number("--jobs", 1, 1)?;
    let timeout = Duration::from_secs(options.number("--timeout", 600, 1)?);
    let extra = options.inject()?;
    let state_text = paths.state.to_string_lossy().into_owned();
    if state_text.contains(',') || state_text.len() > 512 {
        return usage(format!(
            "--state {state_text}: the path must hold no comma and at most 512 bytes"
        ));
    }
    let mut spec = format!("sites={state_text}");
    if options.has("--all-stacks") {
        spec.push_str(",sites-all=Y");
    }
    if let Some(extra) = &extra {
        spec.push(',');
        spec.push_str(extra);
    }
    if let Err(e) = mayfail::check_injection(&spec) {
        return usage(format!("--inject: {e}"));
    }
    let state = load(&paths.state)?;
    if state.len == 0 {
        state::append(&paths.state, state::HEADER)
            .map_err(|e| Usage(format!("cannot write {}: {e}", paths.state.display())))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|e| Usage(format!("cannot write {}: {e}", paths.log.display())))?;
    catch_interrupts();
    let display = quoted(&options.command);
    let walker = Walker {
        command: &options.command,
        display: &display,
        paths: &paths,
        log,
        timeout,
    };
    let started = Instant::now();
    let first_run = state.next_run();

    if !options.has("--no-baseline") {
        // Twice, keeping the faster: the first also warms caches up (cargo's
        // fingerprints, the page cache), as the runs under injection will be.
        eprintln!("mayfail: run 0 (baseline, no injection, twice): {display}");
        let mut fastest: Option<Batch> = None;
        for _ in 0..2 {
            let batch = walker.run_batch(0, &[None])?;
            let stop = batch.how != "done" || !batch.statuses.iter().all(|s| s.success());
            if fastest
                .as_ref()
                .is_none_or(|f| batch.elapsed_ms < f.elapsed_ms || stop)
            {
                fastest = Some(batch);
            }
            if stop {
                break;
            }
        }
        let batch = fastest.expect("at least one baseline run");
        let status = batch.describe();
        walker.record(&format!("baseline\t{}\t{status}", batch.elapsed_ms))?;
        if batch.how != "done" {
            eprintln!("mayfail: {}: stopped", batch.how);
            return Ok(if batch.how == "interrupted" { 130 } else { 1 });
        }
        if !batch.statuses.iter().all(|s| s.success()) {
            eprintln!(
                "mayfail: the command fails without any injected failure ({status}): sites would \
                 be blamed for it; fix it first (its output is in {})",
                paths.log.display()
            );
            return Ok(1);
        }
        eprintln!(
            "mayfail: baseline: {} s, exit 0",
            output::seconds(batch.elapsed_ms)
        );
    }

    let mut stopped = format!("--max-runs {max_runs} reached");
    let mut run = first_run;
    while run < first_run + max_runs {
        walker.record(&format!("run\t{run}\t{jobs}\t{}\t{display}", unix_ms()))?;
        let copies: Vec<Option<String>> = (0..jobs)
            .map(|k| {
                Some(if k == 0 {
                    spec.clone()
                } else {
                    format!("{spec},sites-skip={k}")
                })
            })
            .collect();
        let runtime_before = load(&paths.state)?.runtime_stacks;
        let batch = walker.run_batch(run, &copies)?;
        walker.record(&format!("end\t{run}\t{}\t{}", batch.elapsed_ms, batch.how))?;
        let new = walker.settle(run, &batch)?;
        let state = load(&paths.state)?;
        let new_runtime = state.runtime_stacks - runtime_before;
        let sites = output::sites(&state, &display);
        let outcomes: Vec<String> = new
            .iter()
            .map(|id| {
                sites
                    .iter()
                    .find(|s| s.id == *id)
                    .map_or("retried later".to_owned(), |s| s.outcome.to_string())
            })
            .collect();
        let summary = Summary {
            sites,
            ..empty_summary()
        };
        eprintln!(
            "mayfail: run {run}: {} new site{}{}; {} sites so far ({}); {} s",
            new.len(),
            if new.len() == 1 { "" } else { "s" },
            if outcomes.is_empty() {
                String::new()
            } else {
                format!(" ({})", outcomes.join(", "))
            },
            summary.sites.len(),
            summary.counts(),
            output::seconds(batch.elapsed_ms)
        );
        run += 1;
        if batch.how == "interrupted" {
            stopped = "interrupted (resume with the same command)".to_owned();
            break;
        }
        // A run that failed nothing walked every stack of the command; if
        // it met no new runtime stack either, nothing is left to find, and
        // its time is the steady cost of sites mode. Otherwise (stacks that
        // runs which failed early never reached) one more run confirms.
        if new.is_empty() && (new_runtime == 0 || batch.how != "done") {
            stopped = if batch.how == "done" {
                "a run found no new site".to_owned()
            } else {
                format!("a run found no new site ({})", batch.how)
            };
            break;
        }
    }

    let state = load(&paths.state)?;
    let summary = summarize(&state, &paths, &display, stopped, started.elapsed());
    write_reports(&summary, &paths)?;
    print!("{}", output::table(&summary));
    println!(
        "  reports: {} {}; state: {}; output of the runs: {}",
        paths.json.display(),
        paths.html.display(),
        paths.state.display(),
        paths.log.display()
    );
    Ok(if interrupted() {
        130
    } else if summary.sites.iter().all(|s| s.outcome == Outcome::Handled) {
        0
    } else {
        1
    })
}

fn empty_summary() -> Summary {
    Summary {
        command: String::new(),
        state: String::new(),
        runs: 0,
        stopped: String::new(),
        elapsed_ms: 0,
        baseline_ms: None,
        last_run_ms: None,
        runtime_stacks: 0,
        sites: Vec::new(),
    }
}

fn summarize(
    state: &State,
    paths: &Paths,
    command: &str,
    stopped: String,
    elapsed: Duration,
) -> Summary {
    Summary {
        command: command.to_owned(),
        state: paths.state.display().to_string(),
        runs: state.runs.len() as u64,
        stopped,
        elapsed_ms: elapsed.as_millis() as u64,
        baseline_ms: state.baseline.as_ref().map(|(ms, _)| *ms),
        last_run_ms: state
            .runs
            .iter()
            .rev()
            .find(|r| r.how.as_deref() == Some("done"))
            .and_then(|r| r.elapsed_ms),
        runtime_stacks: state.runtime_stacks,
        sites: output::sites(state, command),
    }
}

fn write_reports(summary: &Summary, paths: &Paths) -> Result<(), Usage> {
    for (path, text) in [
        (&paths.json, output::json(summary)),
        (&paths.html, output::html(summary)),
    ] {
        std::fs::write(path, text)
            .map_err(|e| Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Runs the command, copies at a time, and records what happened.
struct Walker<'a> {
    command: &'a [OsString],
    display: &'a str,
    paths: &'a Paths,
    log: File,
    timeout: Duration,
}

/// How one run (all its copies) ended.
struct Batch {
    /// `done`, `timeout` or `interrupted`.
    how: &'static str,
    elapsed_ms: u64,
    /// Per copy: its pid and status (`None` if killed by us).
    pids: Vec<u32>,
    statuses: Vec<ExitStatus>,
}

impl Batch {
    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .statuses
            .iter()
            .map(|s| match (s.code(), s.signal()) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => "?".to_owned(),
            })
            .collect();
        if parts.is_empty() {
            self.how.to_owned()
        } else {
            parts.join(" ")
        }
    }
}

impl Walker<'_> {
    fn record(&self, line: &str) -> Result<(), Usage> {
        state::append(&self.paths.state, line)
            .map_err(|e| Usage(format!("cannot write {}: {e}", self.paths.state.display())))
    }

    fn spawn(&self, run: u64, copy: usize, spec: Option<&str>) -> Result<Child, Usage> {
        let mut log = &self.log;
        let _ = std::io::Write::write_all(
            &mut log,
            format!(
                "==== mayfail run {run}, copy {copy}: MAYFAIL_INJECT={} {}\n",
                spec.map_or("(unset)".to_owned(), shell_quote),
                self.display
            )
            .as_bytes(),
        );
        let output = |file: &File| file.try_clone().map(Stdio::from);
        let (Ok(out), Ok(err)) = (output(&self.log), output(&self.log)) else {
            return usage(format!("cannot write {}", self.paths.log.display()));
        };
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: a timeout or an interrupt reaches
            // everything it started (cargo's test binaries).
            .process_group(0);
        match spec {
            Some(spec) => command.env("MAYFAIL_INJECT", spec),
            None => command.env_remove("MAYFAIL_INJECT"),
        };
        // std's panic hook prints a backtrace under its backtrace lock, and
        // its out-of-memory hook takes the same lock: a site failed inside
        // the printer would deadlock the process. No backtraces, then.
        command
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0");
        command.spawn().map_err(|e| spawn_error(self.command, &e))
    }

    fn run_batch(&self, run: u64, specs: &[Option<String>]) -> Result<Batch, Usage> {
        let started = Instant::now();
        let mut children = Vec::new();
        for (copy, spec) in specs.iter().enumerate() {
            match self.spawn(run, copy, spec.as_deref()) {
                Ok(child) => children.push(child),
                Err(e) => {
                    for child in &mut children {
                        kill_group(child, libc::SIGKILL);
                        let _ = child.wait();
                    }
                    return Err(e);
                }
            }
        }
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
        let mut how = "done";
        let mut forwarded: Option<Instant> = None;
        loop {
            for (child, status) in children.iter_mut().zip(statuses.iter_mut()) {
                if status.is_none() {
                    *status = child.try_wait().ok().flatten();
                }
            }
            if statuses.iter().all(Option::is_some) {
                break;
            }
            if interrupted() && forwarded.is_none() {
                how = "interrupted";
                forwarded = Some(Instant::now());
                for (child, status) in children.iter_mut().zip(&statuses) {
                    if status.is_none() {
                        kill_group(child, libc::SIGINT);
                    }
                }
            }
            let overdue = started.elapsed() > self.timeout && how == "done";
            let stubborn = forwarded.is_some_and(|at| at.elapsed() > Duration::from_secs(5));
            if overdue || stubborn {
                if overdue {
                    how = "timeout";
                }
                for (child, status) in children.iter_mut().zip(&statuses) {
                    if status.is_none() {
                        kill_group(child, libc::SIGKILL);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Batch {
            how,
            elapsed_ms: started.elapsed().as_millis() as u64,
            pids,
            statuses: statuses.into_iter().flatten().collect(),
        })
    }

    /// After a run: gives every site it failed a fate the processes could
    /// not write themselves, and returns the ids of its new sites.
    fn settle(&self, run: u64, batch: &Batch) -> Result<Vec<u64>, Usage> {
        let state = load(&self.paths.state)?;
        let mut new = Vec::new();
        for record in state.records.iter().filter(|r| r.run == run && !r.retried) {
            if !new.contains(&record.id) {
                new.push(record.id);
            }
            if record.fate.is_some() {
                continue;
            }
            let direct = batch
                .pids
                .iter()
                .position(|&pid| pid == record.pid)
                .and_then(|i| batch.statuses.get(i));
            let fate = match (batch.how, direct) {
                ("interrupted", _) => None,
                ("timeout", _) => Some((
                    Outcome::Hung,
                    format!("killed after {} s", self.timeout.as_secs()),
                )),
                (_, Some(status)) => Some(match (status.code(), status.signal()) {
                    (Some(0), _) => (Outcome::Handled, "exit 0".to_owned()),
                    (Some(code), _) => (Outcome::Failed, format!("exit {code}")),
                    (None, Some(libc::SIGABRT)) => (Outcome::Aborted, "SIGABRT".to_owned()),
                    (None, Some(sig)) => (Outcome::Crashed, format!("signal {sig}")),
                    _ => (Outcome::Unknown, "no status".to_owned()),
                }),
                (_, None) => Some((
                    Outcome::Unknown,
                    "the process left no fate: killed by a signal mayfail does not catch, or _exit"
                        .to_owned(),
                )),
            };
            match fate {
                Some((outcome, detail)) => self.record(&format!(
                    "fate\t{:016x}\t{}\t{outcome}\t{detail}",
                    record.id, record.pid
                ))?,
                // Interrupted before it could end: fail it again next time.
                None => {
                    self.record(&format!("retry\t{:016x}", record.id))?;
                    new.retain(|&id| id != record.id);
                }
            }
        }
        Ok(new)
    }
}

fn kill_group(child: &Child, sig: libc::c_int) {
    // SAFETY: the child leads its own process group (`process_group(0)`)
    // and is not reaped yet, so the group id is still ours to signal.
    unsafe { libc::kill(-(child.id() as libc::pid_t), sig) };
}

// ---------------------------------------------------------------------------
// report

fn report_command(options: Options) -> Result<i32, Usage> {
    let paths = Paths::new(&options)?;
    if !paths.state.exists() {
        return usage(format!("no state file at {}", paths.state.display()));
    }
    let state = load(&paths.state)?;
    let command = state
        .runs
        .last()
        .map_or("CMD".to_owned(), |r| r.command.clone());
    let elapsed: u64 = state.runs.iter().filter_map(|r| r.elapsed_ms).sum();
    let stopped = match state.runs.last().and_then(|r| r.how.as_deref()) {
        Some(how) => format!("the last run ended: {how}"),
        None => "no run ended".to_owned(),
    };
    let summary = summarize(
        &state,
        &paths,
        &command,
        stopped,
        Duration::from_millis(elapsed),
    );
    write_reports(&summary, &paths)?;
    print!("{}", output::table(&summary));
    Ok(0)
}
