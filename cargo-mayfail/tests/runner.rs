//! The `mayfail` runner: walking every allocation site of a real test suite
//! (the fixture crate in `tests/fixtures/sites_fixture`, one site per
//! outcome), resuming, `--jobs`, Ctrl-C, `mayfail run`, the command line
//! (help, version, cargo's subcommand convention), exit codes and bad input.
//!
//! The fixture is built once, with `cargo test --no-run --offline`, into
//! the workspace's `target/tmp/sites-fixture` (it reuses the registry cache
//! and, after the first time, its own build). The release fixture
//! (`tests/fixtures/release_fixture`) is built there too, in both profiles.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const RUNNER: &str = env!("CARGO_BIN_EXE_mayfail");
const CARGO_RUNNER: &str = env!("CARGO_BIN_EXE_cargo-mayfail");

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sites_fixture")
}

fn fixture_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("sites-fixture")
}

/// `cargo` in `dir`, with the fixtures' target dir, without the variables
/// of the cargo that runs these tests.
fn cargo_in(dir: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", fixture_target())
        .env_remove("MAYFAIL_INJECT")
        .env_remove("MAYFAIL_RETRIES")
        .env_remove("RUSTFLAGS");
    command
}

/// Builds the unit tests of the crate in `dir` (`extra`: more arguments
/// to `cargo test`) and returns the test binary cargo names for `name`.
fn build_test_binary(dir: &Path, extra: &[&str], name: &str) -> PathBuf {
    let output = cargo_in(dir)
        .args(["test", "--offline", "--no-run", "--message-format=json"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "{} builds", dir.display());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("\"executable\":\"") && l.contains(name))
        .expect("cargo names the fixture's test binary");
    let start = line.find("\"executable\":\"").unwrap() + "\"executable\":\"".len();
    let end = start + line[start..].find('"').unwrap();
    PathBuf::from(&line[start..end])
}

/// The fixture's test binary, built once for all tests.
fn fixture_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_test_binary(&fixture_dir(), &[], "sites_fixture"))
}

/// A fresh directory for one test's state files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("runner")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The runner in the fixture's directory. The fixture declares `MayFail`:
/// the preload library is not needed, so none is named that exists (a
/// cargo walk says so in one line and goes on) and none is built for these
/// tests (`tests/preload.rs` tests the library and its build).
fn runner() -> Command {
    let mut command = Command::new(RUNNER);
    command
        .current_dir(fixture_dir())
        .env("CARGO_TARGET_DIR", fixture_target())
        .env(
            "MAYFAIL_PRELOAD_LIB",
            fixture_target().join("no-preload-library.so"),
        )
        .env_remove("MAYFAIL_INJECT")
        .env_remove("MAYFAIL_RETRIES");
    command
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn ran(output: Output) -> Ran {
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn run(args: &[&str]) -> Ran {
    ran(runner().args(args).output().expect("the runner starts"))
}

/// One site of the JSON report, with the fields the tests look at.
#[derive(Debug)]
struct Site {
    stack: String,
    outcome: String,
    function: String,
    seen: u64,
    replay: String,
}

/// The JSON report written by the runner, parsed.
fn report_of(json: &str) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(json).expect("the report is JSON");
    assert_eq!(report["schema_version"], 2, "{json}");
    report
}

/// The sites of a JSON report written by the runner.
fn sites_of(json: &str) -> Vec<Site> {
    let text = |value: &serde_json::Value| value.as_str().expect("a string").to_owned();
    report_of(json)["sites"]
        .as_array()
        .expect("a list of sites")
        .iter()
        .map(|site| Site {
            stack: text(&site["stack"]),
            outcome: text(&site["outcome"]),
            function: text(&site["frames"][0]["function"]),
            seen: site["seen"].as_u64().expect("seen"),
            replay: text(&site["replay"]),
        })
        .collect()
}

/// The fixture's sites and the outcome each must have, worst first.
const EXPECTED: [(&str, &str); 5] = [
    ("crashed", "sites_fixture::write_unchecked"),
    ("aborted", "sites_fixture::push_one"),
    ("failed", "sites_fixture::reserve_or_panic"),
    ("handled", "sites_fixture::fill_checked"),
    ("handled", "sites_fixture::reserve_checked"),
];

fn assert_fixture_sites(sites: &[Site], context: &str) {
    let mut found: Vec<(&str, &str)> = sites
        .iter()
        .map(|s| (s.outcome.as_str(), s.function.as_str()))
        .collect();
    found.sort();
    let mut expected = EXPECTED.to_vec();
    expected.sort();
    assert_eq!(found, expected, "{context}");
    for site in sites {
        assert_eq!(
            site.seen, 1,
            "each site fails in one process only: {site:?}"
        );
    }
}

/// A program under `MayFail` that reports to the walk (the test harness's
/// runtime stacks) and has no site: the fixture's tests, none selected.
fn quiet_program() -> Vec<String> {
    vec![
        fixture_binary().to_str().unwrap().to_owned(),
        "--exact".to_owned(),
        "no_such_test".to_owned(),
    ]
}

fn runs_in(state: &Path) -> usize {
    std::fs::read_to_string(state)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("run\t"))
        .count()
}

// ---------------------------------------------------------------------------
// Walking the sites.

#[test]
fn every_site_of_a_cargo_test_suite_is_found_with_its_outcome_and_replays() {
    fixture_binary();
    for engine in ["tests", "runs"] {
        walk_the_fixture_with(engine);
    }
}

/// Walks the fixture's `cargo test` with `engine`: every site, with its
/// outcome, replayed.
fn walk_the_fixture_with(engine: &str) {
    let dir = scratch(&format!("cargo_test_{engine}"));
    let state = dir.join("sites.state");
    let started = Instant::now();
    let out = run(&[
        "sites",
        "--engine",
        engine,
        "--state",
        state.to_str().unwrap(),
        "--show",
        "all",
        // The same sites with either engine: no error paths (the `runs`
        // engine walks none).
        "--depth",
        "0",
        "--",
        "cargo",
        "test",
        "--offline",
        "-q",
    ]);
    println!("{}{}({:.1?})", out.stderr, out.stdout, started.elapsed());
    assert_eq!(out.code, Some(1), "not every site was handled: exit 1");
    let stopped = if engine == "tests" {
        "every test ran to its end with no new site"
    } else {
        "a run found no new site"
    };
    assert!(
        out.stdout.contains(&format!("stopped: {stopped}")),
        "{}",
        out.stdout
    );

    // Each site of the fixture, with the right outcome, failed once.
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    let sites = sites_of(&json);
    assert_fixture_sites(&sites, &json);
    // Worst first.
    let order: Vec<&str> = sites.iter().map(|s| s.outcome.as_str()).collect();
    assert_eq!(
        order,
        ["crashed", "aborted", "failed", "handled", "handled"]
    );
    // `runs`: one run per site, plus one or two that find nothing new:
    // std's own start-up stacks are not sites. `tests`: one run, a process
    // per site and one more per test.
    let runs = runs_in(&state);
    let text = std::fs::read_to_string(&state).unwrap();
    if engine == "tests" {
        assert_eq!(runs, 1, "{text}");
        // A process per site and one more per test; copies of a test
        // under way when cores are idle may add a few.
        let processes = text.matches("\ntest\t").count();
        assert!((10..=16).contains(&processes), "{processes}: {text}");
        assert_eq!(text.matches("\ntested\t").count(), 5, "{text}");
    } else {
        assert!((6..=8).contains(&runs), "{runs} runs");
    }
    let report = report_of(&json);
    assert_eq!(report["stopped"], stopped);
    assert_eq!(report["counts"]["handled"], 2);
    assert_eq!(report["counts"]["crashed"], 1);
    // cargo's own failures are its test binaries' sites: none unattributed.
    assert_eq!(report["unattributed"], serde_json::json!([]), "{json}");

    // The table names function and file:line of the first user frames.
    assert!(
        out.stdout.contains(&format!(
            "{:<20} {:>4}  sites_fixture::write_unchecked (src/lib.rs:",
            "crashed", 1
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("<- sites_fixture::tests::aborts_in_push (src/lib.rs:")
    );

    // The HTML page holds every site and loads nothing from elsewhere.
    let html = std::fs::read_to_string(dir.join("sites.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for site in &sites {
        assert!(html.contains(&format!("id=\"stack-{}\"", site.stack)));
        assert!(html.contains(&site.function));
    }
    assert!(!html.contains(" src=") && !html.contains("http"));

    // The replay commands fail exactly that site again.
    for (outcome, signal) in [("aborted", libc::SIGABRT), ("crashed", libc::SIGSEGV)] {
        let site = sites.iter().find(|s| s.outcome == outcome).unwrap();
        let status = Command::new("sh")
            .args(["-c", &site.replay])
            .current_dir(fixture_dir())
            .env("CARGO_TARGET_DIR", fixture_target())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        // cargo reports the test binary's death as a failure.
        assert!(!status.success(), "{}: {status}", site.replay);
        let direct = Command::new(fixture_binary())
            .env("MAYFAIL_INJECT", format!("stack={}", site.stack))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(direct.signal(), Some(signal), "{outcome}: {direct}");
    }
}

#[test]
fn a_state_file_resumes_where_it_stopped_and_known_sites_are_not_failed_again() {
    let binary = fixture_binary().to_str().unwrap();
    let dir = scratch("resume");
    let state = dir.join("sites.state");
    let state = state.to_str().unwrap();
    let first = run(&[
        "sites",
        "--state",
        state,
        "--max-runs",
        "2",
        "--no-baseline",
        "--",
        binary,
    ]);
    // Stopped by --max-runs with sites left to find: never all handled,
    // whatever the two sites found (an infallible abort, then a crash or a
    // failed test: the fixture's tests run in any order).
    assert_eq!(first.code, Some(1), "{}", first.stderr);
    assert!(
        first.stdout.contains("stopped: not finished")
            && first.stderr.contains("mayfail: --max-runs 2 reached"),
        "{}",
        first.stdout
    );
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    assert_eq!(sites_of(&json).len(), 2, "{json}");

    let second = run(&["sites", "--state", state, "--no-baseline", "--", binary]);
    assert!(
        second.stderr.contains("mayfail: run 3:"),
        "{}",
        second.stderr
    );
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    assert_fixture_sites(&sites_of(&json), &json);
    assert!(runs_in(Path::new(state)) <= 8);

    // `report` renders the same state again.
    let report = run(&["report", "--state", state]);
    assert_eq!(report.code, Some(0), "{}", report.stderr);
    assert!(report.stdout.contains("5 sites in"), "{}", report.stdout);
}

#[test]
fn jobs_run_copies_that_fail_different_sites() {
    let binary = fixture_binary().to_str().unwrap();
    let dir = scratch("jobs");
    let state = dir.join("sites.state");
    // One test thread: the order of the sites, and so which copy fails
    // which, is the same in every copy.
    let out = run(&[
        "sites",
        "--state",
        state.to_str().unwrap(),
        "--jobs",
        "3",
        "--no-baseline",
        "--",
        binary,
        "--test-threads=1",
    ]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    assert_fixture_sites(&sites_of(&json), &json);
    // 3 + 2 sites, then one or two runs that find nothing new.
    let runs = runs_in(&state);
    assert!(runs <= 4, "{runs} runs\n{}", out.stderr);
}

#[test]
fn shards_walk_disjoint_sites_that_merge_into_the_whole_walk() {
    let binary = fixture_binary().to_str().unwrap();
    let dir = scratch("shards");
    let mut stacks: Vec<Vec<String>> = Vec::new();
    let mut states = Vec::new();
    for k in 1..=3 {
        let state = dir.join(format!("shard{k}.state"));
        let shard = format!("{k}/3");
        let out = run(&[
            "sites",
            "--state",
            state.to_str().unwrap(),
            "--shard",
            &shard,
            "--no-baseline",
            "--",
            binary,
            "--test-threads=1",
        ]);
        assert!(matches!(out.code, Some(0 | 1)), "{}", out.stderr);
        let json = std::fs::read_to_string(state.with_extension("json")).unwrap();
        stacks.push(sites_of(&json).into_iter().map(|s| s.stack).collect());
        states.push(state);
    }
    let all: Vec<&String> = stacks.iter().flatten().collect();
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "shards overlap: {stacks:?}");
    // Merged, the shards' reports are the whole walk's.
    let mut args = vec![
        "report".to_owned(),
        "--state".to_owned(),
        dir.join("merged.state").to_str().unwrap().to_owned(),
    ];
    args.extend(states.iter().map(|p| p.to_str().unwrap().to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("mayfail sites: 5 sites in "),
        "{}",
        out.stdout
    );
    let json = std::fs::read_to_string(dir.join("merged.json")).unwrap();
    assert_fixture_sites(&sites_of(&json), &json);
    // A shard that is not one is refused, naming the accepted form.
    let out = assert_refused(&["sites", "--shard", "4/3", "--", binary], "K/N");
    assert!(out.stderr.contains("4/3"), "{}", out.stderr);
}

#[test]
fn ctrl_c_forwards_the_interrupt_and_leaves_a_state_that_resumes() {
    let dir = scratch("interrupt");
    let state = dir.join("sites.state");
    // Sleeps until the marker exists.
    let marker = dir.join("awake");
    let command = [
        "sh",
        "-c",
        "test -e \"$0\" || sleep 30",
        marker.to_str().unwrap(),
    ];
    let child = runner()
        .args(["sites", "--no-baseline", "--state"])
        .arg(&state)
        .arg("--")
        .args(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("run\t1\t")) {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    // SAFETY: `id` is our child, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let out = ran(child.wait_with_output().unwrap());
    assert_eq!(out.code, Some(130), "{}", out.stderr);
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "sleep got the SIGINT"
    );
    assert!(
        out.stdout.contains("stopped: interrupted"),
        "{}",
        out.stdout
    );
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("end\t1\t"), "{text}");
    assert!(text.lines().all(|l| !l.is_empty()), "whole lines only");

    // Resumed: run 2, which finds nothing (`sh` reports to no walk: 6).
    std::fs::write(&marker, "").unwrap();
    let mut args = vec![
        "sites",
        "--no-baseline",
        "--state",
        state.to_str().unwrap(),
        "--",
    ];
    args.extend(command);
    let again = run(&args);
    assert_eq!(again.code, Some(6), "{}", again.stderr);
    assert!(
        again.stderr.contains("mayfail: run 2: 0 new sites"),
        "{}",
        again.stderr
    );
}

// ---------------------------------------------------------------------------
// mayfail run

#[test]
fn run_sets_the_variables_and_passes_the_exit_status_through() {
    let out = run(&[
        "run",
        "--retries",
        "3",
        "--inject",
        "times=2,probability=5",
        "--",
        "sh",
        "-c",
        "test \"$MAYFAIL_RETRIES\" = 3 && test \"$MAYFAIL_INJECT\" = times=2,probability=5",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(run(&["run", "--", "sh", "-c", "exit 7"]).code, Some(7));
    let killed = run(&["run", "--", "sh", "-c", "kill -ABRT $$"]);
    assert_eq!(killed.code, Some(128 + libc::SIGABRT));
}

// ---------------------------------------------------------------------------
// Bad input.

fn assert_refused(args: &[&str], says: &str) -> Ran {
    let out = run(args);
    assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{args:?}: one line and a usage hint:\n{}",
        out.stderr
    );
    assert!(lines[0].starts_with("mayfail: "), "{}", lines[0]);
    assert!(
        lines[0].contains(says),
        "{args:?}: {:?} lacks {says:?}",
        lines[0]
    );
    assert!(lines[1].starts_with("usage: mayfail"), "{}", lines[1]);
    out
}

#[test]
fn bad_input_gets_one_line_a_usage_hint_and_exit_code_2() {
    assert_refused(&[], "no subcommand");
    assert_refused(&["frobnicate"], "unknown subcommand \"frobnicate\"");
    assert_refused(
        &["sites", "--frobnicate", "--", "true"],
        "unknown option --frobnicate",
    );
    assert_refused(&["run", "true"], "missing `--` before the command \"true\"");
    assert_refused(&["run", "--retries", "3"], "missing `--`");
    assert_refused(&["sites", "--"], "no command after `--`");
    assert_refused(
        &["sites", "--max-runs", "0", "--", "true"],
        "--max-runs takes",
    );
    assert_refused(&["sites", "--jobs", "--", "true"], "--jobs needs a value");
    assert_refused(&["sites", "--jobs", "two", "--", "true"], "--jobs takes");
    assert_refused(
        &["run", "--retries", "-5", "--", "true"],
        "--retries takes -1",
    );
    assert_refused(
        &["run", "--inject", "probabilty=5", "--", "true"],
        "unknown key",
    );
    let dir = scratch("bad_input");
    let state = dir.join("sites.state");
    assert_refused(
        &["sites", "--state", dir.to_str().unwrap(), "--", "true"],
        "is a directory",
    );

    // A corrupt state file is refused and left exactly as it was.
    let corrupt = "mayfail-sites\t1\nsite\tnot-an-id\n";
    std::fs::write(&state, corrupt).unwrap();
    assert_refused(
        &["sites", "--state", state.to_str().unwrap(), "--", "true"],
        "is corrupt at line 2",
    );
    assert_refused(
        &["report", "--state", state.to_str().unwrap()],
        "is corrupt",
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), corrupt);
    std::fs::write(&state, "something else\n").unwrap();
    assert_refused(
        &["sites", "--state", state.to_str().unwrap(), "--", "true"],
        "does not start with the header",
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "something else\n");
}

#[test]
fn a_bad_state_path_is_bad_input_but_an_unwritable_report_is_an_io_error() {
    let dir = scratch("io_error");
    let state = dir.join("sites.state");
    let json = dir.join("no-such-dir/report.json");
    let out = run(&[
        "sites",
        "--no-baseline",
        "--state",
        state.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(3), "an I/O error exits 3: {}", out.stderr);
    let last = out.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("mayfail: cannot write ") && last.contains(json.to_str().unwrap()),
        "the failed write names its path: {last}"
    );
    assert!(!out.stderr.contains("usage:"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Release builds: the same call sites as in a debug build.

fn release_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release_fixture")
}

/// The line of the release fixture's `src/lib.rs` that holds `marker`.
fn release_fixture_line(marker: &str) -> usize {
    let source = std::fs::read_to_string(release_fixture_dir().join("src/lib.rs")).unwrap();
    let found: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(found.len(), 1, "{marker:?} is on one line");
    found[0]
}

/// A function's name without its module path, a closure as `{closure}`:
/// a build with `debug = "line-tables-only"` names functions that way
/// (`walked`, `{closure#0}` for `release_fixture::tests::walked` and
/// `release_fixture::tests::walked::{{closure}}`).
fn plain_name(function: &str) -> String {
    let last = function.rsplit("::").next().unwrap_or(function);
    if last.starts_with("{closure") || last == "{{closure}}" {
        "{closure}".to_owned()
    } else {
        last.to_owned()
    }
}

/// One call site as (outcome, [(plain function name, `file:line`)]).
type Frames = (String, Vec<(String, String)>);

/// The call sites of the release fixture's build in `profile`: those its
/// sweep prints and those `mayfail sites` finds in its `walked` test.
fn release_fixture_sites(release: bool) -> (Vec<Frames>, Vec<Frames>) {
    let extra: &[&str] = if release { &["--release"] } else { &[] };
    let binary = build_test_binary(&release_fixture_dir(), extra, "release_fixture");

    // The sweep: `site\t<worst>\t<f (file:line) <- g (file:line)>` lines.
    let out = Command::new(&binary)
        .args(["tests::swept", "--exact", "--nocapture"])
        .current_dir(release_fixture_dir())
        .env_remove("MAYFAIL_INJECT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let mut swept: Vec<Frames> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("site\t"))
        .map(|l| {
            let (worst, site) = l.split_once('\t').unwrap();
            let frames = site
                .split(" <- ")
                .map(|frame| {
                    let (name, at) = frame.split_once(" (").expect("a file:line");
                    (plain_name(name), at.trim_end_matches(')').to_owned())
                })
                .collect();
            (worst.to_owned(), frames)
        })
        .collect();
    swept.sort();

    // The runner, on the same binary, through the JSON report.
    let dir = scratch(if release {
        "release_walk"
    } else {
        "debug_walk"
    });
    let state = dir.join("sites.state");
    let binary = binary.to_str().unwrap();
    let walk = ran(Command::new(RUNNER)
        .current_dir(release_fixture_dir())
        .env_remove("MAYFAIL_INJECT")
        .args(["sites", "--no-baseline", "--state", state.to_str().unwrap()])
        .args(["--", binary, "tests::walked", "--exact"])
        .output()
        .unwrap());
    // An abort at an infallible allocation and a handled site: no bug.
    assert_eq!(walk.code, Some(0), "{}{}", walk.stderr, walk.stdout);
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    let text = |value: &serde_json::Value| value.as_str().expect("a string").to_owned();
    let here = release_fixture_dir();
    let mut walked: Vec<Frames> = report_of(&json)["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|site| {
            let frames = site["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let at = text(&f["location"]);
                    let at = Path::new(&at)
                        .strip_prefix(&here)
                        .map_or(at.clone(), |p| p.display().to_string());
                    (plain_name(&text(&f["function"])), at)
                })
                .collect();
            (text(&site["outcome"]), frames)
        })
        .collect();
    walked.sort();
    (swept, walked)
}

#[test]
fn a_release_build_with_line_tables_names_the_same_call_sites_as_a_debug_build() {
    let started = Instant::now();
    let (swept, walked) = release_fixture_sites(true);
    let reserve = format!("src/lib.rs:{}", release_fixture_line("// point: reserve"));
    let boxed = format!("src/lib.rs:{}", release_fixture_line("// point: box"));
    let sweep_call = format!(
        "src/lib.rs:{}",
        release_fixture_line("mayfail::sweep(|| two_points")
    );
    let test_body = format!("src/lib.rs:{}", release_fixture_line("let _ = two_points"));
    let frame = |name: &str, at: &str| (name.to_owned(), at.to_owned());

    // Two lines of one function are two sites, each named by that function
    // and line, then by the closure the sweep ran: not by the sweep's own
    // runner, nor by mayfail's or std's frames inlined into it.
    assert_eq!(
        swept,
        [
            (
                "aborted".to_owned(),
                vec![frame("two_points", &boxed), frame("{closure}", &sweep_call)]
            ),
            (
                "handled".to_owned(),
                vec![
                    frame("two_points", &reserve),
                    frame("{closure}", &sweep_call)
                ]
            ),
        ]
    );
    // The runner: the same two sites, down to the test that called them.
    let test_fn = frame("walked", &test_body);
    assert_eq!(walked.len(), 2, "{walked:?}");
    assert_eq!(walked[0].0, "aborted");
    assert_eq!(
        walked[0].1[..2],
        [frame("two_points", &boxed), test_fn.clone()]
    );
    assert_eq!(walked[1].0, "handled");
    assert_eq!(walked[1].1[..2], [frame("two_points", &reserve), test_fn]);

    // The debug build names the same frames.
    assert_eq!(release_fixture_sites(false), (swept, walked));
    println!("({:.1?})", started.elapsed());
}

// ---------------------------------------------------------------------------
// The command line: help, version, cargo's convention, exit codes.

#[test]
fn every_subcommand_has_help_that_exits_0_and_shows_its_options() {
    for (subcommand, options) in [
        (
            "sites",
            &[
                "--state",
                "--max-runs",
                "--jobs",
                "--timeout",
                "--inject",
                "--all-stacks",
                "--no-baseline",
                "--json",
                "--html",
            ][..],
        ),
        ("run", &["--retries", "--inject"][..]),
        ("report", &["--state", "--json", "--html"][..]),
    ] {
        let out = run(&[subcommand, "--help"]);
        assert_eq!(out.code, Some(0), "{subcommand} --help: {}", out.stderr);
        assert!(
            out.stdout.contains(&format!("Usage: mayfail {subcommand}")),
            "{}",
            out.stdout
        );
        for option in options {
            assert!(
                out.stdout.contains(option),
                "{subcommand} --help lacks {option}:\n{}",
                out.stdout
            );
        }
    }
    // The report's help describes the JSON schema.
    let report = run(&["report", "--help"]);
    assert!(
        report.stdout.contains("schema_version"),
        "{}",
        report.stdout
    );
}

#[test]
fn the_top_level_help_lists_the_exit_codes() {
    let out = run(&["--help"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for line in [
        "0    no bug site outside --baseline",
        "1    bug sites found that --baseline does not list",
        "2    bad input",
        "3    I/O error",
        "127    the command was not found",
        "130    interrupted",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in:\n{}", out.stdout);
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = run(&["--version"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("mayfail {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `cargo mayfail ARGS` runs `cargo-mayfail mayfail ARGS`.
fn cargo_subcommand(args: &[&str]) -> Ran {
    let output = Command::new(CARGO_RUNNER)
        .args(args)
        .env_remove("MAYFAIL_INJECT")
        .output()
        .expect("cargo-mayfail starts");
    ran(output)
}

#[test]
fn as_a_cargo_subcommand_the_name_cargo_passes_first_is_skipped() {
    let out = cargo_subcommand(&["mayfail", "--version"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("mayfail {}", env!("CARGO_PKG_VERSION"))
    );
    let out = cargo_subcommand(&["mayfail", "run", "--", "sh", "-c", "exit 5"]);
    assert_eq!(out.code, Some(5), "{}", out.stderr);
    let help = cargo_subcommand(&["mayfail", "sites", "--help"]);
    assert_eq!(help.code, Some(0), "{}", help.stderr);
    assert!(
        help.stdout.contains("Usage: cargo mayfail sites"),
        "{}",
        help.stdout
    );
    // Run directly, without cargo's extra word, it works as well.
    assert_eq!(cargo_subcommand(&["--version"]).code, Some(0));
}

#[test]
fn a_missing_command_exits_127_with_one_line_naming_it() {
    let dir = scratch("not_found");
    let state = dir.join("sites.state");
    for args in [
        &["run", "--", "/nonexistent/mayfail-command"][..],
        &[
            "sites",
            "--state",
            state.to_str().unwrap(),
            "--",
            "/nonexistent/mayfail-command",
        ][..],
    ] {
        let out = run(args);
        assert_eq!(out.code, Some(127), "{args:?}: {}", out.stderr);
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.starts_with("mayfail: run 0 (baseline"))
            .collect();
        assert_eq!(
            lines,
            ["mayfail: command not found: /nonexistent/mayfail-command"],
            "{args:?}"
        );
    }
}

#[test]
fn an_unknown_option_exits_2_and_names_it() {
    for args in [
        &["--frobnicate"][..],
        &["run", "--frobnicate", "--", "true"][..],
        &["report", "--frobnicate"][..],
    ] {
        let out = run(args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("mayfail: unknown option --frobnicate"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_command_that_fails_without_injection_exits_4_and_walks_nothing() {
    let dir = scratch("baseline_fails");
    let state = dir.join("sites.state");
    let out = run(&["sites", "--state", state.to_str().unwrap(), "--", "false"]);
    assert_eq!(out.code, Some(4), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("fails without any injected failure (exit 1)"),
        "{}",
        out.stderr
    );
    assert_eq!(runs_in(&state), 0, "no run under injection");
}

#[test]
fn a_walk_with_no_site_exits_0_and_its_json_report_has_a_schema_version() {
    let dir = scratch("no_site");
    let state = dir.join("sites.state");
    let program = quiet_program();
    let mut args = vec![
        "sites",
        "--no-baseline",
        "--state",
        state.to_str().unwrap(),
        "--",
    ];
    args.extend(program.iter().map(String::as_str));
    let out = run(&args);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    let report = report_of(&json);
    assert_eq!(report["sites"].as_array().map(Vec::len), Some(0), "{json}");
    assert!(report["runs"] == 1 || report["runs"] == 2, "{json}");
    assert_eq!(report["command"], program.join(" "));
    assert_eq!(report["stopped"], "a run found no new site");
    for outcome in ["crashed", "aborted", "hung", "failed", "unknown", "handled"] {
        assert_eq!(report["counts"][outcome], 0, "{json}");
    }
}

#[test]
fn progress_on_a_stderr_that_is_not_a_terminal_is_plain_lines() {
    let dir = scratch("plain_progress");
    let state = dir.join("sites.state");
    // `true` twice for the baseline, then run 1 finds nothing, and no
    // process reported to the walk.
    let out = run(&[
        "sites",
        "--no-preload",
        "--state",
        state.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(6), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stderr);
    assert!(
        lines[3].starts_with("mayfail: no process of true reported to the walk in 1 run"),
        "{}",
        lines[3]
    );
    assert!(lines[0].starts_with("mayfail: run 0 (baseline, no injection, twice): true"));
    assert!(lines[1].starts_with("mayfail: baseline: "), "{}", lines[1]);
    assert!(
        lines[2].starts_with("mayfail: run 1: 0 new sites; 0 sites so far (none); "),
        "{}",
        lines[2]
    );
    assert!(
        !out.stderr.contains(['\r', '\x1b']),
        "no cursor movement or colours: {:?}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// Hardening: what an adversarial user or a misbehaving command can do.

/// Runs the runner with `args`, killing it if it takes longer than `secs`
/// (then `code` is `None`).
fn run_bounded(args: &[&std::ffi::OsStr], secs: u64) -> Ran {
    let mut child = runner()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the runner starts");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = ran(child.wait_with_output().unwrap());
            return Ran { code: None, ..out };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ran(child.wait_with_output().unwrap())
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(Into::into).collect()
}

fn bounded(args: &[std::ffi::OsString], secs: u64) -> Ran {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_bounded(&args, secs)
}

/// The one line a refusal prints before the usage hint.
fn first_line(out: &Ran) -> &str {
    out.stderr.lines().next().unwrap_or_default()
}

#[test]
fn a_state_path_that_is_not_a_regular_file_is_refused_and_nothing_runs() {
    let dir = scratch("not_regular");
    let marker = dir.join("ran");
    let fifo = dir.join("fifo.state");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let to_null = dir.join("null.state");
    std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
    let dangling = dir.join("dangling.state");
    std::os::unix::fs::symlink(dir.join("nowhere/x"), &dangling).unwrap();
    for (state, kind) in [
        (&fifo, "a FIFO"),
        (&to_null, "a character device"),
        (&dangling, "a symbolic link to nothing"),
    ] {
        let state = state.to_str().unwrap();
        let walk = bounded(
            &os(&[
                "sites",
                "--no-baseline",
                "--state",
                state,
                "--",
                "touch",
                marker.to_str().unwrap(),
            ]),
            20,
        );
        assert_eq!(walk.code, Some(2), "{state}: {}", walk.stderr);
        let line = first_line(&walk);
        assert!(line.contains(state) && line.contains(kind), "{line}");
        assert!(!marker.exists(), "the command ran with --state {state}");
        let report = bounded(&os(&["report", "--state", state]), 20);
        assert_eq!(report.code, Some(2), "{state}: {}", report.stderr);
        assert!(first_line(&report).contains(kind), "{}", report.stderr);
    }

    // A symbolic link to a regular file is followed.
    let target = dir.join("target.state");
    let link = dir.join("link.state");
    std::fs::write(&target, "").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let walk = bounded(
        &os(&[
            "sites",
            "--no-baseline",
            "--state",
            link.to_str().unwrap(),
            "--",
            "true",
        ]),
        20,
    );
    assert_eq!(
        walk.code,
        Some(6),
        "nothing reported, not refused: {}",
        walk.stderr
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .starts_with("mayfail-sites\t1\nrun\t1\t")
    );
}

#[test]
fn numbers_at_the_end_of_their_range_never_panic() {
    let dir = scratch("overflow");
    let state = dir.join("sites.state");
    let state_arg = state.to_str().unwrap();
    let max = u64::MAX.to_string();
    let out = bounded(
        &os(&[
            "sites",
            "--no-baseline",
            "--state",
            state_arg,
            "--max-runs",
            &max,
            "--timeout",
            &max,
            "--",
            "true",
        ]),
        20,
    );
    assert_eq!(
        out.code,
        Some(6),
        "`true` reports to no walk: {}",
        out.stderr
    );
    let out = bounded(
        &os(&[
            "sites",
            "--no-baseline",
            "--state",
            state_arg,
            "--jobs",
            &max,
            "--",
            "true",
        ]),
        20,
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(first_line(&out).contains("--jobs takes"), "{}", out.stderr);

    // A run numbered u64::MAX leaves no number for the next run; its time
    // and another run's overflow a sum.
    std::fs::write(
        &state,
        format!("mayfail-sites\t1\nrun\t1\t1\t0\ttrue\nend\t1\t{max}\tdone\nrun\t{max}\t1\t0\ttrue\nend\t{max}\t{max}\tdone\n"),
    )
    .unwrap();
    let out = bounded(
        &os(&["sites", "--no-baseline", "--state", state_arg, "--", "true"]),
        20,
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        first_line(&out).contains("no run number is left"),
        "{}",
        out.stderr
    );
    let out = bounded(&os(&["report", "--state", state_arg]), 20);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// Makes `path` unwritable even for root (an immutable file), or says why
/// not; `false`: the test cannot run here.
fn make_unwritable(path: &Path, writable: bool) -> bool {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        let mode = if writable { 0o644 } else { 0o444 };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        return true;
    }
    let flag = if writable { "-i" } else { "+i" };
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_state_file_that_cannot_be_written_is_refused_before_anything_runs() {
    let dir = scratch("read_only");
    let state = dir.join("sites.state");
    let marker = dir.join("ran");
    std::fs::write(&state, "mayfail-sites\t1\n").unwrap();
    if !make_unwritable(&state, false) {
        println!("skipped: cannot make a file unwritable here");
        return;
    }
    let out = bounded(
        &os(&[
            "sites",
            "--state",
            state.to_str().unwrap(),
            "--",
            "touch",
            marker.to_str().unwrap(),
        ]),
        20,
    );
    make_unwritable(&state, true);
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let line = first_line(&out);
    assert!(
        line.starts_with("mayfail: cannot write the state file ")
            && line.contains(state.to_str().unwrap()),
        "{line}"
    );
    assert!(
        !marker.exists(),
        "the command ran before the state file was checked"
    );
}

/// A command that starts a daemon in a session of its own (`setsid`),
/// which writes `late` to `marker` and a site line to `state` after
/// `delay` seconds, then sleeps `life` seconds itself.
fn daemon_command(
    dir: &Path,
    marker: &Path,
    state: &Path,
    delay: &str,
    life: &str,
) -> Vec<std::ffi::OsString> {
    let script = dir.join("daemon.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         setsid sh -c 'sleep \"$3\"; echo late > \"$1\"; \
         printf \"site\\t00000000000000ab\\t%s\\talloc of 8 bytes (align 8)\\tmain\\tdaemon\\tlate (daemon.sh:1)\\tdaemon+0x1\\n\" $$ >> \"$2\"' \
         daemon \"$1\" \"$2\" \"$3\" </dev/null >/dev/null 2>&1 &\n\
         exec sleep \"$4\"\n",
    )
    .unwrap();
    os(&[
        "sh",
        script.to_str().unwrap(),
        marker.to_str().unwrap(),
        state.to_str().unwrap(),
        delay,
        life,
    ])
}

#[test]
fn a_daemon_that_escapes_with_setsid_is_killed_when_its_run_ends() {
    for (name, timeout, life) in [("daemon_exit", "600", "0"), ("daemon_timeout", "1", "30")] {
        let dir = scratch(name);
        let state = dir.join("sites.state");
        let marker = dir.join("late");
        let mut args = os(&[
            "sites",
            "--no-baseline",
            "--timeout",
            timeout,
            "--state",
            state.to_str().unwrap(),
            "--",
        ]);
        args.extend(daemon_command(&dir, &marker, &state, "1.5", life));
        let started = Instant::now();
        let out = bounded(&args, 20);
        assert!(
            out.code.is_some(),
            "{name}: the runner hung: {}",
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(2500).saturating_sub(started.elapsed()));
        assert!(!marker.exists(), "{name}: the daemon outlived its run");
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(!text.contains("late (daemon.sh:1)"), "{name}: {text}");
    }
}

#[test]
fn site_lines_written_after_a_run_ended_belong_to_no_run_and_are_failed_again() {
    let dir = scratch("late_lines");
    let state = dir.join("sites.state");
    let state_arg = state.to_str().unwrap();
    std::fs::write(
        &state,
        "mayfail-sites\t1\nrun\t1\t1\t0\ttrue\nend\t1\t5\tdone\n\
         site\t00000000000000ab\t99\talloc of 8 bytes (align 8)\tmain\tprog\tlate (a.rs:1)\tprog+0x1\n",
    )
    .unwrap();
    let report = bounded(&os(&["report", "--state", state_arg]), 20);
    assert_eq!(report.code, Some(0), "{}", report.stderr);
    assert!(
        report
            .stdout
            .starts_with("mayfail sites: 0 sites in 1 runs"),
        "{}",
        report.stdout
    );
    let walk = bounded(
        &os(&["sites", "--no-baseline", "--state", state_arg, "--", "true"]),
        20,
    );
    assert_eq!(walk.code, Some(0), "{}", walk.stderr);
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        text.contains("retry\t00000000000000ab\n"),
        "failed again in a later run:\n{text}"
    );
}

#[test]
fn a_second_walk_on_a_state_file_in_use_is_refused_with_exit_5() {
    let dir = scratch("locked");
    let state = dir.join("sites.state");
    let marker = dir.join("ran");
    let first = runner()
        .args(["sites", "--no-baseline", "--timeout", "20", "--state"])
        .arg(&state)
        .args(["--", "sleep", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("run\t1\t")) {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let state_arg = state.to_str().unwrap();
    let second = bounded(
        &os(&[
            "sites",
            "--no-baseline",
            "--state",
            state_arg,
            "--",
            "touch",
            marker.to_str().unwrap(),
        ]),
        10,
    );
    let report = bounded(&os(&["report", "--state", state_arg]), 10);
    // SAFETY: our child, not yet reaped.
    unsafe { libc::kill(first.id() as libc::pid_t, libc::SIGINT) };
    let holder = first.id();
    let first = ran(first.wait_with_output().unwrap());
    assert_eq!(first.code, Some(130), "{}", first.stderr);
    for out in [&second, &report] {
        assert_eq!(out.code, Some(5), "{}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        let line = first_line(out);
        assert!(
            line.contains(state_arg) && line.contains(&format!("pid {holder}")),
            "{line}"
        );
    }
    assert!(!marker.exists(), "the second walk ran its command");
}

#[test]
fn sites_and_report_agree_on_a_resumed_walk_whose_time_is_every_run_summed() {
    let dir = scratch("resumed_summary");
    let state = dir.join("sites.state");
    let state_arg = state.to_str().unwrap();
    std::fs::write(
        &state,
        "mayfail-sites\t1\nrun\t1\t1\t0\ttrue\nend\t1\t5000\tdone\n",
    )
    .unwrap();
    let walk = bounded(
        &os(&["sites", "--no-baseline", "--state", state_arg, "--", "true"]),
        20,
    );
    assert_eq!(
        walk.code,
        Some(6),
        "`true` reports to no walk: {}",
        walk.stderr
    );
    let from_sites = report_of(&std::fs::read_to_string(dir.join("sites.json")).unwrap());
    let report = bounded(&os(&["report", "--state", state_arg]), 20);
    assert_eq!(report.code, Some(0), "{}", report.stderr);
    let from_report = report_of(&std::fs::read_to_string(dir.join("sites.json")).unwrap());
    assert_eq!(from_sites, from_report);
    let summed: u64 = std::fs::read_to_string(&state)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("end\t"))
        .map(|l| l.split('\t').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(from_report["elapsed_ms"], summed);
    assert_eq!(from_report["runs"], 2);
    let first_line = |text: &str| text.lines().next().unwrap().to_owned();
    assert_eq!(first_line(&walk.stdout), first_line(&report.stdout));
}

/// A site line for the crafted state files below.
fn site_line(id: &str, place: &str, frames: &str) -> String {
    format!("site\t{id}\t7\talloc of 8 bytes (align 8)\tmain\tprog\t{place}\t{frames}\n")
}

#[test]
fn rows_with_the_same_first_frames_show_what_tells_them_apart() {
    let dir = scratch("same_frames");
    let state = dir.join("sites.state");
    let place = "prog::f (src/a.rs:1) <- prog::g (src/a.rs:2) <- prog::h (src/a.rs:3)";
    let mut text = "mayfail-sites\t1\nrun\t1\t1\t0\tprog\n".to_owned();
    text += &site_line(
        "00000000000000aa",
        place,
        "libmayfail.so+0x10,prog+0x20,prog+0x1f30",
    );
    text += &site_line(
        "00000000000000bb",
        place,
        "libmayfail.so+0x10,prog+0x20,prog+0x2a40",
    );
    text += &site_line("00000000000000cc", "prog::k (src/b.rs:9)", "?+0x7f00aa");
    text += "end\t1\t5\tdone\n";
    std::fs::write(&state, text).unwrap();
    let out = bounded(&os(&["report", "--state", state.to_str().unwrap()]), 20);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for told_apart in [
        "frame #3: offset 0x1f30 in prog",
        "frame #3: offset 0x2a40 in prog",
    ] {
        assert!(
            out.stdout.contains(told_apart),
            "no {told_apart:?} in:\n{}",
            out.stdout
        );
    }
    for id in ["00000000000000aa", "00000000000000bb", "00000000000000cc"] {
        assert!(
            out.stdout.contains(&format!("stack {id}")),
            "{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("0x7f00aa"),
        "a unique row needs no raw frames:\n{}",
        out.stdout
    );

    let html = std::fs::read_to_string(dir.join("sites.html")).unwrap();
    assert!(
        html.contains(".replay { white-space: pre; overflow-x: auto;"),
        "{html}"
    );
    assert!(!html.contains("break-all"), "{html}");
    assert!(
        html.contains("<td>prog</td><td>0x1f30</td>"),
        "raw frames as module and offset:\n{html}"
    );
    assert!(
        html.contains("<td>an unknown module</td><td>0x7f00aa</td>"),
        "{html}"
    );
    let json = report_of(&std::fs::read_to_string(dir.join("sites.json")).unwrap());
    assert_eq!(json["sites"][2]["raw_frames"], "?+0x7f00aa");
}

/// The inverse of the HTML report's escaping.
fn html_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[test]
fn printed_replay_lines_pass_exactly_the_intended_argv_through_bash() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let dir = scratch("paste_safety");
    let state = dir.join("sites.state");
    let out_file = dir.join("argv");
    let script = dir.join("print argv.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{{ printf '%s\\0' \"$MAYFAIL_INJECT\"; for a in \"$@\"; do printf '%s\\0' \"$a\"; done; }} > '{}'\n",
            out_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pwned = dir.join("pwned");
    let pwned = pwned.to_str().unwrap();
    let intended: Vec<std::ffi::OsString> = vec![
        "a b".into(),
        "it's \"quoted\"".into(),
        format!("x; touch {pwned}").into(),
        format!("$(touch {pwned})").into(),
        format!("`touch {pwned}`").into(),
        "caf\u{e9} \u{2713}".into(),
        "".into(),
        "FOO=bar".into(),
        std::ffi::OsString::from_vec(b"\xff\xfe raw".to_vec()),
    ];
    let mut args = os(&[
        "sites",
        "--no-baseline",
        "--state",
        state.to_str().unwrap(),
        "--",
    ]);
    args.push(script.clone().into());
    args.extend(intended.iter().cloned());
    let walk = bounded(&args, 20);
    assert_eq!(
        walk.code,
        Some(6),
        "a script reports to no walk: {}",
        walk.stderr
    );
    // Give the walk's run a site, as a process under test would have.
    let text = std::fs::read_to_string(&state).unwrap();
    let text = text.replacen(
        "\nend\t1\t",
        &format!(
            "\n{}end\t1\t",
            site_line("00000000000000ab", "f (a.rs:1)", "prog+0x1")
                .trim_end_matches('\n')
                .to_owned()
                + "\n"
        ),
        1,
    );
    std::fs::write(&state, text).unwrap();
    let report = bounded(&os(&["report", "--state", state.to_str().unwrap()]), 20);
    assert_eq!(report.code, Some(0), "{}", report.stderr);

    let from_table = report
        .stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("replay: "))
        .expect("a replay line in the table")
        .to_owned();
    let json = report_of(&std::fs::read_to_string(dir.join("sites.json")).unwrap());
    let from_json = json["sites"][0]["replay"].as_str().unwrap().to_owned();
    let html = std::fs::read_to_string(dir.join("sites.html")).unwrap();
    let start = html
        .find("<pre class=\"replay\">")
        .expect("a replay in the HTML")
        + "<pre class=\"replay\">".len();
    let from_html = html_unescape(&html[start..start + html[start..].find("</pre>").unwrap()]);
    for (name, line) in [
        ("table", from_table),
        ("json", from_json),
        ("html", from_html),
    ] {
        let _ = std::fs::remove_file(&out_file);
        let status = Command::new("bash")
            .args(["-c", &line])
            .current_dir(&dir)
            .env_remove("MAYFAIL_INJECT")
            .status()
            .unwrap();
        assert!(status.success(), "{name}: {line}");
        let printed = std::fs::read(&out_file).unwrap();
        let mut got: Vec<&[u8]> = printed.split(|&b| b == 0).collect();
        assert_eq!(got.pop(), Some(&b""[..]));
        let mut expected: Vec<&[u8]> = vec![b"stack=00000000000000ab"];
        expected.extend(intended.iter().map(|a| a.as_bytes()));
        assert_eq!(got, expected, "{name}: {line}");
        assert!(
            !Path::new(pwned).exists(),
            "{name}: {line} ran more than the command"
        );
    }
}

#[test]
fn a_cargo_walk_without_the_preload_library_says_so_in_one_line_and_goes_on() {
    let dir = scratch("no-preload-library");
    let state = dir.join("walk.state");
    let out = ran(runner()
        .env("MAYFAIL_PRELOAD_LIB", dir.join("no-such-library.so"))
        .args(["sites", "--no-baseline", "--max-runs", "1", "--state"])
        .arg(&state)
        .args(["--", "cargo", "--version"])
        .output()
        .unwrap());
    let notes: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("mayfail: note:"))
        .collect();
    assert_eq!(notes.len(), 1, "{}", out.stderr);
    assert!(notes[0].contains("no-such-library.so"), "{}", notes[0]);
    assert!(notes[0].contains("not reached"), "{}", notes[0]);
    assert_ne!(out.code, Some(2), "not refused: {}", out.stderr);
}

// ---------------------------------------------------------------------------
// Walk verdicts: output that cannot be written, runs no site explains.

/// The write end of a pipe whose read end is closed: every write to it
/// fails with `EPIPE`, as `| head -1` does once `head` has its line.
fn closed_pipe() -> std::fs::File {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are ours; the read end is closed once, the
    // write end owned by the returned File from here on.
    unsafe {
        libc::close(fds[0]);
        std::fs::File::from_raw_fd(fds[1])
    }
}

/// Runs the runner with `args`, its stdout and stderr a closed pipe.
fn run_into_closed_pipe(args: &[&str]) -> Option<i32> {
    let pipe = closed_pipe();
    runner()
        .args(args)
        .stdout(pipe.try_clone().unwrap())
        .stderr(pipe)
        .status()
        .expect("the runner starts")
        .code()
}

#[test]
fn a_closed_stdout_and_stderr_neither_stop_a_walk_nor_lose_its_state() {
    let binary = fixture_binary().to_str().unwrap();
    let dir = scratch("closed_pipe");
    let state = dir.join("sites.state");
    let state = state.to_str().unwrap();
    // The whole walk, with its baseline, progress lines and table.
    let code = run_into_closed_pipe(&["sites", "--state", state, "--", binary]);
    assert_eq!(code, Some(1), "the walk's own verdict, not a panic's 101");
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    assert_fixture_sites(&sites_of(&json), &json);
    assert_eq!(
        report_of(&json)["stopped"],
        "a run found no new site",
        "the walk ran to its end: {json}"
    );
    // As typed at a shell: `head` closes the pipe after the first line.
    let piped_state = dir.join("piped.state");
    let status_file = dir.join("status");
    let script = format!(
        "'{RUNNER}' sites --state '{}' -- '{binary}' 2>&1 | head -1 >/dev/null; echo ${{PIPESTATUS[0]}} > '{}'",
        piped_state.display(),
        status_file.display()
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .current_dir(fixture_dir())
        .env_remove("MAYFAIL_INJECT")
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&status_file).unwrap().trim(), "1");
    let json = std::fs::read_to_string(dir.join("piped.json")).unwrap();
    assert_fixture_sites(&sites_of(&json), &json);
    // Every other subcommand and message.
    for (args, expected) in [
        (vec!["report", "--state", state], 0),
        (vec!["run", "--", "true"], 0),
        (vec!["run", "--", "false"], 1),
        (vec!["sites", "--frobnicate"], 2),
        (vec!["report", "--state", "/nonexistent/x.state"], 2),
        (vec!["--help"], 0),
        (vec!["sites", "--help"], 0),
        (vec!["--version"], 0),
        (vec!["run", "--", "/nonexistent/program"], 127),
    ] {
        assert_eq!(run_into_closed_pipe(&args), Some(expected), "{args:?}");
    }
}

/// A script at `dir/name` that appends its `RUST_BACKTRACE`,
/// `RUST_LIB_BACKTRACE` and arguments to `dir/seen`, and exits 0.
fn environment_dumper(dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"RUST_BACKTRACE=$RUST_BACKTRACE RUST_LIB_BACKTRACE=$RUST_LIB_BACKTRACE args=$*\" >> '{}'\n",
            dir.join("seen").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn every_subcommand_that_runs_a_command_turns_rust_backtraces_off() {
    let dir = scratch("no_backtraces");
    let script = environment_dumper(&dir, "fake-cargo");
    // A file stands for the preload library: the fake cargo never loads it.
    let library = dir.join("libmayfail_preload.so");
    std::fs::write(&library, "").unwrap();
    let state = dir.join("walk.state");
    for args in [
        vec!["mayfail", "test", "--", "--no-fail-fast"],
        vec!["mayfail", "run", "--", script.to_str().unwrap(), "run"],
        vec![
            "mayfail",
            "sites",
            "--no-baseline",
            "--max-runs",
            "1",
            "--state",
            state.to_str().unwrap(),
            "--",
            script.to_str().unwrap(),
            "sites",
        ],
    ] {
        let _ = std::fs::remove_file(dir.join("seen"));
        let out = ran(Command::new(CARGO_RUNNER)
            .args(&args)
            .current_dir(&dir)
            .env("CARGO", &script)
            .env("MAYFAIL_PRELOAD_LIB", &library)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "full")
            .output()
            .unwrap());
        let seen = std::fs::read_to_string(dir.join("seen"))
            .unwrap_or_else(|_| panic!("{args:?} ran nothing: {}", out.stderr));
        assert!(
            seen.lines()
                .all(|l| l.starts_with("RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 args=")),
            "{args:?}: {seen}"
        );
    }
}

#[test]
fn resuming_a_state_file_with_another_command_is_refused_naming_both() {
    let dir = scratch("other_command");
    let state = dir.join("walk.state");
    let state = state.to_str().unwrap();
    let marker = dir.join("ran");
    let first = run(&[
        "sites",
        "--no-baseline",
        "--state",
        state,
        "--",
        "true",
        "a b",
    ]);
    assert_ne!(first.code, Some(2), "{}", first.stderr);
    let before = std::fs::read(state).unwrap();
    for other in [
        vec!["touch", marker.to_str().unwrap()],
        vec!["true", "a", "b"],
        vec!["true"],
    ] {
        let mut args = vec!["sites", "--no-baseline", "--state", state, "--"];
        args.extend(&other);
        let out = run(&args);
        assert_eq!(out.code, Some(2), "{other:?}: {}", out.stderr);
        let line = first_line(&out);
        assert!(
            line.contains("walks `true 'a b'`")
                && line.contains(&format!("not `{}`", other.join(" ")))
                && line.contains("another --state"),
            "{line}"
        );
        assert!(!marker.exists(), "nothing ran");
        assert_eq!(std::fs::read(state).unwrap(), before, "nothing written");
    }
    // The same command resumes.
    let again = run(&[
        "sites",
        "--no-baseline",
        "--state",
        state,
        "--",
        "true",
        "a b",
    ]);
    assert_ne!(again.code, Some(2), "{}", again.stderr);
}

#[test]
fn the_state_log_and_reports_must_be_four_files_or_the_walk_is_refused() {
    let dir = scratch("collisions");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let marker = dir.join("ran");
    std::fs::create_dir(dir.join("sub")).unwrap();
    // A walk to protect, and names that lead to its file.
    let walk = path("walk.state");
    let first = run(&["sites", "--no-baseline", "--state", &walk, "--", "true"]);
    assert_ne!(first.code, Some(2), "{}", first.stderr);
    std::fs::hard_link(&walk, dir.join("hard.link")).unwrap();
    std::os::unix::fs::symlink("walk.state", dir.join("soft.link")).unwrap();
    std::os::unix::fs::symlink("made-by-json", dir.join("dangling.link")).unwrap();
    // Default names that collide: the state named as its own report or log.
    for name in ["walk.json", "walk.log"] {
        std::fs::copy(&walk, dir.join(name)).unwrap();
    }
    let touch = ["--", "touch", marker.to_str().unwrap()];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--state".into(), path("walk.json")], "JSON report"),
        (vec!["--state".into(), path("walk.log")], "log"),
        (
            vec![
                "--state".into(),
                walk.clone(),
                "--json".into(),
                walk.clone(),
            ],
            "JSON report",
        ),
        (
            vec![
                "--state".into(),
                walk.clone(),
                "--html".into(),
                path("sub/../walk.state"),
            ],
            "HTML report",
        ),
        (
            vec![
                "--state".into(),
                walk.clone(),
                "--json".into(),
                path("hard.link"),
            ],
            "JSON report",
        ),
        (
            vec![
                "--state".into(),
                walk.clone(),
                "--html".into(),
                path("soft.link"),
            ],
            "HTML report",
        ),
        (
            vec![
                "--state".into(),
                walk.clone(),
                "--json".into(),
                path("x"),
                "--html".into(),
                path("x"),
            ],
            "HTML report",
        ),
        (
            vec![
                "--state".into(),
                walk.clone(),
                "--json".into(),
                path("made-by-json"),
                "--html".into(),
                path("dangling.link"),
            ],
            "HTML report",
        ),
        (
            vec![
                "--state".into(),
                walk.clone(),
                "--json".into(),
                path("walk.log"),
            ],
            "JSON report",
        ),
    ];
    let files = ["walk.state", "walk.json", "walk.log"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    for (options, names) in &cases {
        for subcommand in ["sites", "report"] {
            let mut args: Vec<&str> = vec![subcommand];
            args.extend(options.iter().map(String::as_str));
            if subcommand == "sites" {
                args.push("--no-baseline");
                args.extend(touch);
            }
            let out = run(&args);
            let line = first_line(&out);
            assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
            assert!(
                line.contains("are the same file") && line.contains(names),
                "{args:?}: {line}"
            );
            assert!(!marker.exists(), "{args:?}: nothing ran");
            let after: Vec<Vec<u8>> = files
                .iter()
                .map(|f| std::fs::read(dir.join(f)).unwrap())
                .collect();
            assert!(after == before, "{args:?}: nothing written");
            assert!(!dir.join("x").exists() && !dir.join("made-by-json").exists());
        }
    }
    // `report` merging state files: a report over one of them, or one twice.
    for args in [
        vec!["report", "--json", walk.as_str(), walk.as_str()],
        vec!["report", walk.as_str(), &path("hard.link")],
    ] {
        let out = run(&args);
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(
            first_line(&out).contains("are the same file"),
            "{}",
            out.stderr
        );
    }
    assert_eq!(std::fs::read(&walk).unwrap(), before[0]);
}

/// The command of the last `run` line of a state file.
fn walked_command(state: &Path) -> String {
    std::fs::read_to_string(state)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("run\t"))
        .next_back()
        .and_then(|l| l.splitn(4, '\t').nth(3))
        .expect("a run line")
        .to_owned()
}

#[test]
fn cargo_mayfail_sites_walks_cargo_test_and_takes_its_arguments_after_the_separator() {
    fixture_binary();
    let dir = scratch("cargo_default");
    for (i, (after, walked)) in [
        (&[][..], "cargo test"),
        (&["--"][..], "cargo test"),
        (&["--", "--offline", "-q"][..], "cargo test --offline -q"),
        (&["--", "cargo", "test", "-q"][..], "cargo test -q"),
        (&["--", "true", "-q"][..], "true -q"),
    ]
    .into_iter()
    .enumerate()
    {
        let state = dir.join(format!("{i}.state"));
        let plain = runner();
        // The same runner, started as cargo starts it.
        let output = Command::new(CARGO_RUNNER)
            .current_dir(fixture_dir())
            .envs(plain.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("MAYFAIL_INJECT")
            .args([
                "mayfail",
                "sites",
                "--no-baseline",
                "--max-runs",
                "1",
                "--state",
            ])
            .arg(&state)
            .args(after)
            .output()
            .unwrap();
        let out = ran(output);
        assert_ne!(out.code, Some(2), "{after:?}: {}", out.stderr);
        assert_eq!(walked_command(&state), walked, "{after:?}: {}", out.stderr);
        if walked.starts_with("cargo test") {
            let text = std::fs::read_to_string(&state).unwrap();
            assert!(text.contains("\nsite\t"), "{after:?} failed a site: {text}");
        }
    }
    // As `mayfail`, the command is still required.
    let out = run(&[
        "sites",
        "--state",
        dir.join("plain.state").to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(first_line(&out).contains("missing `--`"), "{}", out.stderr);
    let help = cargo_subcommand(&["mayfail", "sites", "--help"]);
    assert!(
        help.stdout
            .contains("cargo mayfail sites (walks `cargo test`)"),
        "{}",
        help.stdout
    );
}

/// `sh -c SCRIPT FIXTURE`: the script runs the quiet fixture as "$0" (so
/// that the walk is reported to), then ends as the script says.
fn after_quiet_program(script: &str) -> Vec<String> {
    vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!("\"$0\" --exact no_such_test; {script}"),
        fixture_binary().to_str().unwrap().to_owned(),
    ]
}

#[test]
fn a_run_that_ends_badly_with_no_site_to_blame_is_recorded_shown_and_not_all_handled() {
    let dir = scratch("unattributed");
    for (name, script, extra, outcome, detail) in [
        (
            "hung",
            "sleep 30",
            vec!["--timeout", "1"],
            "hung",
            "killed after 1 s",
        ),
        ("exit", "exit 3", vec![], "failed", "exit 3"),
        ("signal", "kill -SEGV $$", vec![], "crashed", "signal 11"),
        ("abort", "kill -ABRT $$", vec![], "aborted", "SIGABRT"),
    ] {
        let state = dir.join(format!("{name}.state"));
        let command = after_quiet_program(script);
        let mut args = vec!["sites", "--no-baseline", "--state", state.to_str().unwrap()];
        args.extend(&extra);
        args.push("--");
        args.extend(command.iter().map(String::as_str));
        let started = Instant::now();
        let out = run(&args);
        assert!(started.elapsed() < Duration::from_secs(20), "{name}");
        assert_eq!(out.code, Some(1), "{name}: not all handled: {}", out.stderr);
        let text = std::fs::read_to_string(&state).unwrap();
        let line = format!("\t{outcome}\t{detail}\n");
        assert!(
            text.lines().any(|l| l.starts_with("unattributed\t1\t")) && text.contains(&line),
            "{name}: {text}"
        );
        assert!(
            out.stdout.contains("ended badly with no site to blame")
                && out.stdout.contains(&format!("run 1: {outcome}, {detail}")),
            "{name}: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("ended badly with no site to blame"),
            "{name}: {}",
            out.stderr
        );
        let json = std::fs::read_to_string(state.with_extension("json")).unwrap();
        let report = report_of(&json);
        assert_eq!(report["unattributed"][0]["run"], 1, "{json}");
        assert_eq!(report["unattributed"][0]["outcome"], outcome, "{json}");
        assert_eq!(report["unattributed"][0]["detail"], detail, "{json}");
        let html = std::fs::read_to_string(state.with_extension("html")).unwrap();
        assert!(
            html.contains("no site to blame") && html.contains(detail),
            "{name}"
        );
        // `report` reads the same verdict back from the state file.
        let again = run(&["report", "--state", state.to_str().unwrap()]);
        assert_eq!(again.code, Some(0), "{}", again.stderr);
        let json_again = std::fs::read_to_string(state.with_extension("json")).unwrap();
        assert_eq!(report_of(&json_again), report);
    }
    // A status declared handled is no failure.
    let state = dir.join("declared.state");
    let command = after_quiet_program("exit 3");
    let mut args = vec![
        "sites",
        "--no-baseline",
        "--handled-exit",
        "3",
        "--state",
        state.to_str().unwrap(),
        "--",
    ];
    args.extend(command.iter().map(String::as_str));
    let out = run(&args);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !std::fs::read_to_string(&state)
            .unwrap()
            .contains("unattributed")
    );
    // A walk no process reported to never exits 0, even if every run
    // passed, with or without a timeout.
    for command in [vec!["true"], vec!["sh", "-c", "exit 0"]] {
        let state = dir.join("nobody.state");
        let _ = std::fs::remove_file(&state);
        let mut args = vec![
            "sites",
            "--no-baseline",
            "--state",
            state.to_str().unwrap(),
            "--",
        ];
        args.extend(&command);
        let out = run(&args);
        assert_eq!(out.code, Some(6), "{command:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("reported to the walk") && out.stderr.contains("--preload"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_shard_that_meets_only_other_shards_stacks_was_reached_and_exits_0() {
    let dir = scratch("empty_shard");
    // A million shards: the few hundred stacks of the fixture leave shard 1
    // empty but for a chance of a few in ten thousand.
    // Shards of stacks: the `runs` engine (`tests` shards tests).
    let cargo_test = ["cargo", "test", "--offline", "-q"];
    let quiet = quiet_program();
    for (name, command) in [
        (
            "direct",
            quiet.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        ("cargo", cargo_test.to_vec()),
    ] {
        let state = dir.join(format!("{name}.state"));
        let mut args = vec![
            "sites",
            "--engine",
            "runs",
            "--no-baseline",
            "--shard",
            "1/1000000",
            "--state",
            state.to_str().unwrap(),
            "--",
        ];
        args.extend(&command);
        let out = run(&args);
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(
            !text.contains("\nsite\t") && !text.contains("\nruntime\t"),
            "{name}: shard 1 of a million has no stack of its own: {text}"
        );
        assert!(text.contains("\nother-shard\t"), "{name}: {text}");
        assert_eq!(out.code, Some(0), "{name}: {}", out.stderr);
        assert!(
            !out.stderr.contains("reported to the walk")
                && !out.stderr.contains("reached the preload library"),
            "{}",
            out.stderr
        );
    }
    // Never reached at all: still 6.
    let state = dir.join("never.state");
    let out = run(&[
        "sites",
        "--no-baseline",
        "--shard",
        "1/1000000",
        "--state",
        state.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(6), "{}", out.stderr);
}

#[test]
fn declared_exit_statuses_count_as_handled_in_the_walk_the_report_and_a_resume() {
    let binary = fixture_binary().to_str().unwrap();
    let dir = scratch("handled_exit");
    let state = dir.join("walk.state");
    let state = state.to_str().unwrap();
    let walk = |extra: &[&str]| {
        let mut args = vec!["sites", "--no-baseline", "--state", state];
        args.extend(extra);
        args.extend(["--", binary]);
        run(&args)
    };
    // libtest exits 101 when a test panics: declared handled here.
    let out = walk(&["--handled-exit", "101,7"]);
    assert_eq!(
        out.code,
        Some(1),
        "crashed and aborted remain: {}",
        out.stderr
    );
    let json = std::fs::read_to_string(dir.join("walk.json")).unwrap();
    let report = report_of(&json);
    let mut found: Vec<(String, String)> = sites_of(&json)
        .into_iter()
        .map(|s| (s.outcome, s.function))
        .collect();
    found.sort();
    let mut expected: Vec<(String, String)> = EXPECTED
        .iter()
        .map(|(o, f)| {
            let o = if *o == "failed" { "handled" } else { o };
            (o.to_owned(), (*f).to_owned())
        })
        .collect();
    expected.sort();
    assert_eq!(found, expected, "{json}");
    assert_eq!(report["handled_exit"], serde_json::json!([7, 101]));
    let declared = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frames"][0]["function"] == "sites_fixture::reserve_or_panic")
        .unwrap();
    assert_eq!(
        declared["detail"],
        "exit 101 (declared handled: --handled-exit)"
    );
    assert!(
        out.stdout.contains("exit statuses 7,101 count as handled"),
        "{}",
        out.stdout
    );
    // `report` reads the rule from the state file.
    let again = run(&["report", "--state", state]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    let json_again = std::fs::read_to_string(dir.join("walk.json")).unwrap();
    assert_eq!(report_of(&json_again), report);
    // A resume must declare the same statuses (in any order).
    let before = std::fs::read(state).unwrap();
    for (extra, says) in [
        (&[][..], "counts exit statuses 7,101 as handled, not none"),
        (
            &["--handled-exit", "1"][..],
            "counts exit statuses 7,101 as handled, not 1",
        ),
    ] {
        let out = walk(extra);
        assert_eq!(out.code, Some(2), "{extra:?}: {}", out.stderr);
        assert!(first_line(&out).contains(says), "{}", out.stderr);
        assert_eq!(std::fs::read(state).unwrap(), before, "nothing written");
    }
    let out = walk(&["--handled-exit", "101,7,101"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    // A walk without the rule does not take one on resume.
    let plain = dir.join("plain.state");
    std::fs::write(
        &plain,
        "mayfail-sites\t1\nrun\t1\t1\t0\ttrue\nend\t1\t1\tdone\n",
    )
    .unwrap();
    let out = run(&[
        "sites",
        "--no-baseline",
        "--handled-exit",
        "1",
        "--state",
        plain.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        first_line(&out).contains("counts exit statuses none as handled, not 1"),
        "{}",
        out.stderr
    );
    for bad in ["0", "256", "x", "1,,2", ""] {
        let out = run(&["sites", "--handled-exit", bad, "--", "true"]);
        assert_eq!(out.code, Some(2), "{bad}: {}", out.stderr);
        assert!(
            first_line(&out).contains("--handled-exit") && first_line(&out).contains("1 to 255"),
            "{bad}: {}",
            out.stderr
        );
    }
}

/// A tmpfs of `size` mounted on `dir` for the guard's lifetime, or `None`
/// (with a line saying why) where this environment cannot mount one. In CI
/// (`CI=true`, run as root) it must mount.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(SmallDisk(dir.to_owned())),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI must be able to mount a tmpfs (run as root): {why}"
                );
                eprintln!("skipped: cannot mount a tmpfs here ({why}); CI runs it as root");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes to `path` until the file system is full.
fn fill_disk(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = [0u8; 4096];
    while file.write_all(&block).is_ok() {}
    while file.write_all(&[0u8]).is_ok() {}
}

#[test]
fn a_line_cut_short_by_a_full_disk_is_dropped_and_the_walk_resumes_with_the_rest() {
    let binary = fixture_binary().to_str().unwrap();
    let mount = scratch("full_disk").join("disk");
    let Some(_disk) = SmallDisk::mount(&mount, "256k") else {
        return;
    };
    let state = mount.join("walk.state");
    let state_arg = state.to_str().unwrap();
    // The state file's last page has room for the runner's `run` line and
    // ten bytes more: the test binary's first line (a runtime stack's, 25
    // bytes, or a site's) is cut short when the disk is full.
    let run_line = format!("run\t1\t1\t{}\t{binary} --test-threads=1\n", "1".repeat(13));
    let room = run_line.len() + 10;
    let mut text = "mayfail-sites\t1\n".to_owned();
    text.push_str(&"\n".repeat(4096 - room - text.len()));
    std::fs::write(&state, &text).unwrap();
    fill_disk(&mount.join("filler"));
    let walk = || {
        bounded(
            &os(&[
                "sites",
                "--no-baseline",
                "--state",
                state_arg,
                "--",
                binary,
                "--test-threads=1",
            ]),
            60,
        )
    };
    let full = walk();
    assert_eq!(full.code, Some(3), "the disk is full: {}", full.stderr);
    assert!(
        first_line(&full).contains("No space left on device")
            || full.stderr.contains("No space left on device"),
        "{}",
        full.stderr
    );
    // The runner cut the test binary's line off and took its own back.
    let dropped = full
        .stderr
        .lines()
        .find(|l| l.contains("ended with a line cut short"))
        .unwrap_or_else(|| panic!("a line was cut short: {}", full.stderr));
    assert!(
        dropped.contains("(\"runtime ") || dropped.contains("(\"site "),
        "the test binary's line: {dropped}"
    );
    let written = std::fs::read_to_string(&state).unwrap();
    assert!(written.starts_with(&text), "what was before is kept");
    assert!(
        written[text.len()..].starts_with("run\t1\t1\t") && written.ends_with('\n'),
        "whole lines only: {:?}",
        &written[text.len()..]
    );
    std::fs::remove_file(mount.join("filler")).unwrap();

    // A writer killed mid-line: `report` leaves its line out, says so, and
    // changes nothing.
    let cut = "site\t00000000000000ab\t1\talloc of";
    let written = format!("{written}{cut}");
    std::fs::write(&state, &written).unwrap();
    let report = bounded(&os(&["report", "--state", state_arg]), 20);
    assert_eq!(report.code, Some(0), "{}", report.stderr);
    assert!(
        report
            .stderr
            .contains("line cut short (\"site 00000000000000ab 1 alloc of\""),
        "{}",
        report.stderr
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), written);

    // The walk cuts it off, says so, and goes on to every site.
    let resumed = walk();
    assert_eq!(resumed.code, Some(1), "{}", resumed.stderr);
    assert!(
        resumed.stderr.contains("ended with a line cut short")
            && resumed
                .stderr
                .contains("dropped, the rest of the walk kept"),
        "{}",
        resumed.stderr
    );
    let kept = std::fs::read_to_string(&state).unwrap();
    assert!(kept.starts_with(&text), "what was before is kept");
    assert!(kept.ends_with('\n'));
    let json = std::fs::read_to_string(mount.join("walk.json")).unwrap();
    assert_fixture_sites(&sites_of(&json), &json);

    // The runner's own first line (`handled-exit`), five bytes of which
    // fit, is taken back whole: the file is as it was.
    let fresh = mount.join("fresh.state");
    let mut text = "mayfail-sites\t1\n".to_owned();
    text.push_str(&"\n".repeat(4096 - 5 - text.len()));
    std::fs::write(&fresh, &text).unwrap();
    fill_disk(&mount.join("filler"));
    let out = bounded(
        &os(&[
            "sites",
            "--no-baseline",
            "--handled-exit",
            "101",
            "--state",
            fresh.to_str().unwrap(),
            "--",
            binary,
        ]),
        60,
    );
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    let after = std::fs::read_to_string(&fresh).unwrap();
    assert!(
        after == text,
        "left after the header and padding: {:?}",
        after.get(text.len()..)
    );
}

// ---------------------------------------------------------------------------
// The per-test engine, on `tests/fixtures/walk_fixture`.

fn walk_fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/walk_fixture")
}

/// The runner in the walk fixture's directory, its own target directory.
fn walk_runner() -> Command {
    let mut command = runner();
    command.current_dir(walk_fixture_dir()).env(
        "CARGO_TARGET_DIR",
        fixture_target().with_file_name("walk-fixture"),
    );
    command
}

/// The walk fixture's tests whose sites are checked apart (by
/// [`walk_fixture_sites_of`]): a thread's spawning allocates in ways that
/// change with std.
const TESTS_CHECKED_APART: [&str; 5] = [
    "walk_fixture lib tests::panics_on_purpose",
    "walk_fixture lib tests::on_two_threads",
    "walk_fixture lib tests::returns_err",
    "walk_fixture lib tests::should_panic_but_returns",
    "walk_fixture lib tests::leaves_a_thread",
];

/// The outcome of each site of the walk fixture's tests checked apart
/// that a separate process failing it alone gives: (test, outcome,
/// function).
const APART_EXPECTED: [(&str, &str, &str); 5] = [
    (
        "walk_fixture lib tests::panics_on_purpose",
        "handled",
        "walk_fixture::fourth_checked",
    ),
    (
        "walk_fixture lib tests::on_two_threads",
        "handled",
        "walk_fixture::fifth_checked",
    ),
    (
        "walk_fixture lib tests::returns_err",
        "failed",
        "walk_fixture::reserve_or_err",
    ),
    (
        "walk_fixture lib tests::should_panic_but_returns",
        "failed",
        "walk_fixture::sixth_checked",
    ),
    (
        "walk_fixture lib tests::leaves_a_thread",
        "handled",
        "walk_fixture::seventh_checked",
    ),
];

/// Each site of [`APART_EXPECTED`] is found with its outcome.
fn assert_apart_sites(json: &str) {
    for (test, outcome, function) in APART_EXPECTED {
        assert!(
            walk_fixture_sites_of(json, test).contains(&(outcome.to_owned(), function.to_owned())),
            "{test}: {outcome} {function}: {json}"
        );
    }
}

/// The sites of the walk fixture's `test` in code of its own (not a
/// panic's message, not on an error path): (outcome, function), sorted.
fn walk_fixture_sites_of(json: &str, test: &str) -> Vec<(String, String)> {
    let report = report_of(json);
    let mut sites: Vec<(String, String)> = report["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .filter(|s| {
            s["test"] == test
                && s["panic"] == false
                && s["after"].as_array().is_none_or(Vec::is_empty)
        })
        .map(|s| {
            (
                s["outcome"].as_str().unwrap().to_owned(),
                s["frames"][0]["function"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    sites.sort();
    sites
}

/// The walk fixture's sites: (outcome, function, test), sorted.
fn walk_fixture_sites(json: &str) -> Vec<(String, String, String)> {
    let report = report_of(json);
    let mut sites: Vec<(String, String, String)> = report["sites"]
        .as_array()
        .expect("sites")
        .iter()
        // The 2024 edition's doctest runner's own sites are rustdoc's; the
        // sites found on error paths are checked apart.
        .filter(|s| {
            !s["frames"][0]["function"]
                .as_str()
                .unwrap()
                .starts_with("doctest_runner")
                && s["after"].as_array().is_none_or(Vec::is_empty)
                && !TESTS_CHECKED_APART.contains(&s["test"].as_str().unwrap_or(""))
        })
        .map(|s| {
            (
                s["outcome"].as_str().unwrap().to_owned(),
                s["frames"][0]["function"].as_str().unwrap().to_owned(),
                s["test"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    sites.sort();
    sites
}

/// Every site of the walk fixture, its outcome and the test (or doctest)
/// that reached it.
fn walk_fixture_expected() -> Vec<(String, String, String)> {
    let mut expected: Vec<(String, String, String)> = [
        (
            "aborted",
            "walk_fixture::push_one",
            "walk_fixture lib tests::three_mixed",
        ),
        (
            "failed",
            "walk_fixture::reserve_or_panic",
            "walk_fixture lib tests::three_mixed",
        ),
        (
            "handled",
            "walk_fixture::doc_checked",
            "walk_fixture doctest:walk_fixture src/lib.rs - doc_checked (line 56)",
        ),
        (
            "aborted",
            "walk_fixture::doc_push",
            "walk_fixture doctest:walk_fixture src/lib.rs - doc_push (line 67)",
        ),
        // A `should_panic` doctest passes by panicking: walked, not left
        // out. Its process exits 0 when the failure keeps it from panicking:
        // read as handled, as the library reads any exit 0. Its panic's
        // message allocates twice.
        (
            "handled",
            "walk_fixture::should_panic_checked",
            "walk_fixture doctest:walk_fixture src/lib.rs - doc_push (line 85)",
        ),
        (
            "aborted",
            "rust_out::main::_doctest_main_src_lib_rs_85_0",
            "walk_fixture doctest:walk_fixture src/lib.rs - doc_push (line 85)",
        ),
        (
            "aborted",
            "rust_out::main::_doctest_main_src_lib_rs_85_0",
            "walk_fixture doctest:walk_fixture src/lib.rs - doc_push (line 85)",
        ),
        (
            "handled",
            "walk_fixture::first_checked",
            "walk_fixture lib tests::two_handled",
        ),
        (
            "handled",
            "walk_fixture::integration_checked",
            "walk_fixture test:integration reaches_one",
        ),
        (
            "handled",
            "walk_fixture::second_checked",
            "walk_fixture lib tests::two_handled",
        ),
        (
            "handled",
            "walk_fixture::third_checked",
            "walk_fixture lib tests::three_mixed",
        ),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    expected.sort();
    expected
}

#[test]
fn the_doctests_are_compiled_by_the_rustdoc_cargo_would_run_build_rustdoc_included() {
    let dir = scratch("build_rustdoc");
    let state = dir.join("walk.state");
    // A rustdoc of the project's own (`build.rustdoc`, here a `--config`
    // of the command): it notes each call, then runs rustdoc.
    let calls = dir.join("calls");
    let wrapper = dir.join("my-rustdoc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec rustdoc \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let setting = format!("build.rustdoc=\"{}\"", wrapper.display());
    let out = ran(walk_runner()
        .env_remove("RUSTDOC")
        .args(["sites", "--timeout", "5", "--state"])
        .arg(&state)
        .args(["--", "cargo", "test", "--offline", "--config", &setting])
        // Only the doctests: their names hold their file, the unit tests'
        // do not.
        .args(["--", "src/lib.rs"])
        .output()
        .unwrap());
    assert!(
        out.stderr.contains("doctests: 3 compiled once"),
        "{}",
        out.stderr
    );
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        calls
            .lines()
            .any(|call| call.contains("--persist-doctests")),
        "the project's rustdoc compiled the doctests: {calls}"
    );
    let json = std::fs::read_to_string(dir.join("walk.json")).unwrap();
    assert!(json.contains("doctest:walk_fixture"), "{json}");
}

/// What a walk forking at its tests' sites must have told (`text` its
/// state file): the sites of a test that passes by panicking, whose
/// children's panics say nothing, walked again one per process (`retry`
/// lines) and found handled, as a separate run finds them; a test on a
/// thread of its own walked one site per process, the reason said; the
/// other sites found by children forked at them.
fn assert_forked_verdicts(json: &str, text: &str) {
    assert_apart_sites(json);
    assert_eq!(
        walk_fixture_sites_of(json, "walk_fixture lib tests::panics_on_purpose"),
        [(
            "handled".to_owned(),
            "walk_fixture::fourth_checked".to_owned()
        )],
        "{json}"
    );
    // A child whose test left a thread running ends with the test's thread,
    // not at the timeout.
    let left_a_thread: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("site\t") && l.contains("seventh_checked"))
        .filter_map(|l| l.split('\t').nth(1))
        .collect();
    assert!(!left_a_thread.is_empty(), "{text}");
    for id in left_a_thread {
        assert!(!text.contains(&format!("retry\t{id}")), "{text}");
    }
    // A test that forked at every site to its end completes its walk in
    // that one process: two_handled's processes are that one, then one for
    // each of its two sites' error paths.
    let processes_of = |test: &str| {
        let forked: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("site\t") && l.contains("\tforked,parent="))
            .filter_map(|l| l.split('\t').nth(2))
            .collect();
        text.lines()
            .filter_map(|l| l.strip_prefix("test\t"))
            .filter(|l| l.ends_with(&format!("\t{test}")))
            .filter(|l| !forked.contains(&l.split('\t').next().unwrap()))
            .count()
    };
    assert_eq!(processes_of("tests::two_handled"), 3, "{text}");
    assert!(text.contains("\nretry\t"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("no-fork\t") && l.ends_with("\t3 threads")),
        "{text}"
    );
    let forked = text
        .lines()
        .filter(|l| {
            l.starts_with("site\t")
                && l.split('\t')
                    .nth(8)
                    .is_some_and(|facts| facts.split(',').any(|f| f == "forked"))
        })
        .count();
    assert!(forked >= 4, "{text}");
}

#[test]
fn a_walk_with_one_site_per_process_finds_the_same_sites_as_one_forking_at_them() {
    let dir = scratch("per_test_no_fork");
    let state = dir.join("walk.state");
    let out = ran(walk_runner()
        .args([
            "sites",
            "--no-fork",
            "--depth",
            "0",
            "--timeout",
            "5",
            "--state",
        ])
        .arg(&state)
        .args(["--", "cargo", "test", "--offline"])
        .output()
        .unwrap());
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let json = std::fs::read_to_string(dir.join("walk.json")).unwrap();
    assert_eq!(walk_fixture_sites(&json), walk_fixture_expected(), "{json}");
    assert_apart_sites(&json);
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(
        !text.contains("forked") && !text.contains("no-fork\t"),
        "{text}"
    );
}

#[test]
fn a_per_test_walk_finds_every_site_of_every_test_names_its_test_and_replays_it_alone() {
    let dir = scratch("per_test");
    let state = dir.join("walk.state");
    let started = Instant::now();
    let out = ran(walk_runner()
        .args(["sites", "--timeout", "5", "--jobs", "2", "--state"])
        .arg(&state)
        .args(["--", "cargo", "test", "--offline"])
        .output()
        .unwrap());
    println!("{}{}({:.1?})", out.stderr, out.stdout, started.elapsed());
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let json = std::fs::read_to_string(dir.join("walk.json")).unwrap();
    assert_eq!(walk_fixture_sites(&json), walk_fixture_expected(), "{json}");
    assert_forked_verdicts(&json, &std::fs::read_to_string(&state).unwrap());
    // Each test that fails or hangs without injection: said once, left out.
    let report = report_of(&json);
    let mut left_out: Vec<(String, String)> = report["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["test"].as_str().unwrap().to_owned(),
                l["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    left_out.sort();
    assert_eq!(
        left_out,
        [
            (
                "walk_fixture lib tests::fails_anyway".to_owned(),
                "exit 101".to_owned()
            ),
            (
                "walk_fixture lib tests::hangs_anyway".to_owned(),
                "killed after 5 s".to_owned()
            ),
        ],
        "{json}"
    );
    assert_eq!(
        out.stderr
            .matches("fails_anyway fails without injection")
            .count(),
        1
    );
    assert!(
        out.stdout
            .contains("2 tests fail without injection and were left out"),
        "{}",
        out.stdout
    );
    // The doctests were compiled once, not by a `cargo test --doc` per
    // site, and each was walked as a test; those not run never were.
    assert!(
        out.stderr.contains("doctests: 3 compiled once"),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&state).unwrap();
    let runs: Vec<&str> = text.lines().filter(|l| l.starts_with("run\t")).collect();
    assert_eq!(runs.len(), 1, "{text}");
    assert!(!text.contains("not_run_checked"), "{text}");
    assert!(
        dir.join("walk.state.doctests/walk_fixture").is_dir(),
        "the doctests' executables are kept beside the state file"
    );
    // Error paths: the failed site's (its test goes on to panic) holds only
    // the panic's message, never blamed as a bug; the handled sites' none.
    let on_error_paths: Vec<&serde_json::Value> = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["after"].as_array().unwrap().is_empty())
        .collect();
    assert!(!on_error_paths.is_empty(), "{json}");
    for site in &on_error_paths {
        assert_eq!(site["panic"], true, "{site:#}");
        assert_eq!(site["class"], "infallible", "{site:#}");
        assert!(
            site["error_path_of"]
                .as_str()
                .unwrap()
                .starts_with("walk_fixture::reserve_or_panic"),
            "{site:#}"
        );
    }
    assert!(
        !out.stderr.contains("no site to blame"),
        "a failed site's error path ends as the test fails: {}",
        out.stderr
    );
    // The state file: a `test` line per process, a `tested` line per test.
    assert_eq!(text.matches("\ntested\t").count(), 11, "{text}");
    assert!(
        !text.contains("ignored_site"),
        "an ignored test is not walked: {text}"
    );
    // A per-test replay runs its test alone and fails its site again; the
    // doctest's runs the doctests.
    let replay = |function: &str| {
        let site = report["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frames"][0]["function"] == function)
            .unwrap();
        let replay = site["replay"].as_str().unwrap().to_owned();
        let output = Command::new("bash")
            .args(["-c", &replay])
            .current_dir(walk_fixture_dir())
            .env(
                "CARGO_TARGET_DIR",
                fixture_target().with_file_name("walk-fixture"),
            )
            .env_remove("MAYFAIL_INJECT")
            .output()
            .unwrap();
        (replay, output)
    };
    let (line, output) = replay("walk_fixture::push_one");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        line.contains("-p walk_fixture --lib -- --exact tests::three_mixed"),
        "{line}"
    );
    assert!(
        !output.status.success() && text.contains("running 1 test"),
        "{line}: {text}"
    );
    assert!(
        text.contains("SIGABRT") || text.contains("signal: 6"),
        "{line}: {text}"
    );
    let (line, output) = replay("walk_fixture::integration_checked");
    assert!(
        line.contains("--test integration -- --exact reaches_one"),
        "{line}"
    );
    assert!(output.status.success(), "{line}");
    // A doctest's replay runs that item's doctests (rustdoc splits its
    // filters at whitespace: no filter holds a doctest's whole name) and
    // fails its site again.
    let (line, output) = replay("walk_fixture::doc_push");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        line.contains(" test --inject stack=")
            && line.ends_with(" -p walk_fixture --doc -- doc_push"),
        "{line}"
    );
    assert!(
        !output.status.success()
            && text.contains("doc_push (line 67) ... FAILED")
            && text.contains("failed on purpose")
            && text.contains("walk_fixture::doc_push"),
        "{line}: {text}"
    );
}

#[test]
fn an_interrupted_per_test_walk_resumes_and_finds_the_same_sites() {
    let dir = scratch("per_test_resume");
    let state = dir.join("walk.state");
    let walk = || {
        let mut command = walk_runner();
        command
            .args([
                "sites",
                "--timeout",
                "3",
                "--jobs",
                "1",
                "--no-baseline",
                "--state",
            ])
            .arg(&state)
            .args([
                "--",
                "cargo",
                "test",
                "--offline",
                "--lib",
                "--",
                "--skip",
                "anyway",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let mut child = walk().spawn().unwrap();
    // Interrupted once a test's walk is complete and another's under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        let done = text.matches("\ntest\t").count() >= 3;
        if done || Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: the child is ours and not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let first = ran(child.wait_with_output().unwrap());
    assert_eq!(first.code, Some(130), "{}", first.stderr);
    let second = ran(walk().output().unwrap());
    // Infallible, failed and handled sites only: no bug.
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let json = std::fs::read_to_string(dir.join("walk.json")).unwrap();
    let found = walk_fixture_sites(&json);
    let expected: Vec<_> = walk_fixture_expected()
        .into_iter()
        .filter(|(_, _, test)| test.contains(" lib "))
        .collect();
    assert_eq!(found, expected, "{}{json}", first.stderr);
    // No test's walk was completed twice, nor a site failed twice.
    let text = std::fs::read_to_string(&state).unwrap();
    let mut tested: Vec<&str> = text.lines().filter(|l| l.starts_with("tested\t")).collect();
    let all = tested.len();
    tested.sort();
    tested.dedup();
    assert_eq!(tested.len(), all, "{text}");
    assert!(sites_of(&json).iter().all(|s| s.seen == 1), "{json}");
}

#[test]
fn shards_split_the_tests_and_their_merged_report_is_the_whole_walk() {
    let dir = scratch("per_test_shards");
    let mut states = Vec::new();
    let mut tests: Vec<Vec<String>> = Vec::new();
    for k in 1..=2 {
        let state = dir.join(format!("shard{k}.state"));
        let out = ran(walk_runner()
            .args(["sites", "--timeout", "3", "--no-baseline", "--shard"])
            .arg(format!("{k}/2"))
            .arg("--state")
            .arg(&state)
            .args([
                "--",
                "cargo",
                "test",
                "--offline",
                "--lib",
                "--",
                "--skip",
                "anyway",
            ])
            .output()
            .unwrap());
        assert!(matches!(out.code, Some(0 | 1)), "{}", out.stderr);
        let text = std::fs::read_to_string(&state).unwrap();
        tests.push(
            text.lines()
                .filter_map(|l| l.strip_prefix("tested\t"))
                .map(str::to_owned)
                .collect(),
        );
        states.push(state);
    }
    // Each test in one shard: together, the seven of the library.
    let mut all: Vec<&String> = tests.iter().flatten().collect();
    all.sort();
    assert_eq!(all.len(), 7, "{tests:?}");
    all.dedup();
    assert_eq!(all.len(), 7, "{tests:?}");
    let merged = dir.join("merged.state");
    let out = ran(walk_runner()
        .arg("report")
        .arg("--state")
        .arg(&merged)
        .args(&states)
        .output()
        .unwrap());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let json = std::fs::read_to_string(dir.join("merged.json")).unwrap();
    let expected: Vec<_> = walk_fixture_expected()
        .into_iter()
        .filter(|(_, _, test)| test.contains(" lib "))
        .collect();
    assert_eq!(walk_fixture_sites(&json), expected, "{json}");
}

/// A state file with lines of kinds this runner does not know (a newer
/// runner's): `report` reads the rest, says how many it skipped, and exits
/// as for the file without them; a line of no kind at all is still corrupt.
#[test]
fn lines_of_unknown_kinds_are_skipped_and_counted_by_report() {
    let dir = scratch("unknown-kinds");
    let state = dir.join("walk.state");
    let text = "mayfail-sites\t1\nrun\t1\t1\t0\tprog\nsite-weight\t00000000000000ab\t9\n\
                site\t00000000000000ab\t7\talloc of 8 bytes (align 8)\tmain\tprog\t\
                f (a.rs:1)\tprog+0x10\t-\t\nfate\t00000000000000ab\t7\thandled\texit 0\n\
                checkpoint\nend\t1\t5\tdone\n";
    std::fs::write(&state, text).unwrap();
    let state_arg = state.to_str().unwrap();
    let out = run(&["report", "--state", state_arg]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("holds 2 lines of kinds this runner does not know"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("1 sites in 1 runs"), "{}", out.stdout);
    std::fs::write(&state, text.replace("checkpoint", "Checkpoint!")).unwrap();
    let out = run(&["report", "--state", state_arg]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("is corrupt at line 6"),
        "{}",
        out.stderr
    );
}
