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
    assert_eq!(report["schema_version"], 1, "{json}");
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
    let dir = scratch("cargo_test");
    let state = dir.join("sites.state");
    let started = Instant::now();
    let out = run(&[
        "sites",
        "--state",
        state.to_str().unwrap(),
        "--",
        "cargo",
        "test",
        "--offline",
        "-q",
    ]);
    println!("{}{}({:.1?})", out.stderr, out.stdout, started.elapsed());
    assert_eq!(out.code, Some(1), "not every site was handled: exit 1");
    assert!(out.stdout.contains("stopped: a run found no new site"));

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
    // One run per site, plus one or two that find nothing new: std's own
    // start-up stacks are not sites.
    let runs = runs_in(&state);
    assert!((6..=8).contains(&runs), "{runs} runs");
    let report = report_of(&json);
    assert_eq!(report["stopped"], "a run found no new site");
    assert_eq!(report["counts"]["handled"], 2);
    assert_eq!(report["counts"]["crashed"], 1);

    // The table names function and file:line of the first user frames.
    assert!(
        out.stdout
            .contains("crashed     1  sites_fixture::write_unchecked (src/lib.rs:"),
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
    assert!(!html.contains("<script") && !html.contains("http"));

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
    let child = runner()
        .args(["sites", "--no-baseline", "--state"])
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

    // Resumed: run 2, which finds nothing in `true`.
    let again = run(&[
        "sites",
        "--no-baseline",
        "--state",
        state.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
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
    assert_eq!(walk.code, Some(1), "{}{}", walk.stderr, walk.stdout);
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
        "0    every site found was handled",
        "1    unhandled sites found",
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
    let out = run(&[
        "sites",
        "--no-baseline",
        "--state",
        state.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let json = std::fs::read_to_string(dir.join("sites.json")).unwrap();
    let report = report_of(&json);
    assert_eq!(report["sites"].as_array().map(Vec::len), Some(0), "{json}");
    assert_eq!(report["runs"], 1);
    assert_eq!(report["command"], "true");
    assert_eq!(report["stopped"], "a run found no new site");
    for outcome in ["crashed", "aborted", "hung", "failed", "unknown", "handled"] {
        assert_eq!(report["counts"][outcome], 0, "{json}");
    }
}

#[test]
fn progress_on_a_stderr_that_is_not_a_terminal_is_plain_lines() {
    let dir = scratch("plain_progress");
    let state = dir.join("sites.state");
    // `true` twice for the baseline, then run 1 finds nothing.
    let out = run(&[
        "sites",
        "--no-preload",
        "--state",
        state.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stderr);
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
    assert_eq!(walk.code, Some(0), "{}", walk.stderr);
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
    assert_eq!(out.code, Some(0), "{}", out.stderr);
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
    assert_eq!(walk.code, Some(0), "{}", walk.stderr);
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
    assert_eq!(walk.code, Some(0), "{}", walk.stderr);
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
