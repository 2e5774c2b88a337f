//! The leak rule of a sweep: memory that an error path keeps per thread or
//! per process (a logger's buffer, a "last error" slot) is not a leak; only
//! a live set that grows again when the failing point runs a second time is.

#![cfg(all(feature = "sweep", feature = "log"))]

use std::alloc::System;
use std::collections::TryReserveError;
use std::sync::Mutex;
use std::time::Duration;

use mayfail::{MayFail, Outcome, Sweep};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

fn quick() -> Sweep {
    Sweep::new().timeout(Duration::from_secs(5))
}

/// Logs a warning when its buffer cannot be reserved: env_logger formats
/// the record into a buffer it keeps per thread, grown by the first warning.
#[inline(never)]
fn load_or_warn(len: usize) -> Result<usize, TryReserveError> {
    let mut buffer: Vec<u8> = Vec::new();
    if let Err(e) = buffer.try_reserve(len) {
        log::warn!("could not reserve {len} bytes for the input: {e}; the input is skipped");
        return Err(e);
    }
    Ok(buffer.capacity())
}

#[test]
fn a_logger_buffer_grown_on_the_error_path_is_not_a_leak() {
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .try_init();
    let report = quick().run(|| load_or_warn(4096));
    assert_eq!(report.points().len(), 1, "{report}");
    report.assert_handled();
}

/// The last error, kept for a later `last_error()` call.
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

#[inline(never)]
fn reserve_or_remember(len: usize) -> Result<usize, ()> {
    let mut buffer: Vec<u8> = Vec::new();
    if let Err(e) = buffer.try_reserve(len) {
        *LAST_ERROR.lock().unwrap() = Some(format!("reserving {len} bytes: {e}"));
        return Err(());
    }
    Ok(buffer.capacity())
}

#[test]
fn a_last_error_slot_replaced_on_the_error_path_is_not_a_leak() {
    let report = quick().run(|| reserve_or_remember(4096));
    assert_eq!(report.points().len(), 1, "{report}");
    report.assert_handled();
}

/// A real leak grows again on every failure.
#[inline(never)]
fn reserve_or_leak(len: usize) -> Result<usize, ()> {
    let mut buffer: Vec<u8> = Vec::new();
    if buffer.try_reserve(len).is_err() {
        std::mem::forget(vec![0u8; 100]);
        return Err(());
    }
    Ok(buffer.capacity())
}

#[test]
fn a_leak_that_grows_again_is_a_leak() {
    let report = quick().run(|| reserve_or_leak(4096));
    assert_eq!(report.points()[0].outcome, Outcome::Leaked, "{report}");
    assert!(
        report.points()[0].detail.contains("100 bytes in 1 blocks"),
        "{report}"
    );
}
