//! Reclaimers: callbacks that free cached memory when an allocation fails
//! (the kernel's shrinkers).
//!
//! The table is a fixed array of atomic slots, so registering never
//! allocates and running never locks. Reclaimers run on the failing thread,
//! under its "in reclaim" mark, between two attempts, and on the background
//! reclaimer's thread (`kswapd`: above the heap limit's soft mark, on memory
//! pressure); several threads may run them at once. A reclaimer that panics is caught, counted as having freed
//! nothing, reported once and removed from the table: its own state may be
//! broken, and leaving it in place would print a panic message on every retry.
//!
//! A reclaimer must not block: the failing thread may hold any lock, and a
//! reclaimer that waits for one its own thread holds never returns. Every
//! call in progress is noted in the watchdog's table, so that the watchdog
//! thread, not the stuck one, can report a call that takes too long.

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::kswapd;
use crate::report;
use crate::stats::{COUNTERS, bump};
use crate::sys;
use crate::text::StackBuf;
use crate::watchdog;

/// How many reclaimers can be registered at once.
pub const MAX_RECLAIMERS: usize = 16;

/// A reclaimer: called with the number of bytes wanted, returns how many
/// bytes it freed (an estimate is fine; `0` means "nothing").
pub type Reclaimer = fn(usize) -> usize;

const EMPTY: usize = 0;

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: AtomicUsize = AtomicUsize::new(EMPTY);
static TABLE: [AtomicUsize; MAX_RECLAIMERS] = [EMPTY_SLOT; MAX_RECLAIMERS];

/// The error from [`add_reclaimer`] when all [`MAX_RECLAIMERS`] slots are
/// taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReclaimersFull;

impl fmt::Display for ReclaimersFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "all {MAX_RECLAIMERS} reclaimer slots are taken; remove one with \
             mayfail::remove_reclaimer first"
        )
    }
}

impl std::error::Error for ReclaimersFull {}

/// Registers `f` to be called between retries of a failed allocation, with
/// the number of bytes wanted; it returns how many bytes it freed. Does not
/// allocate. Registering a function that is already registered does nothing.
/// The first call also starts mayfail's background reclaimer, which calls
/// the reclaimers when the heap limit's count passes its soft mark and when
/// the kernel reports memory pressure (see [`set_limit`](crate::set_limit));
/// in a forked child, which has no copy of that thread, the first call
/// there starts one of its own.
///
/// A reclaimer runs on whichever thread failed, possibly on several threads
/// at once, while that thread may hold any lock of the program: take locks
/// with `try_lock` and return `0` when busy. Allocations inside it are served
/// but never retried.
///
/// ```
/// fn drop_caches(wanted: usize) -> usize {
///     // free up to `wanted` bytes of cached data and say how much was freed
///     0
/// }
/// mayfail::add_reclaimer(drop_caches).expect("a free slot");
/// # mayfail::remove_reclaimer(drop_caches);
/// ```
pub fn add_reclaimer(f: Reclaimer) -> Result<(), ReclaimersFull> {
    let wanted = f as usize;
    watchdog::start();
    kswapd::start(run);
    if TABLE.iter().any(|slot| slot.load(Relaxed) == wanted) {
        return Ok(());
    }
    for (index, slot) in TABLE.iter().enumerate() {
        if slot
            .compare_exchange(EMPTY, wanted, Relaxed, Relaxed)
            .is_ok()
        {
            // Another thread may have added the same function meanwhile:
            // the copy in the lowest slot stays, the others go.
            let earlier = TABLE[..index]
                .iter()
                .any(|other| other.load(Relaxed) == wanted);
            if earlier {
                let _ = slot.compare_exchange(wanted, EMPTY, Relaxed, Relaxed);
            }
            return Ok(());
        }
    }
    Err(ReclaimersFull)
}

/// Removes `f` from the reclaimers; returns whether it was registered. A
/// thread already running it may still finish that call.
pub fn remove_reclaimer(f: Reclaimer) -> bool {
    let wanted = f as usize;
    let mut removed = false;
    for slot in &TABLE {
        removed |= slot
            .compare_exchange(wanted, EMPTY, Relaxed, Relaxed)
            .is_ok();
    }
    removed
}

/// Runs every registered reclaimer once, in slot order; returns the bytes
/// they said they freed. Must be called under the "in reclaim" guard.
pub(crate) fn run(wanted: usize) -> usize {
    bump(&COUNTERS.reclaim_passes);
    let mut freed = 0usize;
    for (index, slot) in TABLE.iter().enumerate() {
        let raw = slot.load(Relaxed);
        if raw == EMPTY {
            continue;
        }
        // SAFETY: non-empty slots only ever hold values made by `f as usize`
        // from a `Reclaimer` in `add_reclaimer`; function pointers are never
        // null and live for the whole program.
        let f: Reclaimer = unsafe { core::mem::transmute::<usize, Reclaimer>(raw) };
        bump(&COUNTERS.reclaimer_calls);
        let watched = watchdog::RUNNING.enter(index, raw);
        let result = catch_unwind(AssertUnwindSafe(|| f(wanted)));
        watchdog::RUNNING.leave(watched);
        match result {
            Ok(n) => {
                COUNTERS.reclaimed_bytes.fetch_add(n as u64, Relaxed);
                freed = freed.saturating_add(n);
            }
            Err(payload) => {
                report::drop_panic_payload(payload);
                if slot.compare_exchange(raw, EMPTY, Relaxed, Relaxed).is_ok() {
                    bump(&COUNTERS.reclaimer_panics);
                    report_panic(index, raw);
                }
            }
        }
    }
    freed
}

fn report_panic(index: usize, address: usize) {
    use core::fmt::Write;
    let mut line = StackBuf::<200>::new();
    let _ = write!(
        line,
        "mayfail: reclaimer #{index} (fn at {address:#x}) panicked; counted as 0 bytes freed \
         and removed"
    );
    sys::write_stderr(line.finish_line());
}
