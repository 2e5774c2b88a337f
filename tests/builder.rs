//! Defaults compiled in with the const builder: they apply without
//! variables, the environment overrides them, and a bad variable falls back to
//! them (not to the crate's defaults).

mod common;

use std::alloc::System;

use common::{Exhaustion, alloc, is_child, run_child_with};
use mayfail::{MayFail, stats};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system()
    .with_retries(3)
    .with_small_limit(4096)
    .with_stall_ms(777);

#[test]
fn compiled_defaults_apply_under_real_exhaustion() {
    if is_child() {
        assert_eq!(
            (
                mayfail::retries(),
                mayfail::small_limit(),
                mayfail::stall_ms()
            ),
            (3, 4096, 777)
        );
        let pressure = Exhaustion::start();
        let before = stats();
        let small = alloc(64);
        let after_small = stats();
        let large = alloc(8192);
        let after_large = stats();
        pressure.end();
        assert!(small.is_null() && large.is_null());
        let d = after_small.since(&before);
        assert_eq!((d.retries, d.failed), (3, 1), "64 bytes: 3 retries, {d:?}");
        let d = after_large.since(&after_small);
        assert_eq!((d.retries, d.failed), (0, 1), "8 KiB is large here, {d:?}");
        return;
    }
    run_child_with("compiled_defaults_apply_under_real_exhaustion", &[]).assert_success();
}

#[test]
fn the_environment_overrides_compiled_defaults() {
    if is_child() {
        assert_eq!(
            (
                mayfail::retries(),
                mayfail::small_limit(),
                mayfail::stall_ms()
            ),
            (0, 1 << 20, 20)
        );
        return;
    }
    run_child_with(
        "the_environment_overrides_compiled_defaults",
        &[
            ("MAYFAIL_RETRIES", "0"),
            ("MAYFAIL_SMALL", "1M"),
            ("MAYFAIL_STALL_MS", "20"),
        ],
    )
    .assert_success();
}

#[test]
fn a_bad_variable_falls_back_to_the_compiled_default() {
    if is_child() {
        assert_eq!(mayfail::retries(), 3);
        return;
    }
    let run = run_child_with(
        "a_bad_variable_falls_back_to_the_compiled_default",
        &[("MAYFAIL_RETRIES", "lots")],
    );
    run.assert_success();
    let lines = run.mayfail_lines();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(lines[0].ends_with("using the default 3"), "{}", lines[0]);
}
