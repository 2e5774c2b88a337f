//! The one shared word the allocator's success path reads.
//!
//! Non-zero while allocations must take the engaged (out-of-line) path:
//! until the environment has been read ([`NOT_STARTED`]), while injection is
//! on ([`INJECTING`]), while a sweep's child tracks blocks ([`TRACKING`]),
//! and while any thread has a fail-nth countdown (counted in units of
//! [`ARMED_THREAD`]). It sits alone on its cache line: it is written only
//! when one of those states changes, never per allocation.
//!
//! A leaf: it depends on nothing else in the crate, and never allocates,
//! locks or panics.

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Set until the first allocation has read the environment.
pub(crate) const NOT_STARTED: u32 = 1;
/// Set while injection by attributes is on.
pub(crate) const INJECTING: u32 = 2;
/// Set while a sweep's child tracks blocks: frees take the engaged path too.
pub(crate) const TRACKING: u32 = 4;
/// Added once per thread with a running fail-nth countdown.
pub(crate) const ARMED_THREAD: u32 = 1 << 8;

/// The word, alone on its cache line (written only when one of the states
/// above changes, never per allocation).
#[repr(C, align(128))]
pub(crate) struct Word(AtomicU32);

/// The engaged word. The allocator's success path tests it in place (see
/// `alloc.rs`): on x86-64 with one `cmp` against its RIP-relative address.
pub(crate) static ENGAGED: Word = Word(AtomicU32::new(NOT_STARTED));

/// Whether allocations must go through the engaged path (the portable form
/// of the test `alloc.rs` makes in place on x86-64).
#[cfg_attr(all(target_arch = "x86_64", not(miri)), allow(dead_code))]
#[inline(always)]
pub(crate) fn engaged() -> bool {
    ENGAGED.0.load(Relaxed) != 0
}

/// Whether `flag` is set.
#[inline(always)]
pub(crate) fn is_set(flag: u32) -> bool {
    ENGAGED.0.load(Relaxed) & flag != 0
}

/// Sets or clears `flag`.
pub(crate) fn set(flag: u32, on: bool) {
    if on {
        ENGAGED.0.fetch_or(flag, Relaxed);
    } else {
        ENGAGED.0.fetch_and(!flag, Relaxed);
    }
}

/// One more thread has a fail-nth countdown: every allocation must be counted.
pub(crate) fn arm_thread() {
    ENGAGED.0.fetch_add(ARMED_THREAD, Relaxed);
}

/// A thread's fail-nth countdown ended (fired or disarmed).
pub(crate) fn disarm_thread() {
    ENGAGED.0.fetch_sub(ARMED_THREAD, Relaxed);
}
