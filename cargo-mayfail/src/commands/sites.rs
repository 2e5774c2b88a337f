//! `mayfail sites`: walk every allocation site of a command, one new site
//! per process per run, until a run finds no new site.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;

use super::{Paths, StateFiles};
use crate::exit_codes;
use crate::failure::Failure;
use crate::json;
use crate::model::Summary;
use crate::process::{self, interrupted, quoted, shell_quote};
use crate::progress::Progress;
use crate::report::{self, seconds};
use crate::state::{self, Access, Outcome, State};
use mayfail::state::Line;

/// The longest state-file path the library takes in `sites=FILE`.
const MAX_STATE_PATH: usize = 512;

/// Walks every allocation site of CMD (e.g. `cargo test`): fails each one
/// once, in a run of its own, and reports how the process ended
#[derive(Args, Debug)]
#[command(
    long_about = "Walks every allocation site of CMD (e.g. `cargo test`). In each process the \
                  first allocation whose call stack is new fails, once, and the site and how \
                  the process ended are kept in the state file.\n\n\
                  --engine tests (the default for `cargo test`): builds the test binaries once, \
                  lists their tests and runs each test in processes of its own (--jobs at \
                  once, default the number of CPUs) until a process of it fails no new site; \
                  a test that fails or times out without injection is left out and reported; \
                  sites name their test and replay it alone; doctests are then walked as \
                  `cargo test --doc ARGS` with the runs engine; --shard splits the tests.\n\n\
                  --engine runs (any other command): runs CMD again and again. A \
                  process with one thread, no pipe or socket open and no child \
                  process forks at each \
                  new site: the child fails it and runs on to its fate, the parent goes \
                  on, so one run walks every site it reaches (--no-fork: one site per \
                  process; a process that cannot fork says why in the report). \
                  Stops when a run fails no new site and meets no new stack at all (one more \
                  run confirms a run that met new runtime stacks), or after --max-runs. Stacks \
                  whose innermost frame outside the allocation machinery (std, alloc, core, \
                  libc's and libstdc++'s allocating functions) is in the Rust runtime, a test \
                  harness, the loader or libc's start-up and exit are not counted \
                  (--all-stacks: counted); a C program's main and the callers of libc's \
                  allocating functions are sites. Replay a site with \
                  mayfail run --inject stack=ID -- CMD (the report prints it).\n\n\
                  Outcomes, worst first: crashed (SIGSEGV/SIGBUS: likely an unchecked null), \
                  aborted (SIGABRT), hung (--timeout), failed (exit status not 0: a test \
                  failed), unknown (no fate recorded), handled (exit 0, or a status given to \
                  --handled-exit). Classes, bugs first: crashed, fallible-api-aborted (aborted \
                  below a try_* function of the code, or one returning a Result with an \
                  allocation error, the test excluded), error-path-aborted, \
                  hung, leaked, unknown; then infallible (aborted at an allocation std makes \
                  infallibly, or formatting a panic's message), failed, handled. Only bug \
                  sites that --baseline does not list set the exit status. A process of a run that ends badly with no \
                  site to blame (a timeout before any site, a child that died) is listed apart \
                  as unattributed, and the walk is not all handled. CMD runs with \
                  RUST_BACKTRACE=0. CMD's output is appended to the state file with .log; the \
                  state file, the log and the reports must be four different files. Progress \
                  goes to stderr: a live status line on a terminal, plain lines otherwise.",
    after_help = "Example: mayfail sites -- cargo test --no-fail-fast\n\
                  As a cargo subcommand: cargo mayfail sites (walks `cargo test`), cargo mayfail \
                  sites -- --no-fail-fast (walks `cargo test --no-fail-fast`).\n\
                  Exit status: 0 no bug site (crashed, fallible-api-aborted, \
                  error-path-aborted, hung, leaked, unknown) outside --baseline, 1 one or more \
                  (or a run's process ended badly with no site to blame, a test was left \
                  out, or --max-runs stopped the walk before it found everything), 2 bad input, 3 I/O error, 4 CMD fails without \
                  injection, 5 the state file is in use by another walk, 6 no allocation \
                  reached the preload library or MayFail, 127 CMD not found, 130 interrupted \
                  (the state file stays consistent: run again to resume).\n\
                  The JSON report's schema: mayfail report --help"
)]
pub(crate) struct SitesArgs {
    #[command(flatten)]
    files: StateFiles,
    /// How to walk: `tests` (the default for `cargo test`) runs each test of
    /// every test binary in processes of its own; `runs` (the default for
    /// any other command) runs the whole command again and again
    #[arg(long, value_name = "ENGINE")]
    pub(crate) engine: Option<Engine>,
    /// At most N runs this time (`tests`: of the doctests' walk)
    #[arg(long, value_name = "N", default_value = "1000", value_parser = super::at_least_one)]
    pub(crate) max_runs: u64,
    /// Processes at once (at most 1024). `tests`: N tests at once [default:
    /// the number of CPUs, fewer if memory is short]. `runs`: N copies of
    /// CMD per run [default: 1]; copy k lets the first k new sites pass and
    /// fails the next one, so a deterministic CMD yields up to N sites per run
    #[arg(long, value_name = "N", value_parser = super::jobs)]
    pub(crate) jobs: Option<u64>,
    /// `tests`: error paths. After a site is handled (or fails its test),
    /// a later process of that test fails it again and then the first new
    /// allocation after it, and so on while handled sites turn up, up to N
    /// failures in one process (0 to 4; 0: no error paths)
    #[arg(long, value_name = "N", default_value = "2", value_parser = clap::value_parser!(u8).range(0..=4))]
    pub(crate) depth: u8,
    /// A run (`tests`: a test's process) taking longer is killed; its site
    /// is 'hung'
    #[arg(long, value_name = "SECS", default_value = "600", value_parser = super::at_least_one)]
    pub(crate) timeout: u64,
    /// More MAYFAIL_INJECT attributes (after=N, thread=NAME...)
    #[arg(long, value_name = "SPEC", value_parser = super::injection_spec)]
    inject: Option<String>,
    #[command(flatten)]
    pub(crate) preload: super::preload::PreloadChoice,
    /// Count stacks of the Rust runtime, a test harness, the loader and libc's
    /// start-up and exit as sites
    #[arg(long)]
    all_stacks: bool,
    /// Walk shard K of N only: new stacks are split into N parts by stack
    /// id, so N walks of the same command (CI jobs), each with its own state
    /// file, find disjoint sites that together make the whole walk; `mayfail
    /// report A.state B.state ...` merges their reports
    #[arg(long, value_name = "K/N", value_parser = super::shard)]
    shard: Option<String>,
    /// Exit statuses of CMD that count as handled besides 0, comma-separated
    /// (1,7): a program that reports running out of memory with a status of
    /// its own. Kept in the state file: a resumed walk must give the same
    #[arg(long, value_name = "CODES", value_parser = super::exit_statuses)]
    handled_exit: Option<String>,
    /// Do not run CMD without injection first (twice: it must pass, and the
    /// faster time is the cost baseline)
    #[arg(long)]
    pub(crate) no_baseline: bool,
    /// One site per process. By default a process with one thread (or a
    /// test's, its harness's main thread waiting) and no pipe, socket or
    /// child process forks at each new site: the child fails it and runs on
    /// to its fate, the parent waits for it and goes on as if the allocation
    /// had succeeded, so one run walks every site it reaches (a child shares
    /// the files its parent writes; output the parent's stdio had buffered
    /// shows twice in the log)
    #[arg(long)]
    pub(crate) no_fork: bool,
    /// The command to walk and its arguments, after `--`. As `cargo mayfail
    /// sites`: `cargo test` when no command is given, and words after `--`
    /// that begin with an option are arguments of `cargo test`
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
    #[command(flatten)]
    pub(crate) findings: crate::findings::FindingsArgs,
}

/// Which engine walks the command (`--engine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    /// `cargo test` only: builds once, lists the tests of every test binary
    /// and runs each test in processes of its own, --jobs at once, each
    /// failing its first new site; doctests then as `runs` does
    Tests,
    /// Runs the whole command again and again, each process failing its
    /// first new site, until a run finds nothing new
    Runs,
}

impl Engine {
    /// The engine for `argv`: `--engine` if given (`tests` only for a
    /// `cargo test` command), else `tests` for `cargo test` without
    /// `--doc`, `runs` for anything else.
    fn choose(given: Option<Engine>, argv: &[OsString]) -> Result<Engine, Failure> {
        let tests = super::walk::walks_tests(argv);
        match given {
            Some(Engine::Tests) if !tests => Err(Failure::bad_input(format!(
                "--engine tests walks a `cargo test` command (without --doc), not `{}`: give \
                 --engine runs, or no --engine",
                quoted(argv)
            ))),
            Some(engine) => Ok(engine),
            None if tests => Ok(Engine::Tests),
            None => Ok(Engine::Runs),
        }
    }
}

/// Walks the sites; returns [`exit_codes::SUCCESS`] if every site was
/// handled.
pub(crate) fn execute(
    args: SitesArgs,
    separator_given: bool,
    as_cargo: bool,
) -> Result<i32, Failure> {
    let argv = if as_cargo {
        cargo_command(args.command.clone())
    } else {
        super::command_to_run(args.command.clone(), separator_given)?
    };
    // Checked before anything runs (a baseline file that cannot be read).
    args.findings.baseline()?;
    let engine = Engine::choose(args.engine, &argv)?;
    let setup = Setup::open(&args, argv)?;
    match engine {
        Engine::Runs => walk_whole(&args, &setup),
        Engine::Tests => super::walk::execute(&args, &setup),
    }
}

/// The old engine on the whole command: a baseline, the runs, the report.
fn walk_whole(args: &SitesArgs, setup: &Setup) -> Result<i32, Failure> {
    let preload = setup.preload.clone();
    let mut walker = setup.walker(&setup.argv, preload)?;
    walker.fork = !args.no_fork;
    let mut progress = Progress::on_stderr();
    if !args.no_baseline
        && let Some(code) = baseline(&walker, &mut progress, 2)?
    {
        return Ok(code);
    }
    let jobs = args.jobs.unwrap_or(1);
    walk_runs(
        &walker,
        &setup.spec(true),
        jobs,
        args.max_runs,
        &mut progress,
    )?;
    drop(progress);
    finish(args, setup, walker.preload.is_some())
}

/// What every engine shares: the command, its files, what its processes
/// run with. Opening it checks the input, opens and locks the state file
/// and writes its header.
pub(crate) struct Setup {
    pub(crate) argv: Vec<OsString>,
    pub(crate) display: String,
    pub(crate) paths: Paths,
    /// Open for appending and locked until the walk ends.
    pub(crate) state_file: File,
    pub(crate) log: File,
    pub(crate) timeout: Duration,
    /// Exit statuses that count as handled besides 0.
    pub(crate) handled_exit: Vec<u8>,
    /// `sites=STATE`, `sites-all=Y` and `--inject`'s attributes.
    spec: String,
    /// The variable that puts the command under the preload library (for a
    /// cargo command, its target runner), if it is used.
    pub(crate) preload: Option<(String, OsString)>,
    pub(crate) shard: Option<String>,
}

impl Setup {
    fn open(args: &SitesArgs, argv: Vec<OsString>) -> Result<Setup, Failure> {
        refuse_line_breaks(&argv)?;
        let paths = args.files.paths()?;
        paths.refuse_collisions(std::slice::from_ref(&paths.state))?;
        let spec = walk_spec(args, &paths)?;
        // Held until the walk ends; nothing runs before it is open for writing.
        let state_file = super::open_state(&paths.state, Access::Walk)?;
        let state = super::load(&state_file, &paths.state)?;
        super::note_unknown_lines(&state, &paths.state);
        if state.torn.is_some() {
            // Read whole but for its last line, which goes: the walk goes on.
            drop_torn_tail(&state_file, &paths)?;
        }
        let handled_exit = args.handled_exit.clone().unwrap_or_default();
        refuse_other_walk(&state, &paths, &argv, &handled_exit)?;
        if state.next_run().is_none() {
            return Err(Failure::bad_input(format!(
                "the state file {} already holds run {}: no run number is left after it; move \
                 it away to start afresh",
                paths.state.display(),
                u64::MAX
            )));
        }
        // After the refusals above (finding the library may build it),
        // before anything is written: a library path the loader cannot take
        // and a project's own target runner are refused with nothing run.
        let preload = args.preload.environment(&argv)?;
        if state.len == 0 {
            append_whole(&state_file, &paths, &Line::Header.to_string())?;
        }
        if state.runs.is_empty() && state.handled_exit.is_empty() && !handled_exit.is_empty() {
            let line = Line::HandledExit {
                codes: handled_exit.as_str().into(),
            };
            append_whole(&state_file, &paths, &line.to_string())?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.log)
            .map_err(|e| Failure::io("write", &paths.log, e))?;
        process::catch_interrupts();
        process::adopt_orphans();
        Ok(Setup {
            display: quoted(&argv),
            argv,
            paths,
            state_file,
            log,
            timeout: Duration::from_secs(args.timeout),
            handled_exit: mayfail::state::parse_exit_codes(&handled_exit).unwrap_or_default(),
            spec,
            shard: args.shard.clone(),
            preload,
        })
    }

    /// `MAYFAIL_INJECT` of a process in sites mode; with `sites-shard` if
    /// `shard_stacks` (the `runs` engine shards stacks, `tests` shards tests).
    pub(crate) fn spec(&self, shard_stacks: bool) -> String {
        match (&self.shard, shard_stacks) {
            (Some(shard), true) => format!("{},sites-shard={shard}", self.spec),
            _ => self.spec.clone(),
        }
    }

    /// A walker of `command` (this walk's, or its doctests').
    pub(crate) fn walker<'a>(
        &'a self,
        command: &'a [OsString],
        preload: Option<(String, OsString)>,
    ) -> Result<Walker<'a>, Failure> {
        Ok(Walker {
            command,
            preload,
            display: quoted(command),
            paths: &self.paths,
            state: &self.state_file,
            log: self
                .log
                .try_clone()
                .map_err(|e| Failure::io("write", &self.paths.log, e))?,
            timeout: self.timeout,
            handled_exit: self.handled_exit.clone(),
            fork: false,
        })
    }

    /// Appends a line of the runner's (a [`Line`]'s text) while processes
    /// may be writing: a line they have under way may look cut short, so
    /// nothing is cut off.
    pub(crate) fn append(&self, line: &str) -> Result<(), Failure> {
        append_whole(&self.state_file, &self.paths, line)
    }

    /// Appends a line of the runner's (a [`Line`]'s text) when no process
    /// is under way (see [`Walker::record`]).
    pub(crate) fn record(&self, line: &str) -> Result<(), Failure> {
        drop_torn_tail(&self.state_file, &self.paths)?;
        append_whole(&self.state_file, &self.paths, line)
    }

    pub(crate) fn load(&self) -> Result<State, Failure> {
        drop_torn_tail(&self.state_file, &self.paths)?;
        super::load(&self.state_file, &self.paths.state)
    }
}

/// Refuses an argument the state file cannot keep on its `run` line.
fn refuse_line_breaks(argv: &[OsString]) -> Result<(), Failure> {
    match argv
        .iter()
        .find(|arg| arg.as_encoded_bytes().iter().any(|b| b"\t\n\r".contains(b)))
    {
        Some(arg) => Err(Failure::bad_input(format!(
            "the argument {} holds a tab or a line break: the state file keeps the command on \
             one line, so it cannot be walked",
            shell_quote(arg)
        ))),
        None => Ok(()),
    }
}

/// `sites=STATE` with `--all-stacks` and `--inject`, checked by the library.
fn walk_spec(args: &SitesArgs, paths: &Paths) -> Result<String, Failure> {
    let Some(state_text) = paths.state.to_str() else {
        return Err(Failure::bad_input(format!(
            "--state {}: the path must be valid UTF-8",
            paths.state.display()
        )));
    };
    if state_text.contains(',') || state_text.len() > MAX_STATE_PATH {
        return Err(Failure::bad_input(format!(
            "--state {state_text}: the path must hold no comma and at most {MAX_STATE_PATH} bytes"
        )));
    }
    let mut spec = format!("sites={state_text}");
    if args.all_stacks {
        spec.push_str(",sites-all=Y");
    }
    if let Some(extra) = &args.inject {
        spec.push(',');
        spec.push_str(extra);
    }
    let mut checked = spec.clone();
    if let Some(shard) = &args.shard {
        checked.push_str(",sites-shard=");
        checked.push_str(shard);
    }
    match mayfail::check_injection(&checked) {
        Ok(()) => Ok(spec),
        Err(e) => Err(Failure::bad_input(format!(
            "--inject {}: {e}",
            args.inject.clone().unwrap_or_default()
        ))),
    }
}

/// Refuses to resume a state file of another command or other
/// `--handled-exit` statuses.
fn refuse_other_walk(
    state: &State,
    paths: &Paths,
    argv: &[OsString],
    handled_exit: &str,
) -> Result<(), Failure> {
    // The first run's command: a per-test walk's later runs walk doctests.
    if let Some(walked) = state.runs.first()
        && walked.argv != argv
    {
        return Err(Failure::bad_input(format!(
            "the state file {} walks `{}`, not `{display}`: resume it with the same command, \
             or start afresh with another --state FILE (or move it away)",
            paths.state.display(),
            walked.command,
            display = quoted(argv)
        )));
    }
    let stored = state.handled_exit_text();
    let fresh = state.runs.is_empty() && stored.is_empty();
    if handled_exit != stored && !fresh {
        let shown = |codes: &str| {
            if codes.is_empty() {
                "none".to_owned()
            } else {
                codes.to_owned()
            }
        };
        return Err(Failure::bad_input(format!(
            "the state file {} counts exit statuses {} as handled, not {} (--handled-exit): \
             resume it with the same, or start afresh with another --state FILE (or move it \
             away)",
            paths.state.display(),
            shown(&stored),
            shown(handled_exit)
        )));
    }
    Ok(())
}

/// Runs the command `times` without injection (twice: the first also warms
/// caches up, as the runs under injection will be), keeping the fastest,
/// and records it. Returns the exit code to stop with, if the walk must
/// stop.
pub(crate) fn baseline(
    walker: &Walker,
    progress: &mut Progress,
    times: u32,
) -> Result<Option<i32>, Failure> {
    progress.line(&format!(
        "run 0 (baseline, no injection{}): {}",
        if times == 2 { ", twice" } else { "" },
        walker.display
    ));
    progress.baseline_started();
    let mut fastest: Option<Batch> = None;
    for _ in 0..times.max(1) {
        let batch = walker.run_batch(0, &[None])?;
        let stop = !batch.passed();
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
    walker.record(&Line::Baseline {
        ms: batch.elapsed_ms,
        status: status.as_str().into(),
    })?;
    if batch.how == Ending::Interrupted {
        progress.line("interrupted: stopped");
        return Ok(Some(exit_codes::INTERRUPTED));
    }
    if !batch.passed() {
        progress.line(&format!(
            "the command fails without any injected failure ({status}): sites would be \
             blamed for it; fix it first (its output is in {})",
            walker.paths.log.display()
        ));
        return Ok(Some(exit_codes::BASELINE_FAILED));
    }
    progress.line(&format!(
        "baseline: {} s, exit 0",
        seconds(batch.elapsed_ms)
    ));
    Ok(None)
}

/// The runs of the whole command, `jobs` copies each, until one finds
/// nothing new, `max_runs` of them, or an interrupt. A walker that forks at
/// sites runs one copy while its processes do fork: copies would fork at
/// the same sites.
pub(crate) fn walk_runs(
    walker: &Walker,
    spec: &str,
    jobs: u64,
    max_runs: u64,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let Some(mut run) = walker.load()?.next_run() else {
        progress.line("no run number is left: stopped");
        return Ok(());
    };
    let child_ms = u64::try_from(walker.timeout.as_millis()).unwrap_or(u64::MAX);
    let forking = format!("{spec},sites-fork={child_ms}");
    let mut fork = walker.fork;
    for _ in 0..max_runs {
        let state = walker.load()?;
        fork &= state.no_fork.is_empty();
        let (this_spec, copies) = if fork {
            (forking.as_str(), 1)
        } else {
            (spec, jobs)
        };
        let batch = walker.run_once(run, this_spec, copies, progress)?;
        let (new, new_runtime) = batch;
        if interrupted() {
            return Ok(());
        }
        // A run that failed nothing walked every stack of the command; if
        // it met no new runtime stack either, nothing is left to find, and
        // its time is the steady cost of sites mode. Otherwise (stacks that
        // runs which failed early never reached) one more run confirms.
        // (`report::why_stopped` reads the same rule back from the file.)
        // Sites a forked child could not walk (it deadlocked on a lock its
        // parent held) are asked for again: runs without forking walk them.
        if !new && !new_runtime {
            let asked_again = walker.load()?.records.iter().any(|r| r.retried);
            if !(fork && asked_again) {
                return Ok(());
            }
            fork = false;
        }
        let Some(next) = run.checked_add(1) else {
            progress.line("no run number is left: stopped");
            return Ok(());
        };
        run = next;
    }
    progress.line(&format!("--max-runs {max_runs} reached"));
    Ok(())
}

/// Prints and writes the report of the state file and returns the walk's
/// exit code.
pub(crate) fn finish(args: &SitesArgs, setup: &Setup, preloaded: bool) -> Result<i32, Failure> {
    let paths = &setup.paths;
    let state = setup.load()?;
    let baseline = args.findings.baseline()?;
    let summary = args
        .findings
        .apply(baseline.as_ref(), report::summarize(&state, &paths.state));
    write_reports(&summary, paths)?;
    args.findings.write(&summary)?;
    crate::progress::print_text(&report::table(&summary));
    crate::progress::say!(
        "  reports: {} {}; state: {}; output of the runs: {}",
        paths.json.display(),
        paths.html.display(),
        paths.state.display(),
        paths.log.display()
    );
    if interrupted() {
        return Ok(exit_codes::INTERRUPTED);
    }
    if nothing_reached(&state, preloaded, &setup.display) {
        return Ok(exit_codes::NOTHING_REACHED);
    }
    // Bug classes not in the baseline set the status; so do a process with
    // no site to blame, a test left out, and a walk that stopped before it
    // found everything (--max-runs): it has not looked everywhere.
    let all_handled = summary.gating() == 0
        && state.unattributed.is_empty()
        && state.left_out.is_empty()
        && report::finished(&state);
    Ok(if all_handled {
        exit_codes::SUCCESS
    } else {
        exit_codes::UNHANDLED_SITES
    })
}

/// Whether no process reported to the walk, said in one line if so. A
/// process under mayfail writes a line for every stack it meets (a site, a
/// runtime stack, or once a stack of another shard): none in a whole walk
/// means mayfail served no allocation: the preload library not loaded (a
/// static or setuid program) or never called (an allocator of the
/// program's own), or a program without `MayFail`.
fn nothing_reached(state: &State, preloaded: bool, display: &str) -> bool {
    let ran = state
        .runs
        .iter()
        .any(|r| r.how.as_deref().is_some_and(|how| how != "interrupted"));
    if !ran || !state.records.is_empty() || state.runtime_stacks != 0 || state.other_shard != 0 {
        return false;
    }
    let runs = format!(
        "{} run{}",
        state.runs.len(),
        if state.runs.len() == 1 { "" } else { "s" }
    );
    if preloaded {
        crate::progress::note!(
            "mayfail: no allocation of {display} reached the preload library in {runs}: \
             nothing was injected or walked"
        );
    } else {
        crate::progress::note!(
            "mayfail: no process of {display} reported to the walk in {runs}: nothing was \
             injected or walked (a program whose allocator is not mayfail::MayFail is \
             reached with --preload)"
        );
    }
    true
}

/// The command `cargo mayfail sites` walks: `cargo test` when none is
/// given, `cargo test ARGS` when the words after `--` begin with an option
/// (`-- --no-fail-fast`), else the command as given (`-- cargo test -q`,
/// `-- ./prog`).
fn cargo_command(words: Vec<OsString>) -> Vec<OsString> {
    if words
        .first()
        .is_some_and(|first| !first.as_encoded_bytes().starts_with(b"-"))
    {
        return words;
    }
    let mut argv: Vec<OsString> = vec!["cargo".into(), "test".into()];
    argv.extend(words);
    argv
}

/// Writes the JSON and the HTML report.
pub(crate) fn write_reports(summary: &Summary, paths: &Paths) -> Result<(), Failure> {
    for (path, text) in [
        (&paths.json, json::render(summary)),
        (&paths.html, report::html(summary)),
    ] {
        std::fs::write(path, text).map_err(|e| Failure::io("write", path, e))?;
    }
    Ok(())
}

/// The fate of a site whose process ended with `status` and wrote none.
pub(crate) fn fate_of(status: &ExitStatus) -> (Outcome, String) {
    match (status.code(), status.signal()) {
        (Some(0), _) => (Outcome::Handled, "exit 0".to_owned()),
        (Some(code), _) => (Outcome::Failed, format!("exit {code}")),
        (None, Some(libc::SIGABRT)) => (Outcome::Aborted, "SIGABRT".to_owned()),
        (None, Some(signal)) => (Outcome::Crashed, format!("signal {signal}")),
        _ => (Outcome::Unknown, "no status".to_owned()),
    }
}

/// A site whose process the timeout killed.
pub(crate) fn hung(timeout: Duration) -> (Outcome, String) {
    (
        Outcome::Hung,
        format!("killed after {} s", timeout.as_secs()),
    )
}

/// A site whose process is not one the runner waited for, and wrote no fate.
fn no_fate() -> (Outcome, String) {
    (
        Outcome::Unknown,
        "the process left no fate: killed by a signal mayfail does not catch, or _exit".to_owned(),
    )
}

/// Exit 0, or a status `--handled-exit` declares.
pub(crate) fn ended_well(status: &ExitStatus, handled_exit: &[u8]) -> bool {
    match status.code() {
        Some(0) => true,
        Some(code) => u8::try_from(code).is_ok_and(|c| handled_exit.contains(&c)),
        None => false,
    }
}

pub(crate) fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// How much longer than `--timeout` a forking run may go without a new
/// forked child: its processes kill a child that overruns `--timeout`
/// themselves.
const FORK_MARGIN: Duration = Duration::from_secs(2);

/// Whether what the state file gained since `*len` bytes shows a forking
/// run going on: the site line of a child forked at its site (its facts
/// hold `forked`), or a `fate` or `retry` line (a parent writes one as each
/// child ends); moves `*len` on.
fn forked_since(state: &File, len: &mut u64) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(now) = state.metadata().map(|m| m.len()) else {
        return false;
    };
    if now <= *len {
        return false;
    }
    let mut added = vec![0; usize::try_from(now - *len).unwrap_or(0).min(1 << 20)];
    let read = state.read_at(&mut added, *len).unwrap_or(0);
    // Whole lines only: a line still being written is read next time.
    let Some(end) = added[..read].iter().rposition(|&b| b == b'\n') else {
        return false;
    };
    *len += end as u64 + 1;
    added[..end].split(|&b| b == b'\n').any(|line| {
        line.starts_with(b"fate\t")
            || line.starts_with(b"retry\t")
            || (line.starts_with(b"site\t") && line.windows(7).any(|w| w == b"forked\t"))
    })
}

/// Runs the command, copies at a time, and records what happened.
pub(crate) struct Walker<'a> {
    command: &'a [OsString],
    /// The variable that puts the command under the preload library.
    preload: Option<(String, OsString)>,
    display: String,
    paths: &'a Paths,
    /// The state file, open for appending and locked for the whole walk.
    state: &'a File,
    log: File,
    timeout: Duration,
    /// Exit statuses that count as handled besides 0.
    handled_exit: Vec<u8>,
    /// Whether its processes fork at their new sites (`sites-fork`): a run
    /// then lasts as long as its children together, and the timeout counts
    /// from its last forked child's site line.
    pub(crate) fork: bool,
}

/// How a run (or a process of the per-test engine) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every process ended by itself.
    Done,
    /// The timeout killed what was left.
    Timeout,
    /// Ctrl-C or SIGTERM: forwarded, then waited for.
    Interrupted,
}

impl Ending {
    /// As an `end` line writes it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ending::Done => "done",
            Ending::Timeout => "timeout",
            Ending::Interrupted => "interrupted",
        }
    }
}

/// How one run (all its copies) ended.
struct Batch {
    how: Ending,
    elapsed_ms: u64,
    /// Per copy: its pid, its status, and whether the timeout killed it.
    pids: Vec<u32>,
    statuses: Vec<ExitStatus>,
    killed: Vec<bool>,
}

impl Batch {
    /// Ended by itself, every copy with exit 0.
    fn passed(&self) -> bool {
        self.how == Ending::Done && self.statuses.iter().all(ExitStatus::success)
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self.statuses.iter().map(process::describe_status).collect();
        if parts.is_empty() {
            self.how.name().to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// Cuts a last line cut short off the state file (see
/// [`state::drop_torn_tail`]) and says so.
pub(crate) fn drop_torn_tail(file: &File, paths: &Paths) -> Result<(), Failure> {
    let dropped = state::drop_torn_tail(file)
        .map_err(|e| Failure::io("write the state file", &paths.state, e))?;
    if let Some(line) = dropped {
        crate::progress::note!(
            "mayfail: the state file {} ended with a line cut short (\"{line}\"; a full disk, \
             or a writer killed mid-line): dropped, the rest of the walk kept",
            paths.state.display()
        );
    }
    Ok(())
}

/// Appends a line of the runner's to the state file, whose exclusive lock
/// the caller holds: a line the disk had no room for is taken back whole
/// (the file is cut back to its length before), never left cut short.
fn append_whole(file: &File, paths: &Paths, line: &str) -> Result<(), Failure> {
    let before = file.metadata().map(|m| m.len());
    state::append(file, line).map_err(|e| {
        if let Ok(len) = before {
            let _ = file.set_len(len);
        }
        Failure::io("write the state file", &paths.state, e)
    })
}

impl Walker<'_> {
    /// One run of the whole command, `jobs` copies: records it and prints
    /// what it found. Returns whether it failed new sites and whether it
    /// met new runtime stacks (when it ended normally).
    fn run_once(
        &self,
        run: u64,
        spec: &str,
        jobs: u64,
        progress: &mut Progress,
    ) -> Result<(bool, bool), Failure> {
        let before = self.load()?;
        // Sites written outside any run (by a process that outlived its
        // run): failed again, in a run that sees their fate.
        let mut asked = Vec::new();
        for record in before.stray() {
            if !asked.contains(&record.id) {
                asked.push(record.id);
                self.record(&Line::Retry { id: record.id })?;
            }
        }
        let known = Summary {
            sites: report::sites(&before),
            ..Summary::default()
        };
        progress.run_started(run, known.sites.len(), &known.counts());
        self.record(&Line::Run {
            number: run,
            copies: jobs.to_string().into(),
            start_ms: unix_ms().to_string().into(),
            command: self.display.as_str().into(),
        })?;
        let copies: Vec<Option<String>> = (0..jobs)
            .map(|k| {
                Some(if k == 0 {
                    spec.to_owned()
                } else {
                    format!("{spec},sites-skip={k}")
                })
            })
            .collect();
        let batch = self.run_batch(run, &copies)?;
        self.record(&Line::End {
            number: run,
            ms: batch.elapsed_ms,
            how: batch.how.name().into(),
        })?;
        let (new, unattributed) = self.settle(run, &batch)?;
        let state = self.load()?;
        let new_runtime = state.run(run).map_or(0, |r| r.runtime_stacks);
        let summary = Summary {
            sites: report::sites(&state),
            ..Summary::default()
        };
        let outcomes: Vec<String> = new
            .iter()
            .map(|id| {
                summary
                    .sites
                    .iter()
                    .find(|s| s.id == *id)
                    .map_or("retried later".to_owned(), |s| s.outcome.to_string())
            })
            .collect();
        progress.run_ended(
            batch.elapsed_ms,
            &format!(
                "run {run}: {} new site{}{}{}; {} sites so far ({}); {} s",
                new.len(),
                if new.len() == 1 { "" } else { "s" },
                if outcomes.is_empty() {
                    String::new()
                } else if outcomes.len() <= 6 {
                    format!(" ({})", outcomes.join(", "))
                } else {
                    // A forking run's hundreds: counted.
                    let counts: Vec<String> = report::counted(&outcomes)
                        .into_iter()
                        .map(|(outcome, n)| format!("{n} {outcome}"))
                        .collect();
                    format!(" ({})", counts.join(", "))
                },
                if unattributed.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; ended badly with no site to blame: {}",
                        unattributed.join("; ")
                    )
                },
                summary.sites.len(),
                summary.counts(),
                seconds(batch.elapsed_ms)
            ),
        );
        Ok((
            !new.is_empty(),
            new_runtime != 0 && batch.how == Ending::Done,
        ))
    }

    /// Appends a line of the runner's, after a line a process may have
    /// left cut short (the processes of a run are gone when the runner
    /// writes): a whole line never follows a cut one. A line the disk had
    /// no room for is taken back whole.
    fn record(&self, line: &Line<'_>) -> Result<(), Failure> {
        drop_torn_tail(self.state, self.paths)?;
        append_whole(self.state, self.paths, &line.to_string())
    }

    fn load(&self) -> Result<State, Failure> {
        drop_torn_tail(self.state, self.paths)?;
        super::load(self.state, &self.paths.state)
    }

    fn spawn(&self, run: u64, copy: usize, spec: Option<&str>) -> Result<Child, Failure> {
        let mut log = &self.log;
        let _ = std::io::Write::write_all(
            &mut log,
            format!(
                "==== mayfail run {run}, copy {copy}: MAYFAIL_INJECT={} {}\n",
                spec.map_or("(unset)".to_owned(), |spec| shell_quote(spec.as_ref())),
                self.display
            )
            .as_bytes(),
        );
        let output = || {
            self.log
                .try_clone()
                .map(Stdio::from)
                .map_err(|e| Failure::io("write", &self.paths.log, e))
        };
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(output()?)
            .stderr(output()?)
            // Its own process group: a timeout or an interrupt reaches
            // everything it started (cargo's test binaries).
            .process_group(0);
        match spec {
            Some(spec) => command.env("MAYFAIL_INJECT", spec),
            None => command.env_remove("MAYFAIL_INJECT"),
        };
        if let Some((variable, value)) = &self.preload {
            command.env(variable, value);
        }
        super::without_backtraces(&mut command);
        command
            .spawn()
            .map_err(|e| Failure::spawn(shell_quote(&self.command[0]), e))
    }

    fn run_batch(&self, run: u64, specs: &[Option<String>]) -> Result<Batch, Failure> {
        let started = Instant::now();
        let mut children = Vec::new();
        for (copy, spec) in specs.iter().enumerate() {
            match self.spawn(run, copy, spec.as_deref()) {
                Ok(child) => children.push(child),
                Err(e) => {
                    for child in &mut children {
                        process::signal_group(child, libc::SIGKILL);
                        let _ = child.wait();
                    }
                    return Err(e);
                }
            }
        }
        let pids: Vec<u32> = children.iter().map(Child::id).collect();
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
        let mut killed = vec![false; children.len()];
        let mut how = Ending::Done;
        let mut forwarded: Option<Instant> = None;
        // A forking run, once a child forked at its site: the time since
        // the last such child's site line or the last fate or retry line,
        // with a margin that lets a parent kill its hung child first.
        let mut quiet_since = started;
        let mut state_len = self.state.metadata().map_or(0, |m| m.len());
        let mut limit = self.timeout;
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
                how = Ending::Interrupted;
                forwarded = Some(Instant::now());
                for (child, status) in children.iter().zip(&statuses) {
                    if status.is_none() {
                        process::signal_group(child, libc::SIGINT);
                    }
                }
            }
            if self.fork && forked_since(self.state, &mut state_len) {
                quiet_since = Instant::now();
                limit = self.timeout.saturating_add(FORK_MARGIN);
            }
            let overdue = quiet_since.elapsed() > limit && how == Ending::Done;
            let stubborn = forwarded.is_some_and(|at| at.elapsed() > Duration::from_secs(5));
            if overdue || stubborn {
                if overdue {
                    how = Ending::Timeout;
                }
                for ((child, status), killed) in children.iter().zip(&statuses).zip(&mut killed) {
                    if status.is_none() {
                        process::signal_group(child, libc::SIGKILL);
                        *killed |= overdue;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // What the run left behind (a daemon in a session of its own, a
        // background job) dies with it, before its `end` line: no line of
        // this run can come after it.
        process::kill_leftovers(Duration::from_secs(5));
        Ok(Batch {
            how,
            elapsed_ms: started.elapsed().as_millis() as u64,
            pids,
            statuses: statuses.into_iter().flatten().collect(),
            killed,
        })
    }

    /// After a run: gives every site it failed a fate the processes could
    /// not write themselves, records the copies that ended badly with no
    /// site to blame, and returns the ids of its new sites and what each
    /// such copy was, in words.
    fn settle(&self, run: u64, batch: &Batch) -> Result<(Vec<u64>, Vec<String>), Failure> {
        let state = self.load()?;
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
                (Ending::Interrupted, _) => None,
                (Ending::Timeout, _) => Some(hung(self.timeout)),
                (Ending::Done, Some(status)) => Some(fate_of(status)),
                (Ending::Done, None) => Some(no_fate()),
            };
            match fate {
                Some((outcome, detail)) => self.record(&Line::Fate {
                    id: record.id,
                    pid: record.pid,
                    outcome,
                    detail: detail.into(),
                })?,
                // Interrupted before it could end: fail it again next time.
                None => {
                    self.record(&Line::Retry { id: record.id })?;
                    new.retain(|&id| id != record.id);
                }
            }
        }
        let unattributed = self.unattributed(run, batch, &state)?;
        Ok((new, unattributed))
    }

    /// Records, with an `unattributed` line, every copy of the run that
    /// ended badly (killed by the timeout, a non-zero status that is not
    /// declared handled, a signal) when no site of the run accounts for
    /// it: one its process failed itself, or one a descendant failed
    /// (each such descendant accounts for one copy). An interrupted run
    /// records none. Returns what each one was, in words.
    fn unattributed(&self, run: u64, batch: &Batch, state: &State) -> Result<Vec<String>, Failure> {
        let mut lines = Vec::new();
        if batch.how == Ending::Interrupted {
            return Ok(lines);
        }
        let sites: Vec<&state::Record> = state
            .records
            .iter()
            .filter(|r| r.run == run && !r.stray)
            .collect();
        // A child forked at its site ran beside its parent, which went on:
        // it accounts for nobody's end.
        let mut descendants: Vec<u32> = sites
            .iter()
            .filter(|r| !r.forked)
            .map(|r| r.pid)
            .filter(|pid| !batch.pids.contains(pid))
            .collect();
        descendants.sort_unstable();
        descendants.dedup();
        let mut explained_by_descendants = descendants.len();
        for (copy, (&pid, status)) in batch.pids.iter().zip(&batch.statuses).enumerate() {
            let (outcome, detail) = if batch.killed.get(copy).copied().unwrap_or(false) {
                hung(self.timeout)
            } else if ended_well(status, &self.handled_exit) {
                continue;
            } else {
                fate_of(status)
            };
            if sites.iter().any(|r| r.pid == pid) {
                continue;
            }
            if explained_by_descendants > 0 {
                explained_by_descendants -= 1;
                continue;
            }
            self.record(&Line::Unattributed {
                run,
                pid,
                outcome,
                detail: detail.as_str().into(),
            })?;
            lines.push(format!("{outcome}, {detail}"));
        }
        Ok(lines)
    }
}
