//! The one shared word the allocator's success path reads.
//!
//! Non-zero while allocations must take the engaged (out-of-line) path:
//! until the environment has been read ([`NOT_STARTED`]), while injection is
//! on ([`INJECTING`]), while a sweep's child tracks blocks ([`TRACKING`]),
//! while a heap limit counts bytes ([`LIMIT_LANE`], [`LIMITED`]), and while
//! any thread has a fail-nth countdown (counted in units of
//! [`ARMED_THREAD`]). It sits alone on its cache line: it is written only
//! when one of those states changes, never per allocation.
//!
//! A leaf: it depends on nothing else in the crate, and never allocates,
//! locks or panics.

use core::sync::atomic::{
    AtomicU32,
    Ordering::{Acquire, Relaxed, Release},
};

// The low byte holds what `dealloc` must see (its test is `cmp byte ptr
// [WORD], LIMIT_LANE`: below is idle, equal is the limit's in-place lane);
// the reasons only allocations care about sit above it.

/// Set while a heap limit counts in place (see `limit`): allocations and
/// frees are counted by the in-place lanes of `alloc.rs` when the word
/// (for a free, its low byte) is exactly this bit. Set only where they can
/// (x86-64, mayfail linked into the executable: `scope::STATE_OFFSET`).
pub(crate) const LIMIT_LANE: u32 = 1;
/// Set while a sweep's child tracks blocks: frees take the engaged path too.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) const TRACKING: u32 = 2;
/// Set while a heap limit counts out of line (where the lanes cannot):
/// every allocation and free is counted on the engaged path.
pub(crate) const LIMITED: u32 = 4;
/// Set until the first allocation has read the environment.
pub(crate) const NOT_STARTED: u32 = 1 << 8;
/// Set while injection by attributes is on.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) const INJECTING: u32 = 1 << 9;
/// Added once per thread with a running fail-nth countdown.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) const ARMED_THREAD: u32 = 1 << 16;

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

/// The word as it is now.
#[inline(always)]
pub(crate) fn word() -> u32 {
    ENGAGED.0.load(Relaxed)
}

/// Whether `flag` is set.
#[inline(always)]
pub(crate) fn is_set(flag: u32) -> bool {
    ENGAGED.0.load(Relaxed) & flag != 0
}

/// Sets or clears `flag`, and starts a new generation: a pass granted
/// before the change (see [`GENERATION`]) no longer holds.
pub(crate) fn set(flag: u32, on: bool) {
    if on {
        ENGAGED.0.fetch_or(flag, Relaxed);
    } else {
        ENGAGED.0.fetch_and(!flag, Relaxed);
    }
    new_generation();
}

/// The generation of what decides an allocation's fate: bumped by every
/// change of the flags above, of the injection attributes and of the stack
/// filter. A thread's passes (allocations the engaged path lets through
/// without a decision, see `scope::take_pass`) hold only for the generation
/// they were granted under. Never 0, which a thread's pass key uses for
/// "no pass".
pub(crate) static GENERATION: AtomicU32 = AtomicU32::new(1);

/// The generation in force. Acquire: what the change that started it wrote
/// (the flags, the attributes) is seen after it.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
#[inline(always)]
pub(crate) fn generation() -> u32 {
    GENERATION.load(Acquire)
}

/// The generation in force, as the engaged path's fast lane reads it: a
/// relaxed load (the fast lane compares it with the thread's own pass key
/// and reads nothing the change wrote). On x86-64 one `mov` from the
/// static's RIP-relative address, without the load of that address from the
/// GOT that a `static` of another crate costs in generic code compiled
/// there (the allocator's).
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
#[inline(always)]
pub(crate) fn generation_relaxed() -> u32 {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        let generation: u32;
        // SAFETY: reads the 4-byte, aligned atomic `GENERATION` (a static:
        // always mapped) without a lock prefix, as a relaxed load does;
        // writes no memory, no flags and no stack.
        unsafe {
            core::arch::asm!(
                "mov {g:e}, dword ptr [rip + {word}]",
                word = sym GENERATION,
                g = out(reg) generation,
                options(nostack, preserves_flags, readonly),
            );
        }
        generation
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    GENERATION.load(Relaxed)
}

/// Starts a new generation (skipping 0).
pub(crate) fn new_generation() {
    let _ = GENERATION.fetch_update(Release, Relaxed, |g| Some(g.checked_add(1).unwrap_or(1)));
}

/// One more thread has a fail-nth countdown: every allocation must be counted.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn arm_thread() {
    ENGAGED.0.fetch_add(ARMED_THREAD, Relaxed);
}

/// A thread's fail-nth countdown ended (fired or disarmed).
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn disarm_thread() {
    ENGAGED.0.fetch_sub(ARMED_THREAD, Relaxed);
}

/// How many threads count down a fail-nth (or stay exhausted after one).
#[cfg(all(test, feature = "inject"))]
pub(crate) fn armed_threads() -> u32 {
    ENGAGED.0.load(Relaxed) / ARMED_THREAD
}

/// Sets the count of armed threads to `armed`, keeping the flags: in a
/// forked child, where the threads that armed in the parent do not exist.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn set_armed_threads(armed: u32) {
    let _ = ENGAGED.0.fetch_update(Relaxed, Relaxed, |word| {
        Some(word % ARMED_THREAD + armed * ARMED_THREAD)
    });
}
