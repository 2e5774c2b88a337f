//! Leak tracking for a sweep run: which blocks allocated during the
//! operation are still live after it.
//!
//! Used only inside a sweep's child process, between [`start`] and [`stop`].
//! While tracking is on, the engaged path records every block it hands out
//! in a [`Table`] of address to size (an anonymous mapping, so recording
//! never allocates), and `dealloc` removes it. Running totals make `stop`
//! cheap. A sweep's child runs the operation on one thread; an operation
//! that spawns threads is tracked as well as the table's compare-and-swap
//! allows. Nothing here allocates, locks or panics.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::engaged::{self, TRACKING};
use crate::table::{Inserted, Table};

/// Live blocks one operation may leave before tracking gives up: 1 Mi
/// entries, 16 MiB of address space, touched only as far as it is used.
const CAPACITY: usize = if cfg!(miri) { 1 << 10 } else { 1 << 20 };

static TABLE: Table = Table::new();
static ON: AtomicBool = AtomicBool::new(false);
static OVERFLOW: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE_BLOCKS: AtomicU64 = AtomicU64::new(0);

/// Whether blocks are being tracked.
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Relaxed)
}

/// Starts tracking with an empty table. Returns false if the table could not
/// be mapped.
pub(crate) fn start() -> bool {
    // SAFETY: tracking is off, so nothing reads the old table.
    if !unsafe { TABLE.create(CAPACITY / 3 * 4, true) } {
        return false;
    }
    OVERFLOW.store(false, Relaxed);
    LIVE_BYTES.store(0, Relaxed);
    LIVE_BLOCKS.store(0, Relaxed);
    ON.store(true, Relaxed);
    // Frees are seen only on the engaged path.
    engaged::set(TRACKING, true);
    true
}

/// Stops tracking; returns the bytes and blocks still recorded, or `None`
/// if the table overflowed: then some blocks went unrecorded, and whether
/// the operation leaked is unknown (never "nothing leaked").
pub(crate) fn stop() -> Option<(u64, u64)> {
    ON.store(false, Relaxed);
    engaged::set(TRACKING, false);
    if OVERFLOW.load(Relaxed) {
        return None;
    }
    Some((LIVE_BYTES.load(Relaxed), LIVE_BLOCKS.load(Relaxed)))
}

/// The bytes and blocks recorded so far, tracking going on; `None` if the
/// table overflowed.
pub(crate) fn live() -> Option<(u64, u64)> {
    if OVERFLOW.load(Relaxed) {
        return None;
    }
    Some((LIVE_BYTES.load(Relaxed), LIVE_BLOCKS.load(Relaxed)))
}

/// Records a block handed out while tracking.
pub(crate) fn record(address: usize, size: usize) {
    match TABLE.insert(address as u64, size as u64, true) {
        Inserted::New => {
            LIVE_BYTES.fetch_add(size as u64, Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
        }
        Inserted::Present => {}
        Inserted::Full => OVERFLOW.store(true, Relaxed),
    }
}

/// Forgets a block that is freed (or moved by realloc). Blocks that were
/// not recorded (allocated before tracking started) are ignored.
pub(crate) fn forget(address: usize) {
    if let Some(size) = TABLE.remove(address as u64) {
        LIVE_BYTES.fetch_sub(size, Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_forgets_and_sums_what_is_left() {
        assert!(start());
        for i in 0..1000usize {
            record(0x1000 + i * 64, 10 + i);
        }
        for i in (0..1000usize).filter(|i| i % 2 == 0) {
            forget(0x1000 + i * 64);
        }
        forget(0xdead_0000);
        record(0x1000, 7);
        let left = stop().unwrap();
        let expected: u64 = (0..1000u64)
            .filter(|i| i % 2 == 1)
            .map(|i| 10 + i)
            .sum::<u64>()
            + 7;
        assert_eq!(left, (expected, 501));
        assert!(!on());
    }
}
