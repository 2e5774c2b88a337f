//! The slow path: what happens after the inner allocator returned null.
//!
//! It decides how many retries the failed request gets (its [`Budget`]),
//! then loops: run the reclaimers, back off if they freed nothing, try the
//! same operation again, warn once if the allocation stalls. It runs under the
//! thread's "in reclaim" mark, so anything it calls that allocates (a
//! reclaimer, the logger) is served but never retried, and a failure inside it
//! returns null at once instead of recursing. It never takes a lock and never
//! lets a panic out.
//!
//! ## When a retry cannot help
//!
//! Retrying only makes sense if freeing memory could make the request
//! succeed. A request's *footprint* is its size, plus `align - 1` when its
//! alignment is larger than the 16 bytes allocators give for free; smallness
//! (against the small limit) is judged on the footprint too. A request is
//! deemed *incurable* when its footprint is larger than the address space the
//! process may use (the soft `RLIMIT_AS` when one is set, else the
//! architecture's: 128 TiB on 64-bit targets, 3 GiB on 32-bit ones) or than
//! the machine's RAM plus swap (the kernel refuses a single mapping that
//! large unless it overcommits without limit, in which case it does not
//! fail). Such a request fails at once, even inside `nofail`, like the
//! kernel's refusal of orders above `MAX_ORDER`: a `nofail` of 1 TiB on a
//! machine with 24 GiB fails instead of hanging. Every other request is
//! curable in principle and follows the knob.
//!
//! The knobs' defaults are those of the allocator whose slow path runs: two
//! `MayFail` values built with different defaults each keep theirs; the
//! setters and the environment apply to both.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

use crate::backoff::Backoff;
use crate::config::{self, Defaults};
use crate::limit;
use crate::reclaim;
use crate::report;
use crate::request::Request;
#[cfg(feature = "log")]
use crate::reserve;
use crate::scope::{self, Mode, ReclaimGuard};
use crate::stats::{COUNTERS, bump};
use crate::sys;

/// Why the slow path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The inner allocator returned null (or injection failed the attempt).
    Null,
    /// The request would have taken the heap limit's count `over` bytes
    /// past the limit; the inner allocator was not asked.
    Limit { over: usize },
}

/// How many rounds of reclaim a large request (above the small limit)
/// over the heap limit gets, as long as each round frees something: the
/// kernel's memory cgroup reclaims for allocations of every order before it
/// fails a charge (`MAX_RECLAIM_RETRIES`).
pub(crate) const LARGE_LIMIT_ROUNDS: usize = 16;

/// How many retries a failed request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Budget {
    /// Fail now.
    None,
    /// At most this many retries.
    Limited(usize),
    /// Until it succeeds.
    Forever,
}

/// The policy, as pure logic: the thread's scope first (innermost wins), then
/// the size against the small limit, then the knob.
pub(crate) fn budget(mode: Mode, size: usize, retries: isize, small_limit: usize) -> Budget {
    match mode {
        Mode::NoFail => Budget::Forever,
        Mode::NoRetry => Budget::None,
        Mode::Normal if size > small_limit => Budget::None,
        Mode::Normal => match retries {
            config::RETRY_FOREVER => Budget::Forever,
            n if n <= 0 => Budget::None,
            n => Budget::Limited(n as usize),
        },
    }
}

/// Alignments up to this come with any block of glibc's malloc (and most
/// allocators): they cost no extra space.
const FREE_ALIGN: usize = 16;

/// The memory a request needs at worst: its size, plus `align - 1` bytes to
/// find an aligned address when the alignment is larger than allocators give
/// for free. Smallness and curability are judged on it, so that 8 bytes
/// aligned to 1 TiB are neither small nor curable.
pub(crate) fn footprint(size: usize, align: usize) -> usize {
    if align <= FREE_ALIGN {
        size
    } else {
        size.saturating_add(align - 1)
    }
}

/// The largest footprint that freed memory could ever make room for: the
/// address space the process may use (the soft `RLIMIT_AS`, else the
/// architecture's user address space) and the memory the machine has (RAM
/// plus swap: the kernel refuses a single mapping larger than that unless it
/// overcommits without limit, and then such a request does not fail).
fn curable_limit() -> usize {
    const USER_SPACE: u64 = if cfg!(target_pointer_width = "64") {
        1 << 47
    } else {
        3 << 30
    };
    let mut limit = sys::address_space_limit().map_or(USER_SPACE, |l| l.min(USER_SPACE));
    if let Some(memory) = sys::memory_and_swap() {
        limit = limit.min(memory);
    }
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Handles a null from the inner allocator for `request`, or a request
/// over the heap limit (`cause`): retries according to the policy, returns
/// the block or null. While the heap limit counts, every attempt is charged
/// first, and one over the limit fails as a null would. A large request
/// over the limit, which the knob would fail at once, gets up to
/// [`LARGE_LIMIT_ROUNDS`] rounds, while the reclaimers free something.
/// `owner` is the address of the `MayFail` value whose slow path this is
/// (see `reserve`), `defaults` its compiled defaults.
///
/// # Safety
///
/// As for [`Request::attempt`].
#[cold]
#[inline(never)]
#[cfg_attr(not(feature = "log"), allow(unused_variables))] // `owner` serves logging
pub(crate) unsafe fn after_null<A: GlobalAlloc>(
    owner: usize,
    inner: &A,
    defaults: &Defaults,
    layout: Layout,
    request: Request,
    cause: Cause,
) -> *mut u8 {
    let mode = scope::mode();
    let mut over = match cause {
        Cause::Null => 0,
        Cause::Limit { over } => {
            bump(&COUNTERS.limit_hits);
            limit::refresh_if_due();
            over
        }
    };
    let Some(_reclaiming) = ReclaimGuard::enter() else {
        // A failure inside our own slow path (a reclaimer, the logger):
        // never retried, never recursing.
        bump(&COUNTERS.failed);
        return ptr::null_mut();
    };
    let size = request.size(layout);
    let align = layout.align();
    let footprint = footprint(size, align);
    let mut stall = Stall::new(size, align, mode);
    let mut backoff = Backoff::new();
    let mut retries: u64 = 0;
    let mut checked_curable = false;
    let charged = Charged::new(layout, request);
    let mut large_rounds = 0usize;
    loop {
        let budget = round_budget(defaults, mode, footprint, over);
        let allowed = match budget {
            Budget::None => false,
            Budget::Limited(n) => retries < n as u64,
            Budget::Forever => true,
        };
        if !allowed {
            break;
        }
        if !checked_curable {
            if footprint > curable_limit() {
                break;
            }
            checked_curable = true;
        }
        // Nothing larger than the limit itself ever fits under it.
        if over > 0 && limit::bytes().is_some_and(|l| charged.charge > l) {
            break;
        }
        let large_over = over > 0 && budget == Budget::Limited(LARGE_LIMIT_ROUNDS);
        let freed = reclaim::run(if over > 0 { over } else { size });
        if freed == 0 && !large_over {
            backoff.next_pause().wait();
        } else {
            backoff.reset();
        }
        if large_over {
            large_rounds += 1;
        }
        retries += 1;
        bump(&COUNTERS.retries);
        // SAFETY: the caller's contract, for the same request.
        let block = unsafe { charged.attempt(inner, layout, request, mode, &mut over) };
        if !block.is_null() {
            bump(&COUNTERS.recovered);
            return block;
        }
        // A large request over the limit stops once reclaim stops freeing.
        if large_over && (freed == 0 || large_rounds >= LARGE_LIMIT_ROUNDS) && over > 0 {
            break;
        }
        stall.check(defaults, retries, over);
    }
    bump(&COUNTERS.failed);
    #[cfg(feature = "log")]
    if !scope::quiet() && report::failure_log_due() {
        reserve::spend(owner, inner, || report::log_failure(size, align, retries));
    }
    ptr::null_mut()
}

/// The budget of one round: the knob, read again on every round (so that a
/// stalled process can be rescued by `set_retries` from another thread),
/// or [`LARGE_LIMIT_ROUNDS`] for a large request over the heap limit.
fn round_budget(defaults: &Defaults, mode: Mode, footprint: usize, over: usize) -> Budget {
    let small_limit = config::current_small_limit(defaults);
    let budget = budget(
        mode,
        footprint,
        config::current_retries(defaults),
        small_limit,
    );
    if over > 0 && mode == Mode::Normal && footprint > small_limit {
        Budget::Limited(LARGE_LIMIT_ROUNDS)
    } else {
        budget
    }
}

/// What each attempt charges the heap limit's count, and what a success
/// gives back (a realloc's shrinkage), while the count is on.
struct Charged {
    counting: bool,
    charge: usize,
    refund: usize,
}

impl Charged {
    fn new(layout: Layout, request: Request) -> Charged {
        let (charge, refund) = match request {
            Request::Realloc { new_size, .. } => limit::delta(layout.size(), new_size, true),
            _ => limit::delta(0, layout.size(), false),
        };
        Charged {
            counting: limit::counting(),
            charge,
            refund,
        }
    }

    /// One attempt: charged first while the count is on (one over the
    /// limit fails as a null would, and sets `over`), then the inner
    /// allocator. A thread a sweep left exhausted fails every attempt.
    ///
    /// # Safety
    ///
    /// As for [`Request::attempt`].
    unsafe fn attempt<A: GlobalAlloc>(
        &self,
        inner: &A,
        layout: Layout,
        request: Request,
        mode: Mode,
        over: &mut usize,
    ) -> *mut u8 {
        if scope::exhausted() {
            // A sweep's persistent mode: this attempt fails too.
            return ptr::null_mut();
        }
        if !self.counting {
            // SAFETY: same operation, same arguments as the call that
            // failed; on failure a realloc leaves `ptr` untouched, so it is
            // still live.
            return unsafe { request.attempt(inner, layout) };
        }
        if let Err(still_over) = limit::charge(self.charge, mode == Mode::NoFail) {
            *over = still_over;
            return ptr::null_mut();
        }
        *over = 0;
        // SAFETY: as above.
        let block = unsafe { request.attempt(inner, layout) };
        if block.is_null() {
            limit::uncharge(self.charge);
        } else if self.refund > 0 {
            limit::uncharge(self.refund);
        }
        block
    }
}

/// The stall warning: once per failed request, when its retries have gone
/// on longer than the stall threshold.
struct Stall {
    size: usize,
    align: usize,
    nofail: bool,
    start: u64,
    warned: bool,
}

impl Stall {
    fn new(size: usize, align: usize, mode: Mode) -> Stall {
        Stall {
            size,
            align,
            nofail: mode == Mode::NoFail,
            start: sys::now_ns(),
            warned: false,
        }
    }

    /// Warns if the request has stalled past the threshold (once).
    fn check(&mut self, defaults: &Defaults, retries: u64, over: usize) {
        if self.warned {
            return;
        }
        let threshold = config::current_stall_ms(defaults);
        let stalled_ms = sys::now_ns().saturating_sub(self.start) / 1_000_000;
        if threshold != 0 && stalled_ms >= threshold {
            self.warned = true;
            bump(&COUNTERS.stalls);
            let limit = if over > 0 { limit::bytes() } else { None };
            report::stall(
                self.size,
                self.align,
                retries,
                stalled_ms,
                self.nofail,
                limit,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K32: usize = 32 * 1024;

    #[test]
    fn small_requests_follow_the_knob() {
        assert_eq!(budget(Mode::Normal, 64, -1, K32), Budget::Forever);
        assert_eq!(budget(Mode::Normal, 64, 0, K32), Budget::None);
        assert_eq!(budget(Mode::Normal, 64, 3, K32), Budget::Limited(3));
        assert_eq!(budget(Mode::Normal, K32, 3, K32), Budget::Limited(3));
    }

    #[test]
    fn large_requests_fail_at_once_outside_nofail() {
        assert_eq!(budget(Mode::Normal, K32 + 1, -1, K32), Budget::None);
        assert_eq!(budget(Mode::NoFail, K32 + 1, 0, K32), Budget::Forever);
    }

    #[test]
    fn scopes_override_the_knob() {
        assert_eq!(budget(Mode::NoFail, 64, 0, K32), Budget::Forever);
        assert_eq!(budget(Mode::NoRetry, 64, -1, K32), Budget::None);
        assert_eq!(budget(Mode::NoRetry, 64, 5, K32), Budget::None);
    }

    #[test]
    fn a_zero_small_limit_makes_every_request_large() {
        assert_eq!(budget(Mode::Normal, 1, -1, 0), Budget::None);
    }

    #[test]
    fn the_footprint_counts_alignment_beyond_what_comes_free() {
        assert_eq!(footprint(64, 8), 64);
        assert_eq!(footprint(K32, 16), K32);
        assert_eq!(footprint(4096, 2 << 20), 4096 + (2 << 20) - 1);
        assert_eq!(footprint(8, 1 << 40), 8 + (1 << 40) - 1);
        assert_eq!(footprint(usize::MAX, 1 << 12), usize::MAX);
        // A small size with a large alignment is not small.
        let small = footprint(8, 1 << 20);
        assert_eq!(budget(Mode::Normal, small, -1, K32), Budget::None);
    }

    #[test]
    #[cfg_attr(miri, ignore = "getrlimit and sysinfo are calls Miri cannot make")]
    fn nothing_larger_than_the_machine_is_curable() {
        let limit = curable_limit();
        assert!(limit > 1 << 20);
        assert!((limit as u64) <= sys::memory_and_swap().unwrap_or(u64::MAX));
    }
}
