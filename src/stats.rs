//! Counters of what the slow path did.
//!
//! Written only on the slow path (after the inner allocator returned null,
//! or when a thread's share of the heap limit's count runs out), with
//! relaxed atomic adds, on cache lines apart from the knobs the hot path
//! reads. Reading them never allocates.

use core::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// A snapshot of mayfail's counters, from [`stats`]. All fields count events
/// since the process started; use [`Stats::since`] for the events between two
/// snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Retry attempts made: calls to the inner allocator after a first null.
    pub retries: u64,
    /// Allocations that succeeded after at least one retry.
    pub recovered: u64,
    /// Nulls returned to callers after the policy gave up (or allowed no
    /// retry at all).
    pub failed: u64,
    /// Allocations that were still retrying after the stall threshold
    /// (counted once per allocation, even when the warning line was
    /// rate-limited away).
    pub stalls: u64,
    /// Calls made to registered reclaimers.
    pub reclaimer_calls: u64,
    /// Bytes the reclaimers said they freed.
    pub reclaimed_bytes: u64,
    /// Reclaimers that panicked (each is disabled after its panic).
    pub reclaimer_panics: u64,
    /// Allocations failed on purpose by fault injection (attributes or
    /// fail-nth).
    pub injected: u64,
    /// Passes over the reclaimers: after a null or a limit hit, above the
    /// soft mark, or on memory pressure.
    pub reclaim_passes: u64,
    /// Reclaim passes the background reclaimer ran because the heap count
    /// passed the soft mark (see `MAYFAIL_LIMIT_SOFT`).
    pub soft_reclaims: u64,
    /// Reclaim passes the background reclaimer ran because the kernel
    /// reported memory pressure (PSI, see `MAYFAIL_PRESSURE`).
    pub pressure_reclaims: u64,
    /// Allocations that found the heap limit in their way (each counted
    /// once, however many retries followed).
    pub limit_hits: u64,
    /// Allocations let past the heap limit: inside `nofail`, or mayfail's
    /// own slow path.
    pub limit_exceeded: u64,
    /// The heap limit in force, in bytes (`None`: no limit).
    pub limit: Option<u64>,
    /// Bytes counted against the heap limit now: the bytes live through
    /// `MayFail` plus up to 128 KiB per thread that the threads hold (see
    /// [`set_limit`](crate::set_limit)); 0 until a limit is first set.
    pub heap_bytes: u64,
    /// The highest `heap_bytes` seen.
    pub heap_peak: u64,
}

impl Stats {
    /// The events counted between `earlier` and `self` (the limit and the
    /// heap's figures are `self`'s).
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            retries: self.retries.saturating_sub(earlier.retries),
            recovered: self.recovered.saturating_sub(earlier.recovered),
            failed: self.failed.saturating_sub(earlier.failed),
            stalls: self.stalls.saturating_sub(earlier.stalls),
            reclaimer_calls: self.reclaimer_calls.saturating_sub(earlier.reclaimer_calls),
            reclaimed_bytes: self.reclaimed_bytes.saturating_sub(earlier.reclaimed_bytes),
            reclaimer_panics: self
                .reclaimer_panics
                .saturating_sub(earlier.reclaimer_panics),
            injected: self.injected.saturating_sub(earlier.injected),
            reclaim_passes: self.reclaim_passes.saturating_sub(earlier.reclaim_passes),
            soft_reclaims: self.soft_reclaims.saturating_sub(earlier.soft_reclaims),
            pressure_reclaims: self
                .pressure_reclaims
                .saturating_sub(earlier.pressure_reclaims),
            limit_hits: self.limit_hits.saturating_sub(earlier.limit_hits),
            limit_exceeded: self.limit_exceeded.saturating_sub(earlier.limit_exceeded),
            limit: self.limit,
            heap_bytes: self.heap_bytes,
            heap_peak: self.heap_peak,
        }
    }
}

#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) retries: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) reclaimer_calls: AtomicU64,
    pub(crate) reclaimed_bytes: AtomicU64,
    pub(crate) reclaimer_panics: AtomicU64,
    pub(crate) injected: AtomicU64,
    pub(crate) reclaim_passes: AtomicU64,
    pub(crate) limit_hits: AtomicU64,
    pub(crate) limit_exceeded: AtomicU64,
    pub(crate) soft_reclaims: AtomicU64,
    pub(crate) pressure_reclaims: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    retries: AtomicU64::new(0),
    recovered: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    stalls: AtomicU64::new(0),
    reclaimer_calls: AtomicU64::new(0),
    reclaimed_bytes: AtomicU64::new(0),
    reclaimer_panics: AtomicU64::new(0),
    injected: AtomicU64::new(0),
    reclaim_passes: AtomicU64::new(0),
    limit_hits: AtomicU64::new(0),
    limit_exceeded: AtomicU64::new(0),
    soft_reclaims: AtomicU64::new(0),
    pressure_reclaims: AtomicU64::new(0),
};

/// The heap limit's figures (see `limit`), on a line of their own: the
/// limit in force is read by every refill of a thread's share, the total
/// written by it.
#[repr(align(128))]
pub(crate) struct Heap {
    /// The limit in force, in bytes (`usize::MAX`: none).
    pub(crate) limit: AtomicUsize,
    /// Bytes live through `MayFail` plus every thread's credit and
    /// unfolded frees. Never below 0: frees of blocks allocated before the
    /// count started take it down to 0 at most (see `limit`).
    pub(crate) total: AtomicI64,
    /// The highest `total` seen.
    pub(crate) peak: AtomicI64,
}

pub(crate) static HEAP: Heap = Heap {
    limit: AtomicUsize::new(usize::MAX),
    total: AtomicI64::new(0),
    peak: AtomicI64::new(0),
};

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// A snapshot of the counters. Each field is read on its own, so a snapshot
/// taken while other threads are on the slow path may mix moments.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// let before = mayfail::stats();
/// mayfail::fail_nth(1); // the next allocation of this thread fails
/// let mut v: Vec<u8> = Vec::new();
/// assert!(mayfail::noretry(|| v.try_reserve(64)).is_err());
/// let after = mayfail::stats();
/// assert_eq!(after.injected - before.injected, 1);
/// ```
pub fn stats() -> Stats {
    let c = &COUNTERS;
    Stats {
        retries: c.retries.load(Relaxed),
        recovered: c.recovered.load(Relaxed),
        failed: c.failed.load(Relaxed),
        stalls: c.stalls.load(Relaxed),
        reclaimer_calls: c.reclaimer_calls.load(Relaxed),
        reclaimed_bytes: c.reclaimed_bytes.load(Relaxed),
        reclaimer_panics: c.reclaimer_panics.load(Relaxed),
        injected: c.injected.load(Relaxed),
        reclaim_passes: c.reclaim_passes.load(Relaxed),
        limit_hits: c.limit_hits.load(Relaxed),
        limit_exceeded: c.limit_exceeded.load(Relaxed),
        soft_reclaims: c.soft_reclaims.load(Relaxed),
        pressure_reclaims: c.pressure_reclaims.load(Relaxed),
        limit: match HEAP.limit.load(Relaxed) {
            usize::MAX => None,
            bytes => Some(bytes as u64),
        },
        // Never negative: the limit's count stops at 0 (see `limit`).
        heap_bytes: HEAP.total.load(Relaxed) as u64,
        heap_peak: HEAP.peak.load(Relaxed) as u64,
    }
}
