//! The per-test engine of `mayfail sites` (`--engine tests`, the default
//! for `cargo test`): the walk's cost is the suite's own running time plus
//! a small cost per site, instead of a whole `cargo test` per site.
//!
//! In steps: validate (a `cargo test` command), prepare (build the test
//! binaries once, list their tests, keep this shard's tests not walked yet,
//! run every binary once without injection, and each test of a binary that
//! fails alone, to leave out the tests that fail without injection), walk
//! (the scheduler in [`schedule`]: each test runs in processes of its own,
//! `--jobs` at once, each process failing its test's first new stack, until
//! a process of it fails none; the doctests too, compiled once by
//! [`doctests`], else walked afterwards with the `runs` engine on `cargo
//! test --doc ARGS`, rustdoc building and running them in every run), and
//! the report.
//!
//! The state file: one `run` line for the tests' walk, a `test` line for
//! every process once it ended (its sites are that test's), a `tested` line
//! once a test's walk is complete (a resumed walk skips it) and a `left-out`
//! line for a test that fails without injection.

pub(crate) mod doctests;
mod schedule;
mod targets;

use std::ffi::OsString;
use std::time::Instant;

use super::sites::{self, Setup, SitesArgs};
use crate::exit_codes;
use crate::failure::Failure;
use crate::process::interrupted;
use crate::progress::Progress;
use crate::report::seconds;
use crate::state::{Outcome, Test};
use mayfail::state::Line;
use schedule::{Pool, Scheduler};
use targets::{Binary, CargoTest};

/// The memory a test process is given room for when `--jobs` is not set.
const MEMORY_PER_JOB: u64 = 256 << 20;

/// Whether `argv` is a `cargo test` command the per-test engine walks:
/// `cargo test`, without `--doc` (doctests alone: the `runs` engine).
pub(crate) fn walks_tests(argv: &[OsString]) -> bool {
    super::preload::is_cargo(argv)
        && argv.get(1).is_some_and(|a| a == "test")
        && !CargoTest::split(argv).cargo.iter().any(|a| a == "--doc")
}

/// A test to walk: its binary (an index) and its name; and for the walk
/// of an error path, the sites its processes fail first, in order.
pub(crate) struct Walked {
    pub(crate) binary: usize,
    pub(crate) test: Test,
    pub(crate) after: Vec<u64>,
}

/// What [`prepare`] found: the binaries, the tests to walk, and whether
/// there are doctests.
struct Prepared {
    binaries: Vec<Binary>,
    tests: Vec<Walked>,
    /// Tests a resumed walk has seen to their end: their error paths are
    /// walked again.
    done: Vec<Walked>,
    doctests: bool,
}

/// Walks the tests of `setup`'s `cargo test` command, then its doctests.
pub(crate) fn execute(args: &SitesArgs, setup: &Setup) -> Result<i32, Failure> {
    let command = CargoTest::split(&setup.argv);
    let mut progress = Progress::on_stderr();
    let Some(Prepared {
        binaries,
        tests,
        done,
        doctests,
    }) = prepare(args, setup, &command, &progress)?
    else {
        return Ok(exit_codes::BASELINE_FAILED);
    };
    if interrupted() {
        return sites::finish(args, setup, true);
    }
    let jobs = jobs(args);
    let Some(run) = setup.load()?.next_run() else {
        return Err(Failure::bad_input(
            "no run number is left in the state file",
        ));
    };
    progress.line(&format!(
        "walking {} tests, {jobs} at once (--jobs)",
        tests.len()
    ));
    // Output files of an earlier walk's processes, killed before they
    // were read, would be taken for this walk's.
    let _ = std::fs::remove_dir_all(schedule::output_dir(setup));
    let mut scheduler = Scheduler::new(setup, &binaries, &command, run, jobs, !args.no_fork)?;
    scheduler.error_paths(usize::from(args.depth), &setup.load()?);
    scheduler.walk(tests, done, &mut progress)?;
    let mut stopped = None;
    if doctests && !interrupted() {
        stopped = walk_doctests(args, setup, &command, &mut progress)?;
    }
    drop(progress);
    let _ = std::fs::remove_dir(schedule::output_dir(setup));
    note_fallible_returns(setup, &binaries)?;
    let code = sites::finish(args, setup, binaries.iter().any(|b| b.preload.is_some()))?;
    // Doctests that fail without injection: the walk did not look at them.
    Ok(match stopped {
        Some(stopped) if code != exit_codes::INTERRUPTED => stopped,
        _ => code,
    })
}

/// Reads, from the debug information of each binary with aborted sites,
/// which functions on those sites' chains return a `Result` with an
/// allocation error (see `returns`), and records each function once (a
/// `fallible` line): the report then counts an abort below one as a broken
/// promise, as it does below a `try_*` name.
fn note_fallible_returns(setup: &Setup, binaries: &[Binary]) -> Result<(), Failure> {
    let state = setup.load()?;
    let mut known = state.fallible.clone();
    let mut read: Vec<&std::path::Path> = Vec::new();
    for binary in binaries {
        let path = binary.executable.as_path();
        if read.contains(&path) {
            continue;
        }
        read.push(path);
        let name = path.file_name().map(|n| n.to_string_lossy());
        let aborted: Vec<&crate::state::Record> = state
            .records
            .iter()
            .filter(|r| Some(r.binary.as_str()) == name.as_deref())
            .filter(|r| !r.panic && matches!(r.fate, Some((Outcome::Aborted, _))))
            .collect();
        if aborted.is_empty() {
            continue;
        }
        let functions = crate::returns::fallible_functions(path);
        for record in aborted {
            for frame in crate::findings::frames_of(&record.chain) {
                if functions.contains(&frame.function) && known.insert(frame.function.clone()) {
                    setup.append(
                        &Line::Fallible {
                            function: frame.function.as_str().into(),
                        }
                        .to_string(),
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Builds, lists and runs the baseline; returns the binaries, the tests
/// to walk and whether there are doctests, or `None` if the build failed.
fn prepare(
    args: &SitesArgs,
    setup: &Setup,
    command: &CargoTest,
    progress: &Progress,
) -> Result<Option<Prepared>, Failure> {
    progress.line(&format!(
        "building once: cargo test --no-run {}",
        targets::shown(&command.cargo)
    ));
    let Some(built) = targets::build(command, &setup.log)? else {
        progress.line(&format!(
            "the build failed: nothing can be walked (cargo's output is in {})",
            setup.paths.log.display()
        ));
        return Ok(None);
    };
    let mut binaries = built.binaries;
    let mut doctests = built.doctests;
    if doctests && !interrupted() {
        let started = Instant::now();
        let dir = doctest_dir(setup);
        progress.line("doctests: compiling and running them once (cargo test --doc)");
        match doctests::compile(command, &built.doc_packages, &dir, &setup.log)? {
            doctests::Compiled::Persisted(found) => {
                progress.line(&format!(
                    "doctests: {} compiled once in {} s; each is walked as a test",
                    found.len(),
                    seconds(started.elapsed().as_millis() as u64)
                ));
                binaries.extend(found);
                doctests = false;
            }
            doctests::Compiled::Unavailable(why) => progress.line(&format!(
                "doctests: walked after the tests as a whole command, one site per run \
                 (rustdoc compiles them again in every run): {why}"
            )),
        }
    }
    if let Some(library) = args.preload.library_for_tests()? {
        for binary in &mut binaries {
            binary.preload = targets_preload(&library, binary);
        }
    }
    let state = setup.load()?;
    retry_strays(setup, &state)?;
    let (mut tests, done) = to_walk(setup, &binaries, command, &state)?;
    progress.line(&format!(
        "{} test binaries: {}; {} tests to walk{}",
        binaries.iter().filter(|b| !b.is_doctest()).count(),
        targets::describe(&binaries),
        tests.len(),
        setup
            .shard
            .as_ref()
            .map_or(String::new(), |s| format!(" in shard {s}"))
    ));
    if !args.no_baseline && !tests.is_empty() {
        tests = baseline(
            setup,
            &binaries,
            tests,
            command,
            progress,
            &state,
            jobs(args),
        )?;
    }
    Ok(Some(Prepared {
        binaries,
        tests,
        done,
        doctests,
    }))
}

/// The tests of this shard the state file has not seen to their end, and
/// those it has.
fn to_walk(
    setup: &Setup,
    binaries: &[Binary],
    command: &CargoTest,
    state: &crate::state::State,
) -> Result<(Vec<Walked>, Vec<Walked>), Failure> {
    let (mut tests, mut done) = (Vec::new(), Vec::new());
    for (index, binary) in binaries.iter().enumerate() {
        let names = targets::list(binary, command).map_err(Failure::bad_input)?;
        for name in names {
            let test = binary.test(&name);
            if !targets::in_shard(&test, setup.shard.as_deref())
                || state.left_out.iter().any(|(t, _)| *t == test)
            {
                continue;
            }
            let walked = Walked {
                binary: index,
                after: Vec::new(),
                test,
            };
            if state.tested.contains(&walked.test) {
                done.push(walked);
            } else {
                tests.push(walked);
            }
        }
    }
    Ok((tests, done))
}

fn targets_preload(library: &std::path::Path, binary: &Binary) -> Option<OsString> {
    super::preload::binary_preload(library, &binary.executable)
}

/// Sites written outside any run: failed again.
fn retry_strays(setup: &Setup, state: &crate::state::State) -> Result<(), Failure> {
    let mut asked = Vec::new();
    for record in state.stray() {
        if !asked.contains(&record.id) {
            asked.push(record.id);
            setup.record(&Line::Retry { id: record.id }.to_string())?;
        }
    }
    Ok(())
}

/// Runs every binary with tests to walk once without injection; the tests
/// of a binary that fails run alone, and those that fail or time out are
/// left out (a `left-out` line, said once). Returns the tests to walk.
fn baseline(
    setup: &Setup,
    binaries: &[Binary],
    tests: Vec<Walked>,
    command: &CargoTest,
    progress: &Progress,
    state: &crate::state::State,
    jobs: usize,
) -> Result<Vec<Walked>, Failure> {
    progress.baseline_started();
    let started = Instant::now();
    let mut pool = Pool::new(setup, jobs);
    let mut used: Vec<usize> = tests.iter().map(|t| t.binary).collect();
    used.dedup();
    let mut whole = Vec::new();
    for &index in &used {
        let mut args = command.harness.clone();
        args.push("-q".into());
        whole.push((index, binaries[index].command(&args)));
    }
    let failing: Vec<usize> = pool
        .run_all(whole)?
        .into_iter()
        .filter(|(index, ended)| !ended.passed_for(&binaries[*index], &setup.handled_exit))
        .map(|(index, _)| index)
        .collect();
    let alone = tests
        .iter()
        .enumerate()
        .filter(|(_, t)| failing.contains(&t.binary))
        .map(|(i, t)| {
            let args = targets::run_alone(&t.test.name, command);
            (i, binaries[t.binary].command(&args))
        })
        .collect();
    let mut bad: Vec<(usize, String)> = Vec::new();
    for (i, ended) in pool.run_all(alone)? {
        if !ended.passed_for(&binaries[tests[i].binary], &setup.handled_exit) {
            bad.push((i, ended.describe(setup.timeout)));
        }
    }
    let elapsed = started.elapsed().as_millis() as u64;
    let status = match bad.len() {
        0 => "exit 0".to_owned(),
        n => format!("{n} tests fail alone"),
    };
    setup.record(
        &Line::Baseline {
            ms: elapsed,
            status: status.as_str().into(),
        }
        .to_string(),
    )?;
    progress.line(&format!(
        "baseline: {} s, every test binary once without injection ({status})",
        seconds(elapsed)
    ));
    leave_out(setup, tests, bad, progress, state)
}

/// Records and says the tests that fail without injection; returns the
/// others.
fn leave_out(
    setup: &Setup,
    tests: Vec<Walked>,
    bad: Vec<(usize, String)>,
    progress: &Progress,
    state: &crate::state::State,
) -> Result<Vec<Walked>, Failure> {
    let mut kept = Vec::new();
    for (i, walked) in tests.into_iter().enumerate() {
        let Some((_, detail)) = bad.iter().find(|(b, _)| *b == i) else {
            kept.push(walked);
            continue;
        };
        if !state.left_out.iter().any(|(t, _)| *t == walked.test) {
            setup.record(
                &Line::LeftOut {
                    test: walked.test.line_name(),
                    detail: detail.into(),
                }
                .to_string(),
            )?;
        }
        progress.line(&format!(
            "{} fails without injection ({detail}): left out of the walk",
            walked.test.display()
        ));
    }
    Ok(kept)
}

/// The doctests: the `runs` engine on `cargo test --doc ARGS`. Returns the
/// exit code to end with if their baseline stopped them.
fn walk_doctests(
    args: &SitesArgs,
    setup: &Setup,
    command: &CargoTest,
    progress: &mut Progress,
) -> Result<Option<i32>, Failure> {
    let argv = targets::doctest_command(command);
    progress.line(&format!(
        "doctests: walked as a whole command, one site per run: {}",
        targets::shown(&argv)
    ));
    let preload = args.preload.environment(&argv)?;
    let walker = setup.walker(&argv, preload)?;
    if !args.no_baseline
        && let Some(code) = sites::baseline(&walker, progress, 1)?
    {
        // Said by the baseline; the tests' walk stands.
        return Ok(Some(code));
    }
    // One copy: copies of `cargo test --doc` wait for each other on
    // cargo's lock of the build directory.
    sites::walk_runs(&walker, &setup.spec(true), 1, args.max_runs, progress)?;
    Ok(None)
}

/// Where rustdoc keeps the doctests' executables: beside the state file,
/// kept after the walk (the crash reports' replay lines in the log run
/// them), replaced by the next walk.
fn doctest_dir(setup: &Setup) -> std::path::PathBuf {
    let mut dir = setup.paths.state.clone().into_os_string();
    dir.push(".doctests");
    dir.into()
}

/// `--jobs`, or its default.
fn jobs(args: &SitesArgs) -> usize {
    args.jobs.map_or_else(default_jobs, |j| j as usize)
}

/// `--jobs` when not given: the number of CPUs, fewer if the memory
/// available leaves less than [`MEMORY_PER_JOB`] to each.
fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    match available {
        Some(bytes) => cpus.min((bytes / MEMORY_PER_JOB).max(1) as usize),
        None => cpus,
    }
}
