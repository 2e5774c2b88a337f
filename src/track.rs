//! Leak tracking for a sweep run: which blocks allocated during the
//! operation are still live after it.
//!
//! Used only inside a sweep's child process, between `start` and `stop`.
//! While tracking is on, the engaged path records every block it hands out
//! in an open-addressing table of (address, size) that lives in an anonymous
//! mapping (so recording never allocates), and `dealloc` removes them. The
//! table is process-wide and lock-free for one writer; a sweep's child runs
//! the operation on one thread (an operation that spawns threads is tracked
//! on a best-effort basis: entries are claimed with compare-and-swap).

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::Relaxed};

/// Slots in the table: 256 Ki entries (live blocks of one operation), 4 MiB
/// of address space, touched only as far as it is used.
const SLOTS: usize = 1 << 18;
const EMPTY: usize = 0;
const REMOVED: usize = 1;

#[repr(C)]
struct Slot {
    address: AtomicUsize,
    size: AtomicUsize,
}

static TABLE: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());
static ON: AtomicBool = AtomicBool::new(false);
static OVERFLOW: AtomicBool = AtomicBool::new(false);
/// Running totals of what the table holds, so that `stop` need not scan it.
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

/// Whether blocks are being tracked.
#[inline]
pub(crate) fn on() -> bool {
    ON.load(Relaxed)
}

/// Starts tracking with an empty table. Returns false if the table could not
/// be mapped.
pub(crate) fn start() -> bool {
    let len = SLOTS * core::mem::size_of::<Slot>();
    let old = TABLE.load(Relaxed);
    if !old.is_null() {
        // SAFETY: the table was mapped with this length in an earlier start
        // and tracking is off, so nothing reads it any more.
        unsafe { crate::sys::unmap(old.cast(), len) };
    }
    // Zero-filled pages are empty slots.
    let Some(table) = crate::sys::map_anonymous(len) else {
        TABLE.store(ptr::null_mut(), Relaxed);
        return false;
    };
    TABLE.store(table.cast(), Relaxed);
    OVERFLOW.store(false, Relaxed);
    LIVE_BYTES.store(0, Relaxed);
    LIVE_BLOCKS.store(0, Relaxed);
    ON.store(true, Relaxed);
    // Frees are seen only on the engaged path.
    crate::engaged::set(crate::engaged::TRACKING, true);
    true
}

/// Stops tracking; returns the bytes and blocks still recorded, or `None`
/// if the table overflowed.
pub(crate) fn stop() -> Option<(u64, u64)> {
    ON.store(false, Relaxed);
    crate::engaged::set(crate::engaged::TRACKING, false);
    let table = TABLE.load(Relaxed);
    if table.is_null() || OVERFLOW.load(Relaxed) {
        return None;
    }
    Some((
        LIVE_BYTES.load(Relaxed) as u64,
        LIVE_BLOCKS.load(Relaxed) as u64,
    ))
}

fn home(address: usize) -> usize {
    (address.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 46) % SLOTS
}

/// Records a block handed out while tracking.
pub(crate) fn record(address: usize, size: usize) {
    let table = TABLE.load(Relaxed);
    if table.is_null() || address <= REMOVED {
        return;
    }
    let start = home(address);
    for probe in 0..SLOTS {
        // SAFETY: the index is reduced modulo SLOTS.
        let slot = unsafe { &*table.add((start + probe) % SLOTS) };
        let current = slot.address.load(Relaxed);
        if (current == EMPTY || current == REMOVED)
            && slot
                .address
                .compare_exchange(current, address, Relaxed, Relaxed)
                .is_ok()
        {
            slot.size.store(size, Relaxed);
            LIVE_BYTES.fetch_add(size, Relaxed);
            LIVE_BLOCKS.fetch_add(1, Relaxed);
            return;
        }
    }
    OVERFLOW.store(true, Relaxed);
}

/// Forgets a block that is freed (or moved by realloc). Blocks that were
/// not recorded (allocated before tracking started) are ignored.
pub(crate) fn forget(address: usize) {
    let table = TABLE.load(Relaxed);
    if table.is_null() {
        return;
    }
    let start = home(address);
    for probe in 0..SLOTS {
        // SAFETY: the index is reduced modulo SLOTS.
        let slot = unsafe { &*table.add((start + probe) % SLOTS) };
        let current = slot.address.load(Relaxed);
        if current == address {
            LIVE_BYTES.fetch_sub(slot.size.load(Relaxed), Relaxed);
            LIVE_BLOCKS.fetch_sub(1, Relaxed);
            slot.address.store(REMOVED, Relaxed);
            return;
        }
        if current == EMPTY {
            return;
        }
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
