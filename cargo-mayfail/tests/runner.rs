//! The `mayfail` runner: walking every allocation site of a real test suite
//! (the fixture crate in `tests/fixtures/sites_fixture`, one site per
//! outcome), resuming, `--jobs`, Ctrl-C, `mayfail run`, the command line
//! (help, version, cargo's subcommand convention), exit codes and bad input.
//!
//! The fixture is built once, with `cargo test --no-run --offline`, into
//! the workspace's `target/tmp/sites-fixture` (it reuses the registry cache
//! and, after the first time, its own build).

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

/// `cargo` in the fixture's directory, with its own target dir, without the
/// variables of the cargo that runs these tests.
fn fixture_cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(fixture_dir())
        .env("CARGO_TARGET_DIR", fixture_target())
        .env_remove("MAYFAIL_INJECT")
        .env_remove("MAYFAIL_RETRIES")
        .env_remove("RUSTFLAGS");
    command
}

/// The fixture's test binary, built once for all tests.
fn fixture_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let output = fixture_cargo()
            .args(["test", "--offline", "--no-run", "--message-format=json"])
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "the fixture builds");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find(|l| l.contains("\"executable\":\"") && l.contains("sites_fixture"))
            .expect("cargo names the fixture's test binary");
        let start = line.find("\"executable\":\"").unwrap() + "\"executable\":\"".len();
        let end = start + line[start..].find('"').unwrap();
        PathBuf::from(&line[start..end])
    })
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

fn runner() -> Command {
    let mut command = Command::new(RUNNER);
    command
        .current_dir(fixture_dir())
        .env("CARGO_TARGET_DIR", fixture_target())
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
        first.stdout.contains("stopped: --max-runs 2 reached"),
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
    let out = run(&["sites", "--state", state.to_str().unwrap(), "--", "true"]);
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
