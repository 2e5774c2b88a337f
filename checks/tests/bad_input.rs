//! Bad input, everywhere mayfail takes input: every environment variable
//! (`MAYFAIL_RETRIES`, `MAYFAIL_SMALL`, `MAYFAIL_STALL_MS`, `MAYFAIL_INJECT`,
//! `MAYFAIL_SWEEP_POINT`), the injection grammar of `configure_injection`,
//! and the lines of a walk's state file (`mayfail::state::parse_line`, the
//! exit statuses of a `handled-exit` line).
//! A bad value gets one line (or, from `configure_injection`, one `Err` with
//! a one-line message) and the default applies; nothing panics or aborts.
//!
//! `tests/environment.rs` and `tests/inject.rs` cover the common bad values;
//! this file adds what they do not: whitespace, huge and negative numbers,
//! Unicode and non-UTF-8 bytes, values at the edges of their types, unknown
//! and duplicated keys, 64 KiB values, several bad variables at once,
//! `MAYFAIL_SWEEP_POINT`, and property tests (`proptest`; 256 cases by
//! default, `PROPTEST_CASES` for more) that throw random text at the spec
//! parser and random bytes at the variables, in child processes.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::alloc::System;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use common::{ChildRun, is_child, run_child};
use mayfail::MayFail;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

const DEFAULTS: (isize, usize, u64) = (-1, 32 * 1024, 10_000);

/// Every key of the injection grammar.
const KEYS: [&str; 14] = [
    "probability",
    "interval",
    "times",
    "space",
    "min-size",
    "max-size",
    "task-filter",
    "after",
    "seed",
    "verbose",
    "transient",
    "report",
    "nth",
    "thread",
];

/// The child prints the knobs in force and whether a `make_it_fail`
/// allocation is injected.
#[test]
fn state_in_force() {
    let probe = mayfail::make_it_fail(|| Vec::<u8>::new().try_reserve(8).is_err());
    if is_child() {
        println!(
            "STATE retries={} small={} stall={} injected={}",
            mayfail::retries(),
            mayfail::small_limit(),
            mayfail::stall_ms(),
            u8::from(probe)
        );
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct State {
    retries: isize,
    small: usize,
    stall: u64,
    injected: bool,
}

fn state_of(run: &ChildRun) -> State {
    run.assert_success();
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.split_once("STATE ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no STATE line in {}", run.stdout));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .to_owned()
    };
    State {
        retries: field("retries").parse().unwrap(),
        small: field("small").parse().unwrap(),
        stall: field("stall").parse().unwrap(),
        injected: field("injected") == "1",
    }
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// Runs `state_in_force` in a child with these variables (all others unset).
fn state_with(env: &[(&str, OsString)]) -> (State, ChildRun) {
    let mut all: Vec<(&str, Option<OsString>)> = [
        "MAYFAIL_RETRIES",
        "MAYFAIL_SMALL",
        "MAYFAIL_STALL_MS",
        "MAYFAIL_INJECT",
    ]
    .iter()
    .map(|&k| (k, None))
    .collect();
    for (k, v) in env {
        all.retain(|(name, _)| name != k);
        all.push((k, Some(v.clone())));
    }
    let run = run_child("state_in_force", &all);
    (state_of(&run), run)
}

/// The one line that says `name`'s value was ignored.
fn the_ignoring_line<'a>(run: &'a ChildRun, name: &str, value: &[u8]) -> &'a str {
    let lines = run.mayfail_lines();
    assert_eq!(
        lines.len(),
        1,
        "{name}={:?}: one line\n{}",
        String::from_utf8_lossy(value),
        run.stderr
    );
    let line = lines[0];
    assert!(
        line.starts_with(&format!("mayfail: ignoring {name}=\"")),
        "{line}"
    );
    assert!(
        line.len() < 600,
        "a long value is cut: {} bytes",
        line.len()
    );
    line
}

// ---------------------------------------------------------------------------
// The knobs' variables.

#[test]
fn knob_variables_refuse_what_environment_rs_does_not_try() {
    if is_child() {
        return;
    }
    let cases: [(&str, &[u8]); 28] = [
        ("MAYFAIL_RETRIES", b"\t"),
        ("MAYFAIL_RETRIES", b"0x10"),
        ("MAYFAIL_RETRIES", b"1e3"),
        ("MAYFAIL_RETRIES", b"3 4"),
        ("MAYFAIL_RETRIES", "\u{2212}1".as_bytes()), // a Unicode minus
        ("MAYFAIL_RETRIES", "\u{663}".as_bytes()),   // an Arabic-Indic three
        ("MAYFAIL_RETRIES", b"-1-1"),
        ("MAYFAIL_RETRIES", b"3=4"),
        ("MAYFAIL_RETRIES", b"18446744073709551615"),
        ("MAYFAIL_RETRIES", b"9223372036854775808"),
        ("MAYFAIL_RETRIES", b"-9223372036854775808"),
        ("MAYFAIL_RETRIES", b"-0"),
        ("MAYFAIL_SMALL", b"   "),
        ("MAYFAIL_SMALL", b"K"),
        ("MAYFAIL_SMALL", b"12KB"),
        ("MAYFAIL_SMALL", b"0x10"),
        ("MAYFAIL_SMALL", b"1T"),
        ("MAYFAIL_SMALL", b"9223372036854775808"),
        ("MAYFAIL_SMALL", b"8589934592G"),
        ("MAYFAIL_SMALL", b"18446744073709551615"),
        ("MAYFAIL_STALL_MS", b"   "),
        ("MAYFAIL_STALL_MS", b"\xff\xfe"),
        ("MAYFAIL_STALL_MS", b"+5"),
        ("MAYFAIL_STALL_MS", b"1.5"),
        ("MAYFAIL_STALL_MS", b"5ms"),
        ("MAYFAIL_STALL_MS", b"1e3"),
        ("MAYFAIL_STALL_MS", b"18446744073709551616"),
        ("MAYFAIL_STALL_MS", b"-0"),
    ];
    for (name, value) in cases {
        let (state, run) = state_with(&[(name, os(value))]);
        let shown = String::from_utf8_lossy(value);
        assert_eq!(
            (state.retries, state.small, state.stall),
            DEFAULTS,
            "{name}={shown:?}"
        );
        let line = the_ignoring_line(&run, name, value);
        assert!(line.contains("using the default"), "{line}");
        if !value.is_ascii() {
            assert!(line.contains("\\x"), "non-ASCII bytes are escaped: {line}");
        }
    }
}

#[test]
// The edges are those of 64-bit `usize` and `isize`.
#[cfg(target_pointer_width = "64")]
fn knob_variables_accept_blanks_and_the_edges_of_their_types() {
    if is_child() {
        return;
    }
    let max = isize::MAX;
    /// Values of MAYFAIL_RETRIES, MAYFAIL_SMALL, MAYFAIL_STALL_MS, and the knobs.
    type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], (isize, usize, u64));
    let cases: [Case; 4] = [
        (b"\t3\n", b" 64k\t", b" 250 ", (3, 64 << 10, 250)),
        (
            b"9223372036854775807",
            b"9223372036854775807",
            b"18446744073709551614",
            (max, max as usize, u64::MAX - 1),
        ),
        (
            b"0000000000000000000000000000003",
            b"8589934591G",
            b"0",
            (3, 8_589_934_591 << 30, 0),
        ),
        (b"-1", b"0K", b"00", (-1, 0, 0)),
    ];
    for (retries, small, stall, expected) in cases {
        let (state, run) = state_with(&[
            ("MAYFAIL_RETRIES", os(retries)),
            ("MAYFAIL_SMALL", os(small)),
            ("MAYFAIL_STALL_MS", os(stall)),
        ]);
        assert_eq!(
            (state.retries, state.small, state.stall),
            expected,
            "{retries:?} {small:?} {stall:?}"
        );
        assert!(run.mayfail_lines().is_empty(), "{}", run.stderr);
    }
}

/// `u64::MAX` milliseconds is a whole number, so `MAYFAIL_STALL_MS` must
/// either apply it (clamped as `set_stall_ms` and `with_stall_ms` clamp it)
/// or refuse it with a line. It is the internal "unset" marker, so today it
/// is dropped without a word and the default applies.
#[test]
fn stall_ms_of_u64_max_is_not_silently_dropped() {
    if is_child() {
        return;
    }
    let (state, run) = state_with(&[("MAYFAIL_STALL_MS", os(b"18446744073709551615"))]);
    let applied = state.stall == u64::MAX - 1 && run.mayfail_lines().is_empty();
    let refused = state.stall == DEFAULTS.2 && run.mayfail_lines().len() == 1;
    assert!(
        applied || refused,
        "MAYFAIL_STALL_MS=18446744073709551615 gave stall_ms() = {} with {} lines on stderr: \
         silently ignored\n{}",
        state.stall,
        run.mayfail_lines().len(),
        run.stderr
    );
}

#[test]
fn every_variable_bad_at_once_gets_one_line_each_and_all_defaults() {
    if is_child() {
        return;
    }
    let (state, run) = state_with(&[
        ("MAYFAIL_RETRIES", os(b"\xc3\x28")),
        ("MAYFAIL_SMALL", os("\u{fffd}".as_bytes())),
        ("MAYFAIL_STALL_MS", os(&[b'9'; 64 << 10])),
        ("MAYFAIL_INJECT", os(b"task-filter=Y,times=1,times=2")),
    ]);
    assert_eq!(
        state,
        State {
            retries: DEFAULTS.0,
            small: DEFAULTS.1,
            stall: DEFAULTS.2,
            injected: false
        }
    );
    let lines = run.mayfail_lines();
    assert_eq!(lines.len(), 4, "{}", run.stderr);
    for name in [
        "MAYFAIL_RETRIES",
        "MAYFAIL_SMALL",
        "MAYFAIL_STALL_MS",
        "MAYFAIL_INJECT",
    ] {
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with(&format!("mayfail: ignoring {name}=")))
                .count(),
            1,
            "{name}: {}",
            run.stderr
        );
    }
    assert!(lines.iter().all(|l| l.len() < 600), "{}", run.stderr);
}

// ---------------------------------------------------------------------------
// MAYFAIL_INJECT.

#[test]
fn inject_variable_refuses_bad_specs_with_one_line_and_stays_off() {
    if is_child() {
        return;
    }
    let long_pairs = "task-filter=Y,".to_owned() + &"times=1,".repeat(8 << 10);
    let long_thread = format!("task-filter=Y,thread={}", "a".repeat(65));
    let long_value = format!("task-filter=Y,after={}", "1".repeat(64 << 10));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "empty"),
        (b"   ".to_vec(), "empty"),
        (b",".to_vec(), "empty pair"),
        (b"task-filter=Y,=".to_vec(), "unknown key \"\""),
        (b"task-filter=Y,=5".to_vec(), "unknown key \"\""),
        (
            b"task-filter=Y,times".to_vec(),
            "\"times\" is not key=value",
        ),
        (b"task-filter=Y,times==1".to_vec(), "times takes"),
        (b"task-filter=Y,PROBABILITY=5".to_vec(), "unknown key"),
        (
            b"task-filter=Y,probability=-0.5".to_vec(),
            "probability takes",
        ),
        (
            "task-filter=Y,probability=\u{ff15}".as_bytes().to_vec(),
            "probability takes",
        ),
        (b"task-filter=Y,probability=\xff".to_vec(), "\\xff"),
        (b"task-filter=Y,interval=-1".to_vec(), "interval takes"),
        (
            b"task-filter=Y,interval=18446744073709551616".to_vec(),
            "interval takes",
        ),
        (
            b"task-filter=Y,times=9223372036854775808".to_vec(),
            "times takes",
        ),
        (b"task-filter=Y,space=-1K".to_vec(), "space takes"),
        (b"task-filter=Y,space=17179869184G".to_vec(), "space takes"),
        (b"task-filter=Y,after=-1".to_vec(), "after takes"),
        (b"task-filter=Y,seed=-1".to_vec(), "seed takes"),
        (b"task-filter=Y,nth=0".to_vec(), "nth takes"),
        (b"task-filter=Y,nth=-1".to_vec(), "nth takes"),
        (
            b"task-filter=Y,min-size=2K,max-size=1K".to_vec(),
            "min-size",
        ),
        (
            b"task-filter=Y,min-size=9223372036854775808".to_vec(),
            "min-size takes",
        ),
        (b"task-filter=Y,verbose=-1".to_vec(), "verbose takes"),
        (b"task-filter=Y,transient=yes".to_vec(), "transient takes"),
        (b"task-filter=Y,report=".to_vec(), "report takes"),
        (b"task-filter=Y,task-filter=Y".to_vec(), "given twice"),
        (long_thread.into_bytes(), "thread takes"),
        (long_pairs.into_bytes(), "\"times\" is given twice"),
        (long_value.into_bytes(), "after takes"),
    ];
    for (value, expected) in cases {
        let (state, run) = state_with(&[("MAYFAIL_INJECT", os(&value))]);
        let shown = String::from_utf8_lossy(&value[..value.len().min(60)]).into_owned();
        assert_eq!(
            (state.retries, state.small, state.stall),
            DEFAULTS,
            "{shown:?}"
        );
        assert!(!state.injected, "{shown:?}: injection stays off");
        let line = the_ignoring_line(&run, "MAYFAIL_INJECT", &value);
        assert!(line.ends_with("injection stays off"), "{line}");
        assert!(line.contains(expected), "{shown:?}: {line}");
        if value.len() > 48 {
            assert!(line.contains(&format!("({} bytes)", value.len())), "{line}");
        }
    }
}

#[test]
fn inject_variable_accepts_blanks_case_and_raw_bytes_where_the_grammar_does() {
    if is_child() {
        return;
    }
    let cases: [(&[u8], bool); 5] = [
        (b"  task-filter = y , times = -1 ", true),
        (b"task-filter=1,probability=100.000000000", true),
        (b"task-filter=Y,probability=0.000000000", false),
        // A thread name is bytes: one that no thread has is valid and
        // matches nothing.
        (b"task-filter=Y,thread=\xff\xfe", false),
        (b"task-filter=Y,min-size=9,max-size=9", false),
    ];
    for (value, injected) in cases {
        let (state, run) = state_with(&[("MAYFAIL_INJECT", os(value))]);
        assert_eq!(state.injected, injected, "{value:?}");
        assert!(run.mayfail_lines().is_empty(), "{value:?}: {}", run.stderr);
    }
}

// ---------------------------------------------------------------------------
// MAYFAIL_SWEEP_POINT.

/// The child sweeps a one-allocation operation and prints the report's
/// first line.
#[test]
fn sweep_in_force() {
    if is_child() {
        let report = mayfail::Sweep::new()
            .timeout(std::time::Duration::from_secs(5))
            .run(|| Vec::<u8>::new().try_reserve(8).is_ok());
        println!("REPORT {}", report.to_string().lines().next().unwrap_or(""));
    }
}

fn sweep_with(value: &[u8]) -> (String, ChildRun) {
    let run = run_child(
        "sweep_in_force",
        &[("MAYFAIL_SWEEP_POINT", Some(os(value)))],
    );
    run.assert_success();
    let report = run
        .stdout
        .lines()
        .find_map(|l| l.split_once("REPORT ").map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| panic!("no REPORT line: {}", run.stdout));
    (report, run)
}

#[test]
fn sweep_point_replays_a_good_value_and_refuses_a_bad_one_with_one_line() {
    if is_child() {
        return;
    }
    for good in [&b"1"[..], b" 1 "] {
        let (report, run) = sweep_with(good);
        assert!(
            report.contains("replayed point 1 in-process"),
            "{good:?}: {report}"
        );
        assert!(run.mayfail_lines().is_empty(), "{}", run.stderr);
    }
    // A point named for another sweep is not for this one: swept as usual.
    let (report, run) = sweep_with(b"other:1");
    assert!(
        report.contains("allocations failed one at a time"),
        "{report}"
    );
    assert!(run.mayfail_lines().is_empty(), "{}", run.stderr);

    let long = vec![b'x'; 64 << 10];
    let cases: [&[u8]; 9] = [
        b"",
        b" ",
        b"abc",
        b"-1",
        b"1.5",
        b"99999999999999999999",
        b"0",
        b"\xff\xfe",
        &long,
    ];
    let mut problems = Vec::new();
    for value in cases {
        let (report, run) = sweep_with(value);
        let shown = String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
        if !report.contains("allocations failed one at a time") {
            problems.push(format!(
                "MAYFAIL_SWEEP_POINT={shown:?} ({} bytes) was not refused: {report}",
                value.len()
            ));
        }
        let lines = run.mayfail_lines();
        let one_line = lines.len() == 1
            && lines[0].starts_with("mayfail: ignoring MAYFAIL_SWEEP_POINT=")
            && lines[0].contains("N a whole number >= 1");
        if !one_line {
            problems.push(format!(
                "MAYFAIL_SWEEP_POINT={shown:?} ({} bytes): {} lines instead of one refusal",
                value.len(),
                lines.len()
            ));
        } else if lines[0].len() >= 600 {
            problems.push(format!(
                "MAYFAIL_SWEEP_POINT={shown:?} ({} bytes): a line of {} bytes, the value is not \
                 cut as other variables' are",
                value.len(),
                lines[0].len()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// configure_injection.

#[test]
fn configure_injection_refuses_what_inject_rs_does_not_try() {
    let key_64k = format!("{}=1", "k".repeat(64 << 10));
    let thread_64k = format!("thread={}", "t".repeat(64 << 10));
    let many_pairs = "times=1,".repeat(10_000);
    let commas = ",".repeat(64 << 10);
    let cases: Vec<(&str, &str)> = vec![
        (" \t\n ", "the spec is empty"),
        (",", "empty pair"),
        ("=", "unknown key \"\""),
        ("=5", "unknown key \"\""),
        ("times==1", "times=\"=1\" is not valid"),
        ("times=1=1", "times takes"),
        ("Probability=5", "unknown key \"Probability\""),
        ("fail-nth=1", "unknown key \"fail-nth\""),
        ("probability=-0.5", "probability takes"),
        ("probability=0.0000000001", "probability takes"),
        ("probability=\u{ff15}", "probability=\"\\xef\\xbc\\x95\""),
        ("probability=NaN", "probability takes"),
        ("interval=-1", "interval takes"),
        ("interval=18446744073709551616", "interval takes"),
        ("times=9223372036854775808", "times takes"),
        ("times=-0", "times takes"),
        ("space=-1", "space takes"),
        ("space=17179869184G", "space takes"),
        ("after=-1", "after takes"),
        ("after=18446744073709551616", "after takes"),
        ("seed=-1", "seed takes"),
        ("seed=0x10", "seed takes"),
        ("nth=0", "nth takes"),
        ("min-size=-1", "min-size takes"),
        ("max-size=9223372036854775808", "max-size takes"),
        ("min-size=2,max-size=1", "min-size is larger than max-size"),
        ("verbose=-1", "verbose takes"),
        ("verbose=1.0", "verbose takes"),
        ("transient=yes", "transient takes"),
        ("report=", "report takes"),
        (
            "task-filter=Y ,task-filter = N",
            "\"task-filter\" is given twice",
        ),
        ("thread=", "thread takes"),
        ("thread=\u{e9}\u{e9}\u{e9}", "ok"),
        (&key_64k, "unknown key"),
        (&thread_64k, "thread takes a thread name of 1 to 64 bytes"),
        (&many_pairs, "\"times\" is given twice"),
        (&commas, "empty pair"),
    ];
    for (spec, expected) in cases {
        let shown: String = spec.chars().take(40).collect();
        if expected == "ok" {
            // Valid, and with no task-filter it would inject into the
            // whole test binary: checked in `a_refused_spec_changes_nothing`.
            continue;
        }
        let err = mayfail::configure_injection(spec).expect_err(&shown);
        let text = err.to_string();
        assert!(text.starts_with("invalid injection spec: "), "{text}");
        assert!(text.contains(expected), "{shown:?}: {text}");
        assert!(
            !text.contains('\n') && text.len() < 400,
            "{shown:?}: {text}"
        );
    }
}

/// A refused spec leaves the configuration in force as it was, whether
/// injection is on or off.
#[test]
fn a_refused_spec_changes_nothing() {
    if is_child() {
        let probe = || mayfail::make_it_fail(|| Vec::<u8>::new().try_reserve(8).is_err());
        mayfail::configure_injection("task-filter=Y,times=-1").unwrap();
        assert!(probe());
        assert!(mayfail::configure_injection("task-filter=Y,times=-1,bogus=1").is_err());
        assert!(probe(), "still on");
        mayfail::configure_injection("task-filter=Y,probability=0").unwrap();
        assert!(!probe());
        assert!(mayfail::configure_injection("task-filter=Y,probability=200").is_err());
        assert!(!probe(), "still off");
        mayfail::configure_injection("task-filter=Y,times=-1,thread=\u{e9}\u{e9}\u{e9}").unwrap();
        assert!(!probe(), "a thread name nobody has");
        mayfail::disable_injection();
        return;
    }
    run_child::<&str, &str>(
        "a_refused_spec_changes_nothing",
        &[("MAYFAIL_INJECT", None)],
    )
    .assert_success();
}

// ---------------------------------------------------------------------------
// Property tests.

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Values that mean something to some key, and some that do not.
fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("Y".to_owned()),
        Just("N".to_owned()),
        Just("100".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("9223372036854775807".to_owned()),
        "[0-9]{1,4}(\\.[0-9]{1,10})?",
        "[0-9]{1,6}[kKmMgGQ]?",
        "[ -~]{0,12}",
        "\\PC{0,6}",
    ]
}

/// Specs near the grammar: pairs of known (and some unknown) keys with
/// interesting values, random blanks, sometimes a stray comma or equals.
fn spec_strategy() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        8 => proptest::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
        1 => "[a-z-]{0,12}",
    ];
    let pair =
        (key, value_strategy(), " {0,2}", " {0,2}", 0u8..20).prop_map(|(k, v, b1, b2, odd)| {
            match odd {
                0 => k,
                1 => format!("{k}=={v}"),
                _ => format!("{b1}{k}{b2}={b1}{v}{b2}"),
            }
        });
    let near = proptest::collection::vec(pair, 0..6).prop_map(|pairs| pairs.join(","));
    prop_oneof![
        4 => near,
        1 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Every key of the grammar, as the unknown-key message lists them.
fn all_keys() -> Vec<String> {
    let text = mayfail::configure_injection("no-such-key=1")
        .unwrap_err()
        .to_string();
    let list = text.split_once("keys: ").expect("the list of keys").1;
    let keys: Vec<String> = list.split(", ").map(str::to_owned).collect();
    assert!(KEYS.iter().all(|k| keys.iter().any(|l| l == k)), "{text}");
    keys
}

/// Captures what `f` writes to file descriptor 2.
fn capture_stderr(f: impl FnOnce()) -> String {
    let mut fds = [0; 2];
    // SAFETY: plain descriptor operations on descriptors we own; fd 2 is
    // put back before returning. Single-threaded here (a child with one test).
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let saved = libc::dup(2);
        libc::dup2(fds[1], 2);
        f();
        libc::dup2(saved, 2);
        libc::close(saved);
        libc::close(fds[1]);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: the read end is ours.
    unsafe { libc::close(fds[0]) };
    String::from_utf8_lossy(&out).into_owned()
}

/// Configures `spec`, turns injection off again at once (nothing may
/// allocate in between: a valid spec without `task-filter` fails every
/// allocation of the process), and returns the result.
fn try_spec(spec: &str) -> Result<(), String> {
    let r = mayfail::configure_injection(spec);
    mayfail::disable_injection();
    r.map_err(|e| e.to_string())
}

/// The canonical form of a valid spec without `verbose`, from the line
/// `verbose=1` prints.
fn canonical(spec: &str) -> Option<String> {
    let mut result = Ok(());
    let printed = capture_stderr(|| {
        let r = mayfail::configure_injection(&format!("{spec},verbose=1"));
        mayfail::disable_injection();
        result = r;
    });
    result.ok()?;
    let word = printed
        .lines()
        .find_map(|l| l.strip_prefix("mayfail: injecting allocation failures: MAYFAIL_INJECT="))?;
    shell_word(word)
}

/// What a POSIX shell makes of one single-quoted word (`'\''` stands for
/// a quote inside).
fn shell_word(word: &str) -> Option<String> {
    match word.strip_prefix('\'') {
        None => None,
        Some(rest) => Some(rest.strip_suffix('\'')?.replace("'\\''", "'")),
    }
}

/// Trims what the parser trims: ASCII blanks only.
fn ascii_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace())
}

fn has_key(spec: &str, key: &str) -> bool {
    spec.split(',').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, _)| ascii_trim(k) == key)
    })
}

/// The property for one spec: `Err` explains itself in one line; `Ok`
/// parses again, in any pair order and with more blanks, and its canonical
/// form is a fixpoint.
fn spec_property(spec: &str) -> Result<(), TestCaseError> {
    match try_spec(spec) {
        Err(text) => {
            prop_assert!(text.starts_with("invalid injection spec: "), "{}", text);
            prop_assert!(!text.contains('\n') && !text.contains('\r'), "{}", text);
            prop_assert!(text.len() < 512, "{} bytes: {}", text.len(), text);
            prop_assert!(
                text.contains("empty") || all_keys().iter().any(|k| text.contains(k.as_str())),
                "names a key or says empty: {}",
                text
            );
        }
        Ok(()) => {
            prop_assert!(try_spec(spec).is_ok(), "parses again");
            let pairs: Vec<&str> = ascii_trim(spec).split(',').collect();
            let reversed: Vec<&str> = pairs.iter().rev().copied().collect();
            prop_assert!(try_spec(&reversed.join(",")).is_ok(), "in any order");
            prop_assert!(
                try_spec(&format!(" \t{} \n", pairs.join(" , "))).is_ok(),
                "with more blanks"
            );
            if !has_key(spec, "verbose") {
                let first = canonical(spec);
                prop_assert!(first.is_some(), "a verbose line for {:?}", spec);
                let first = first.unwrap();
                // The line is cut at 400 bytes: a canonical form that does
                // not fit is not checked.
                if !first.ends_with("...") {
                    let again = canonical(&first.replace(",verbose=1", ""));
                    prop_assert_eq!(Some(first.clone()), again, "canonical of {:?}", spec);
                }
            }
        }
    }
    Ok(())
}

#[test]
fn configure_injection_never_panics_and_explains_every_refusal() {
    if is_child() {
        let mut runner = TestRunner::new(Config {
            cases: cases(256),
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&spec_strategy(), |spec| spec_property(&spec))
            .unwrap();
        return;
    }
    run_child::<&str, &str>(
        "configure_injection_never_panics_and_explains_every_refusal",
        &[("MAYFAIL_INJECT", None)],
    )
    .assert_success();
}

/// What `MAYFAIL_RETRIES`, `MAYFAIL_SMALL` and `MAYFAIL_STALL_MS` should
/// give, written from the README's table: `Some(value)` or `None` (one line,
/// the default).
fn model_retries(v: &[u8]) -> Option<isize> {
    let v = v.trim_ascii();
    if v == b"-1" {
        return Some(-1);
    }
    let n: u64 = std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    isize::try_from(n).ok()
}

fn model_small(v: &[u8]) -> Option<usize> {
    let v = v.trim_ascii();
    let (digits, shift) = match v.last() {
        Some(b'k' | b'K') => (&v[..v.len() - 1], 10),
        Some(b'm' | b'M') => (&v[..v.len() - 1], 20),
        Some(b'g' | b'G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    let n: u64 = std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()?;
    let bytes = n.checked_mul(1 << shift)?;
    (bytes <= isize::MAX as u64).then_some(bytes as usize)
}

fn model_stall(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    std::str::from_utf8(v)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
        // u64::MAX has its own test: `stall_ms_of_u64_max_is_not_silently_dropped`.
        .filter(|&n| n != u64::MAX)
}

/// Environment values: near-numbers and arbitrary bytes (no NUL, which an
/// environment cannot hold).
fn env_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ \t]{0,2}-?[0-9]{0,21}[kKmMgGx.]?[ \t\n]{0,2}".prop_map(String::into_bytes),
        proptest::collection::vec(1u8..=255, 0..24),
    ]
}

#[test]
fn random_environment_values_never_panic_and_follow_the_grammar() {
    if is_child() {
        return;
    }
    let mut runner = TestRunner::new(Config {
        cases: cases(256) / 8,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (env_value(), env_value(), env_value(), env_value());
    runner
        .run(&strategy, |(retries, small, stall, inject)| {
            // task-filter keeps a valid random spec away from libtest.
            let mut spec = b"task-filter=Y,".to_vec();
            spec.extend_from_slice(&inject);
            let (state, run) = state_with(&[
                ("MAYFAIL_RETRIES", os(&retries)),
                ("MAYFAIL_SMALL", os(&small)),
                ("MAYFAIL_STALL_MS", os(&stall)),
                ("MAYFAIL_INJECT", os(&spec)),
            ]);
            let expected = (
                model_retries(&retries),
                model_small(&small),
                model_stall(&stall),
            );
            prop_assert_eq!(state.retries, expected.0.unwrap_or(DEFAULTS.0));
            prop_assert_eq!(state.small, expected.1.unwrap_or(DEFAULTS.1));
            prop_assert_eq!(state.stall, expected.2.unwrap_or(DEFAULTS.2));
            let lines = run.mayfail_lines();
            let bad_knobs = [
                expected.0.is_none(),
                expected.1.is_none(),
                expected.2.is_none(),
            ]
            .iter()
            .filter(|&&bad| bad)
            .count();
            let inject_lines = lines
                .iter()
                .filter(|l| l.starts_with("mayfail: ignoring MAYFAIL_INJECT="))
                .count();
            prop_assert!(inject_lines <= 1);
            prop_assert_eq!(lines.len(), bad_knobs + inject_lines, "{}", run.stderr);
            if inject_lines == 1 {
                prop_assert!(!state.injected, "a refused spec leaves injection off");
            }
            prop_assert!(lines.iter().all(|l| l.len() < 600));
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// Replay lines must replay.

/// Fails, with a verbose line, the allocations of a thread named `café`
/// inside `make_it_fail`; prints whether its first allocation failed.
#[test]
fn non_ascii_thread_probe() {
    if is_child() {
        let failed = std::thread::Builder::new()
            .name("caf\u{e9}".to_owned())
            .spawn(|| mayfail::make_it_fail(|| Vec::<u8>::new().try_reserve(8).is_err()))
            .unwrap()
            .join()
            .unwrap();
        println!("PROBE failed={}", u8::from(failed));
    }
}

/// The spec that `verbose=1` prints as "MAYFAIL_INJECT='...'" must fail the
/// same thread again when it is given back as `MAYFAIL_INJECT`. For a
/// thread name with non-ASCII bytes it prints them escaped (`\xc3\xa9`),
/// which the parser takes literally, so the printed spec matches no thread.
/// (The crash report's replay line writes `thread=` the same way.)
#[test]
fn the_replay_of_a_non_ascii_thread_name_fails_again() {
    if is_child() {
        return;
    }
    let probe = |spec: &[u8]| {
        let run = run_child(
            "non_ascii_thread_probe",
            &[("MAYFAIL_INJECT", Some(os(spec)))],
        );
        run.assert_success();
        let failed = run.stdout.contains("PROBE failed=1");
        (failed, run)
    };
    let (failed, run) = probe("task-filter=Y,thread=caf\u{e9},verbose=1".as_bytes());
    assert!(failed, "the original spec fails the thread: {}", run.stdout);
    let printed = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("mayfail: injecting allocation failures: MAYFAIL_INJECT='"))
        .and_then(|l| l.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no verbose line: {}", run.stderr))
        .to_owned();
    let (again, run) = probe(printed.as_bytes());
    assert!(
        again,
        "MAYFAIL_INJECT='{printed}', printed by the first run, must fail the same thread: \
         {}{}",
        run.stdout, run.stderr
    );
}

/// What a `handled-exit` line and `--handled-exit` accept, written from the
/// guide: decimal statuses from 1 to 255, comma-separated, nothing else.
fn model_exit_codes(text: &str) -> Option<Vec<u8>> {
    text.split(',')
        .map(|code| {
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let value = code.trim_start_matches('0');
            (value.len() <= 3)
                .then(|| value.parse::<u16>().ok())
                .flatten()
                .filter(|v| (1..=255).contains(v))
                .map(|v| v as u8)
        })
        .collect()
}

#[test]
fn state_lines_of_every_kind_never_panic_and_exit_statuses_follow_the_model() {
    let kinds = prop::sample::select(vec![
        "site",
        "fate",
        "runtime",
        "retry",
        "run",
        "end",
        "baseline",
        "unattributed",
        "other-shard",
        "handled-exit",
        "bogus",
        "",
    ]);
    let field = prop_oneof![
        "[0-9a-f]{16}",
        "[0-9]{0,4}",
        "[0-9,+ -]{0,12}",
        prop::sample::select(vec!["hung", "failed", "handled", "exit 1", "", "\u{e9}"])
            .prop_map(str::to_owned),
        ".{0,20}",
    ];
    let line = (kinds, prop::collection::vec(field, 0..8));
    let mut runner = TestRunner::new(Config {
        cases: cases(256) * 4,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&line, |(kind, fields)| {
            let line = std::iter::once(kind.to_owned())
                .chain(fields.iter().cloned())
                .collect::<Vec<_>>()
                .join("\t");
            match mayfail::state::parse_line(&line) {
                Ok(_) => {}
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(!text.is_empty() && !text.contains('\n'), "{:?}", text);
                }
            }
            for text in &fields {
                prop_assert_eq!(
                    mayfail::state::parse_exit_codes(text),
                    model_exit_codes(text),
                    "{:?}",
                    text
                );
            }
            Ok(())
        })
        .unwrap();
    for (text, codes) in [
        ("1,7", Some(vec![1, 7])),
        ("255,007", Some(vec![255, 7])),
        ("256", None),
        ("0", None),
        ("+1", None),
        (" 1", None),
        ("1,", None),
        ("", None),
    ] {
        assert_eq!(mayfail::state::parse_exit_codes(text), codes, "{text:?}");
        assert_eq!(model_exit_codes(text), codes, "{text:?}");
    }
}
