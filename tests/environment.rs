//! The `MAYFAIL_*` variables and the setters: good values apply, bad ones
//! get one line on stderr and the default, never a panic or an abort.

mod common;

use std::alloc::System;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use common::{is_child, run_child, run_child_with};
use mayfail::MayFail;

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

/// The child prints the knobs in force; the parent checks them.
fn print_knobs() {
    println!(
        "KNOBS retries={} small={} stall={}",
        mayfail::retries(),
        mayfail::small_limit(),
        mayfail::stall_ms()
    );
}

fn knobs_of(stdout: &str) -> (isize, usize, u64) {
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("KNOBS ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no KNOBS line in {stdout}"));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .to_owned()
    };
    (
        field("retries").parse().unwrap(),
        field("small").parse().unwrap(),
        field("stall").parse().unwrap(),
    )
}

#[test]
fn knobs_in_force() {
    if is_child() {
        print_knobs();
    }
}

#[test]
fn without_variables_the_crate_defaults_apply() {
    if is_child() {
        return;
    }
    let run = run_child::<&str, &str>("knobs_in_force", &[]);
    run.assert_success();
    assert_eq!(knobs_of(&run.stdout), (-1, 32 * 1024, 10_000));
    assert!(run.mayfail_lines().is_empty(), "{}", run.stderr);
}

#[test]
fn good_values_apply() {
    if is_child() {
        return;
    }
    for (retries, small, stall, expected) in [
        ("0", "64K", "250", (0, 64 << 10, 250)),
        ("3", "4096", "0", (3, 4096, 0)),
        (" -1 ", "2m", "10", (-1, 2 << 20, 10)),
        ("1000000", "0", "60000", (1_000_000, 0, 60_000)),
        ("7", "1G", "1", (7, 1 << 30, 1)),
    ] {
        let run = run_child_with(
            "knobs_in_force",
            &[
                ("MAYFAIL_RETRIES", retries),
                ("MAYFAIL_SMALL", small),
                ("MAYFAIL_STALL_MS", stall),
            ],
        );
        run.assert_success();
        assert_eq!(
            knobs_of(&run.stdout),
            expected,
            "{retries:?} {small:?} {stall:?}"
        );
        assert!(run.mayfail_lines().is_empty(), "{}", run.stderr);
    }
}

#[test]
fn bad_values_get_one_line_and_the_default() {
    if is_child() {
        return;
    }
    let long = OsString::from("7".repeat(64 * 1024));
    let non_utf8 = OsString::from_vec(b"3\xff\xfe".to_vec());
    let cases: Vec<(&str, OsString, &str)> = vec![
        (
            "MAYFAIL_RETRIES",
            "abc".into(),
            "-1 (retry until it succeeds)",
        ),
        (
            "MAYFAIL_RETRIES",
            "-2".into(),
            "-1 (retry until it succeeds)",
        ),
        (
            "MAYFAIL_RETRIES",
            "99999999999999999999".into(),
            "0 (never retry)",
        ),
        ("MAYFAIL_RETRIES", "".into(), "a count N >= 1"),
        ("MAYFAIL_RETRIES", "   ".into(), "a count N >= 1"),
        ("MAYFAIL_RETRIES", "1.5".into(), "a count N >= 1"),
        ("MAYFAIL_RETRIES", "+3".into(), "a count N >= 1"),
        ("MAYFAIL_RETRIES", long.clone(), "a count N >= 1"),
        ("MAYFAIL_RETRIES", non_utf8.clone(), "a count N >= 1"),
        ("MAYFAIL_SMALL", "12Q".into(), "K, M or G suffix"),
        ("MAYFAIL_SMALL", "".into(), "K, M or G suffix"),
        ("MAYFAIL_SMALL", "-1".into(), "K, M or G suffix"),
        ("MAYFAIL_SMALL", "1.5K".into(), "K, M or G suffix"),
        ("MAYFAIL_SMALL", "99999999999G".into(), "K, M or G suffix"),
        ("MAYFAIL_SMALL", long.clone(), "K, M or G suffix"),
        ("MAYFAIL_SMALL", non_utf8.clone(), "K, M or G suffix"),
        ("MAYFAIL_STALL_MS", "soon".into(), "milliseconds"),
        ("MAYFAIL_STALL_MS", "-5".into(), "milliseconds"),
        ("MAYFAIL_STALL_MS", "".into(), "milliseconds"),
        (
            "MAYFAIL_STALL_MS",
            "18446744073709551616".into(),
            "milliseconds",
        ),
        ("MAYFAIL_STALL_MS", long, "milliseconds"),
    ];
    for (name, value, accepted) in cases {
        let run = run_child("knobs_in_force", &[(name, Some(value.clone()))]);
        run.assert_success();
        assert_eq!(
            knobs_of(&run.stdout),
            (-1, 32 * 1024, 10_000),
            "{name}={value:?}: the defaults must apply"
        );
        let lines = run.mayfail_lines();
        assert_eq!(lines.len(), 1, "{name}={value:?}: one line\n{}", run.stderr);
        let line = lines[0];
        assert!(
            line.starts_with(&format!("mayfail: ignoring {name}=\"")),
            "{line}"
        );
        assert!(line.contains(accepted), "{line}");
        assert!(line.contains("using the default"), "{line}");
        assert!(
            line.len() < 400,
            "a long value is cut: {} bytes",
            line.len()
        );
    }
}

#[test]
fn set_retries_refuses_values_below_minus_one() {
    if is_child() {
        mayfail::set_retries(5);
        mayfail::set_retries(-2);
        mayfail::set_retries(isize::MIN);
        assert_eq!(mayfail::retries(), 5);
        mayfail::set_retries(-1);
        assert_eq!(mayfail::retries(), -1);
        return;
    }
    let run = run_child_with("set_retries_refuses_values_below_minus_one", &[]);
    run.assert_success();
    let lines = run.mayfail_lines();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(
        lines[0].contains("mayfail::set_retries(-2)"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("keeping retries = 5"), "{}", lines[0]);
}

#[test]
fn setters_win_over_the_environment() {
    if is_child() {
        assert_eq!(
            (
                mayfail::retries(),
                mayfail::small_limit(),
                mayfail::stall_ms()
            ),
            (0, 100, 5)
        );
        mayfail::set_retries(9);
        mayfail::set_small_limit(usize::MAX);
        mayfail::set_stall_ms(0);
        assert_eq!(
            (
                mayfail::retries(),
                mayfail::small_limit(),
                mayfail::stall_ms()
            ),
            (9, isize::MAX as usize, 0)
        );
        return;
    }
    run_child_with(
        "setters_win_over_the_environment",
        &[
            ("MAYFAIL_RETRIES", "0"),
            ("MAYFAIL_SMALL", "100"),
            ("MAYFAIL_STALL_MS", "5"),
        ],
    )
    .assert_success();
}
