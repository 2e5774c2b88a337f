//! Per-thread scopes, after the kernel's GFP flags and its
//! `memalloc_*_save`/`restore` scope API.
//!
//! A thread is in one mode at a time: normal, [`nofail`] (retry until the
//! allocation succeeds, whatever its size and the knob) or [`noretry`] (fail
//! at once). Scopes nest and the innermost wins; each guard puts back the mode
//! it found, also when the scope unwinds. Separately, a thread is marked
//! "in reclaim" while mayfail's slow path runs on it (the kernel's
//! `PF_MEMALLOC`): a failure then returns null at once, so the slow path can
//! never recurse.
//!
//! The state is one `const`-initialised thread-local without a destructor:
//! reading it never allocates, never registers a destructor and works during
//! thread teardown. It also holds the thread's fail-nth countdown, its
//! injection ledger (its allocation number, its passes and the rule's
//! counters: owned by `pass`) and its share of the heap limit's count
//! (`limit`), so that the engaged path touches one thread-local. The success
//! path never reads it; the in-place lanes do (see [`take_pass`] and
//! `arch`).

use core::cell::Cell;
use core::marker::PhantomData;

use crate::engaged;
use crate::pass::{Counters, Horizon, Ledger};

const MODE_MASK: u8 = 0b11;
const MODE_NOFAIL: u8 = 1;
const MODE_NORETRY: u8 = 2;
const IN_RECLAIM: u8 = 0b100;
const NOWARN: u8 = 0b1000;
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) const MAKE_IT_FAIL: u8 = 0b1_0000;

/// Everything mayfail keeps per thread. `repr(C)`: the in-place lanes on
/// x86-64 (`arch`) reach the ledger's and the limit's fields from the
/// thread pointer at offsets `core::mem::offset_of!` gives.
#[repr(C)]
struct ThreadState {
    flags: Cell<u8>,
    /// Whether the countdown, when it fires, leaves the thread "exhausted":
    /// that and every later attempt fails (a sweep's persistent mode).
    persistent: Cell<bool>,
    /// Set when a persistent countdown fired.
    exhausted: Cell<bool>,
    /// The fail-nth countdown: 0 = not armed (or fired).
    fail_nth: Cell<u64>,
    /// The injection ledger: the thread's allocation count, its passes and
    /// the rule's counters (see `pass`).
    ledger: Ledger,
    /// The thread's share of the heap limit's count (see `limit`).
    limit: LimitCells,
}

/// What a thread keeps of the heap limit's count (see `limit`): bytes it
/// may still allocate without touching the shared total, and bytes it freed
/// since it last folded them in. The in-place lanes of `alloc.rs` write
/// them from the thread pointer on x86-64 ([`CREDIT_AT`], [`FREED_AT`]).
#[repr(C)]
pub(crate) struct LimitCells {
    /// Bytes this thread may still allocate. The in-place lane subtracts a
    /// request's size and passes unless that borrows; a borrow leaves the
    /// difference wrapped (above `i64::MAX`) for the slow path to undo.
    pub(crate) credit: Cell<u64>,
    /// [`FREED_START`] plus the bytes freed since the last fold: the lane
    /// adds a block's size and leaves its success path when the sum turns
    /// negative, i.e. once more than `limit::BATCH` bytes were freed. Until
    /// the thread's exit hands its share back (`registered`), it starts at
    /// [`FREED_FRESH`] instead, so that the thread's first free leaves the
    /// success path and registers the hand-back.
    pub(crate) freed: Cell<i64>,
    /// Whether the thread's exit hands its share back (see `limit`); the
    /// freed count counts from [`FREED_START`] once it does, from
    /// [`FREED_FRESH`] before.
    pub(crate) registered: Cell<bool>,
}

/// Where a registered thread's freed count starts: it turns negative (the
/// lane's `js`) once more than 64 KiB were added to it.
pub(crate) const FREED_START: i64 = i64::MAX - (64 << 10);

/// Where a thread's freed count starts before its exit hands its share
/// back: any free turns it negative.
pub(crate) const FREED_FRESH: i64 = i64::MAX;

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            flags: Cell::new(0),
            persistent: Cell::new(false),
            exhausted: Cell::new(false),
            fail_nth: Cell::new(0),
            ledger: Ledger::new(),
            limit: LimitCells {
                credit: Cell::new(0),
                freed: Cell::new(FREED_FRESH),
                registered: Cell::new(false),
            },
        }
    };
}

/// Runs `f` on this thread's share of the heap limit's count; `None` once
/// the thread-local is gone (thread teardown).
pub(crate) fn with_limit_cells<R>(f: impl FnOnce(&LimitCells) -> R) -> Option<R> {
    STATE.try_with(|s| f(&s.limit)).ok()
}

/// Where the thread's limit credit (`u64`) lies in its state, for the
/// in-place lane (see [`STATE_OFFSET`]).
#[cfg(all(target_arch = "x86_64", not(miri)))]
pub(crate) const CREDIT_AT: usize =
    core::mem::offset_of!(ThreadState, limit) + core::mem::offset_of!(LimitCells, credit);
/// Where the thread's freed count (`i64`) lies in its state.
#[cfg(all(target_arch = "x86_64", not(miri)))]
pub(crate) const FREED_AT: usize =
    core::mem::offset_of!(ThreadState, limit) + core::mem::offset_of!(LimitCells, freed);

/// What the current scope asks of a failed allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Normal,
    NoFail,
    NoRetry,
}

fn state() -> u8 {
    STATE.try_with(|s| s.flags.get()).unwrap_or(0)
}

fn set_state(value: u8) {
    let _ = STATE.try_with(|s| {
        s.flags.set(value);
        // The passes were decided under the old scope.
        s.ledger.void();
    });
}

/// Lets this allocation pass without a decision if the injection rule said
/// so under the generation `generation` (the one in force): counts it and
/// returns `true` (see `pass::Ledger::take`). The engaged path's fast lane:
/// one thread-local access, one compare, one decrement; no shared write.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
#[inline]
pub(crate) fn take_pass(generation: u32) -> bool {
    STATE
        .try_with(|s| s.ledger.take(generation))
        .unwrap_or(false)
}

/// Where the fast lane's pass key (`u32`) lies in the thread's state, for
/// the in-place lane on x86-64 (`arch`), which makes [`take_pass`]'s test at
/// [`STATE_OFFSET`] from the thread pointer.
#[cfg(all(target_arch = "x86_64", not(miri), feature = "inject"))]
pub(crate) const PASS_KEY_AT: usize =
    core::mem::offset_of!(ThreadState, ledger) + core::mem::offset_of!(Ledger, pass_key);
/// Where the passes (`i64`) lie in the thread's state (see [`PASS_KEY_AT`]).
#[cfg(all(target_arch = "x86_64", not(miri), feature = "inject"))]
pub(crate) const PASSES_AT: usize =
    core::mem::offset_of!(ThreadState, ledger) + core::mem::offset_of!(Ledger, passes);

/// Where every thread's state lies relative to its thread pointer (`fs:0`
/// on x86-64, which holds the thread pointer itself), for the in-place fast
/// lane; 0 while unknown, or when it is not the same in every thread.
///
/// The thread-local sits in the static TLS block of the file mayfail is
/// linked into. The x86-64 ELF TLS ABI places the executable's block at a
/// fixed, link-time offset below the thread pointer in every thread. A
/// shared library's block may instead be allocated per thread on first use
/// (one opened with `dlopen`), at no fixed offset: the offset is set only
/// when mayfail is linked into the executable. Otherwise the in-place lane
/// stays off and the out-of-line engaged path takes the passes.
#[cfg(all(target_arch = "x86_64", not(miri)))]
pub(crate) static STATE_OFFSET: core::sync::atomic::AtomicIsize =
    core::sync::atomic::AtomicIsize::new(0);

/// Sets [`STATE_OFFSET`] if mayfail is linked into the executable. Once per
/// process, at start-up (asks the loader: takes its lock).
#[cfg(all(target_arch = "x86_64", not(miri)))]
pub(crate) fn find_state_offset() {
    use core::sync::atomic::Ordering::Release;
    if !in_executable(find_state_offset as *const () as usize) {
        return;
    }
    let Ok(state) = STATE.try_with(|s| s as *const ThreadState as usize) else {
        return;
    };
    let thread_pointer: usize;
    // SAFETY: reads the first word of the thread control block, which the
    // x86-64 TLS ABI makes the thread pointer itself; writes nothing.
    unsafe {
        core::arch::asm!(
            "mov {tp}, qword ptr fs:[0]",
            tp = out(reg) thread_pointer,
            options(nostack, preserves_flags, readonly),
        );
    }
    STATE_OFFSET.store(state.wrapping_sub(thread_pointer) as isize, Release);
}

/// Whether `addr` lies in the program's executable (the file holding its
/// entry point), as the loader knows it. `false` when the loader cannot
/// tell (a static executable).
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn in_executable(addr: usize) -> bool {
    // SAFETY: reads the auxiliary vector the kernel passed; 0 if absent.
    let entry = unsafe { libc::getauxval(libc::AT_ENTRY) } as usize;
    match (file_base(entry), file_base(addr)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The load address of the file holding `addr`, asked of the loader.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn file_base(addr: usize) -> Option<usize> {
    if addr == 0 {
        return None;
    }
    // SAFETY: an all-zero Dl_info is valid; dladdr fills it or fails.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: any address may be asked about; `info` is writable.
    if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0
        || info.dli_fbase.is_null()
    {
        return None;
    }
    Some(info.dli_fbase as usize)
}

/// Turns the injection rule's horizon for an allocation decided under
/// `generation` into passes (see `pass::Ledger::grant`). Passes granted
/// while a sweep's child tracks blocks or the heap limit counts are never
/// taken by the fast lane (every allocation must be recorded, or counted):
/// the decision takes them (see [`count_allocation`]).
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn grant(generation: u32, horizon: Horizon) {
    // `generation` was read (acquire) before: if tracking started after
    // that read, the generation has moved on since and the key never
    // matches; if before, the flag is seen here.
    let withheld = engaged::is_set(engaged::TRACKING | engaged::LIMITED | engaged::LIMIT_LANE);
    let _ = STATE.try_with(|s| s.ledger.grant(generation, horizon, withheld));
}

/// Runs `f` on this thread's injection counters for the configuration
/// `generation` (see `pass::Ledger::with_counters`). `None` once the
/// thread-local is gone (thread teardown): nothing is counted then.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn with_counters<R>(
    generation: u32,
    space: u64,
    f: impl FnOnce(&mut Counters) -> R,
) -> Option<R> {
    STATE
        .try_with(|s| s.ledger.with_counters(generation, space, f))
        .ok()
}

/// Withholds the thread's passes from the fast lane, as a grant made while
/// a sweep's child tracks blocks does.
#[cfg(all(test, feature = "inject"))]
pub(crate) fn withhold_passes() {
    let _ = STATE.try_with(|s| s.ledger.pass_key.set(0));
}

/// What the injection path needs to know about the current thread, read in
/// one thread-local access.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) struct Snapshot {
    /// Never inject: inside `nofail`, or inside mayfail's own slow path.
    pub(crate) exempt: bool,
    /// Inside a `make_it_fail` scope.
    pub(crate) makes_it_fail: bool,
    /// This allocation's number on the thread (1-based), if not exempt.
    pub(crate) number: u64,
    /// Whether the fail-nth countdown reached zero with this allocation.
    pub(crate) nth_fired: bool,
    /// Whether a fail-nth countdown is running (fired or not).
    pub(crate) nth_armed: bool,
    /// Whether the thread is exhausted (a persistent countdown fired): every
    /// attempt fails, and a `nofail` allocation retries for ever.
    pub(crate) exhausted: bool,
    /// Inside `nofail`.
    pub(crate) nofail: bool,
    /// Whether the allocation took one of the passes granted under the
    /// generation in force that the fast lane left (granted while a sweep's
    /// child tracks blocks, when every allocation comes to the decision):
    /// it passes, as it would have on the fast lane.
    pub(crate) withheld_pass: bool,
}

/// Counts one allocation on the current thread and steps its fail-nth
/// countdown; exempt allocations (`nofail`, in reclaim) are not counted, as
/// the kernel does not count `__GFP_NOFAIL` ones. Takes a pass granted under
/// `generation` (the one in force) that the fast lane left, if any (see
/// [`Snapshot::withheld_pass`]).
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
#[inline(always)]
pub(crate) fn count_allocation(generation: u32) -> Snapshot {
    STATE
        .try_with(|s| {
            let flags = s.flags.get();
            let nofail = flags & MODE_MASK == MODE_NOFAIL;
            let exempt = flags & IN_RECLAIM != 0 || nofail;
            let mut snap = Snapshot {
                exempt,
                makes_it_fail: flags & MAKE_IT_FAIL != 0,
                number: 0,
                nth_fired: false,
                nth_armed: false,
                exhausted: flags & IN_RECLAIM == 0 && s.exhausted.get(),
                nofail,
                withheld_pass: false,
            };
            if exempt {
                return snap;
            }
            let (number, withheld) = s.ledger.count(generation);
            snap.number = number;
            if withheld {
                // Taking the pass counted the allocation. No countdown runs:
                // arming one voids the passes, and none are granted then.
                snap.withheld_pass = true;
                return snap;
            }
            let nth = s.fail_nth.get();
            if nth != 0 {
                snap.nth_armed = true;
                snap.nth_fired = nth == 1;
                s.fail_nth.set(nth - 1);
                if snap.nth_fired && s.persistent.get() {
                    s.exhausted.set(true);
                }
            }
            snap
        })
        .unwrap_or(Snapshot {
            exempt: true,
            makes_it_fail: false,
            number: 0,
            nth_fired: false,
            nth_armed: false,
            exhausted: false,
            nofail: false,
            withheld_pass: false,
        })
}

/// Makes the thread's next fail-nth countdown persistent (or not), and
/// clears its exhausted state.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn set_persistent(persistent: bool) {
    let _ = STATE.try_with(|s| {
        s.persistent.set(persistent);
        s.exhausted.set(false);
        s.ledger.void();
    });
}

/// Whether every attempt of this thread must fail (a persistent countdown
/// fired), outside mayfail's own slow-path allocations.
pub(crate) fn exhausted() -> bool {
    STATE.try_with(|s| s.exhausted.get()).unwrap_or(false)
}

/// The number of the thread's latest counted allocation.
#[cfg(test)]
fn allocation_number() -> u64 {
    STATE.try_with(|s| s.ledger.allocations()).unwrap_or(0)
}

/// Sets the thread's fail-nth countdown; returns the previous value.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn replace_fail_nth(n: u64) -> u64 {
    STATE
        .try_with(|s| {
            // A countdown counts every allocation: no pass skips it.
            s.ledger.void();
            s.fail_nth.replace(n)
        })
        .unwrap_or(0)
}

/// The thread's fail-nth countdown.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) fn fail_nth_left() -> u64 {
    STATE.try_with(|s| s.fail_nth.get()).unwrap_or(0)
}

/// The current thread's mode.
pub(crate) fn mode() -> Mode {
    match state() & MODE_MASK {
        MODE_NOFAIL => Mode::NoFail,
        MODE_NORETRY => Mode::NoRetry,
        _ => Mode::Normal,
    }
}

/// Whether failures on this thread are kept out of the log ([`nowarn`]).
#[cfg_attr(not(feature = "log"), allow(dead_code))]
pub(crate) fn quiet() -> bool {
    state() & NOWARN != 0
}

/// Whether the current thread is inside mayfail's slow path: running
/// reclaimers, backing off or reporting. Allocations that fail meanwhile get
/// null at once, without retries.
pub fn in_reclaim() -> bool {
    state() & IN_RECLAIM != 0
}

/// Marks the thread "in reclaim" until dropped.
pub(crate) struct ReclaimGuard(PhantomData<*const ()>);

impl ReclaimGuard {
    /// `None` if the thread is already in reclaim: the caller is re-entering.
    pub(crate) fn enter() -> Option<ReclaimGuard> {
        let s = state();
        if s & IN_RECLAIM != 0 {
            return None;
        }
        set_state(s | IN_RECLAIM);
        Some(ReclaimGuard(PhantomData))
    }
}

impl Drop for ReclaimGuard {
    fn drop(&mut self) {
        set_state(state() & !IN_RECLAIM);
    }
}

/// Puts back what the scope changed on this thread when dropped. Returned
/// by [`nofail_guard`], [`noretry_guard`], [`nowarn_guard`] and
/// [`make_it_fail_guard`](crate::make_it_fail_guard); not `Send`, since the
/// state belongs to the thread that entered it. Guards must be dropped in
/// reverse order of creation (as scopes are).
#[must_use = "the scope ends as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ScopeGuard {
    /// The bits this scope owns.
    mask: u8,
    /// Their values before it.
    previous: u8,
    _not_send: PhantomData<*const ()>,
}

impl ScopeGuard {
    /// Sets the `mask` bits of the thread's state to `value` until dropped.
    pub(crate) fn enter(mask: u8, value: u8) -> ScopeGuard {
        let s = state();
        set_state((s & !mask) | value);
        ScopeGuard {
            mask,
            previous: s & mask,
            _not_send: PhantomData,
        }
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        set_state((state() & !self.mask) | self.previous);
    }
}

/// Enters a `nofail` scope on this thread until the guard is dropped: every
/// allocation inside retries until it succeeds, whatever its size and the
/// retry knob (the kernel's `__GFP_NOFAIL`). A request that can never be
/// served (larger than the address space) still fails.
///
/// ```
/// let _scope = mayfail::nofail_guard();
/// let journal = vec![0u8; 1024]; // retried until memory is there
/// # drop(journal);
/// ```
pub fn nofail_guard() -> ScopeGuard {
    ScopeGuard::enter(MODE_MASK, MODE_NOFAIL)
}

/// Enters a `noretry` scope on this thread until the guard is dropped: a
/// failed allocation inside returns null at once, without reclaim or retries
/// (the kernel's `__GFP_NORETRY`), whatever the knob says.
pub fn noretry_guard() -> ScopeGuard {
    ScopeGuard::enter(MODE_MASK, MODE_NORETRY)
}

/// Runs `f` in a `nofail` scope (see [`nofail_guard`]). The previous mode is
/// restored when `f` returns or panics.
///
/// ```
/// let header = mayfail::nofail(|| Box::new([0u8; 64]));
/// # drop(header);
/// ```
pub fn nofail<R>(f: impl FnOnce() -> R) -> R {
    let _scope = nofail_guard();
    f()
}

/// Runs `f` in a `noretry` scope (see [`noretry_guard`]). The previous mode
/// is restored when `f` returns or panics.
///
/// ```
/// let mut cache: Vec<u8> = Vec::new();
/// let grown = mayfail::noretry(|| cache.try_reserve(1 << 20).is_ok());
/// # let _ = grown;
/// ```
pub fn noretry<R>(f: impl FnOnce() -> R) -> R {
    let _scope = noretry_guard();
    f()
}

/// Enters a `nowarn` scope on this thread until the guard is dropped:
/// allocations inside that end in null are not reported through `log` (the
/// kernel's `__GFP_NOWARN`), for code that probes memory and expects
/// failures. Counters still count them. Independent of `nofail` / `noretry`.
pub fn nowarn_guard() -> ScopeGuard {
    ScopeGuard::enter(NOWARN, NOWARN)
}

/// Marks this thread as a candidate for injection until the guard is
/// dropped (the kernel's per-task `make-it-fail`): with `task-filter=Y`, only
/// allocations inside such scopes may be injected. Nests.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub fn make_it_fail_guard() -> ScopeGuard {
    ScopeGuard::enter(MAKE_IT_FAIL, MAKE_IT_FAIL)
}

/// Runs `f` in a `make_it_fail` scope (see [`make_it_fail_guard`]).
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// mayfail::configure_injection("probability=100,task-filter=Y,times=-1").unwrap();
/// let mut v: Vec<u8> = Vec::new();
/// let grown = mayfail::make_it_fail(|| v.try_reserve(100));
/// mayfail::disable_injection();
/// assert!(grown.is_err());
/// ```
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub fn make_it_fail<R>(f: impl FnOnce() -> R) -> R {
    let _scope = make_it_fail_guard();
    f()
}

/// Runs `f` in a `nowarn` scope (see [`nowarn_guard`]).
///
/// ```
/// let mut probe: Vec<u8> = Vec::new();
/// let big = mayfail::nowarn(|| probe.try_reserve(1 << 40).is_ok());
/// # let _ = big;
/// ```
pub fn nowarn<R>(f: impl FnOnce() -> R) -> R {
    let _scope = nowarn_guard();
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_the_innermost_wins() {
        assert_eq!(mode(), Mode::Normal);
        nofail(|| {
            assert_eq!(mode(), Mode::NoFail);
            noretry(|| assert_eq!(mode(), Mode::NoRetry));
            assert_eq!(mode(), Mode::NoFail);
        });
        assert_eq!(mode(), Mode::Normal);
    }

    #[test]
    fn nowarn_is_independent_of_the_mode() {
        noretry(|| {
            nowarn(|| {
                assert!(quiet());
                assert_eq!(mode(), Mode::NoRetry);
                nofail(|| assert!(quiet()));
            });
            assert!(!quiet());
            assert_eq!(mode(), Mode::NoRetry);
        });
    }

    #[test]
    fn the_decision_takes_the_passes_the_fast_lane_was_not_given() {
        // As while a sweep's child tracks blocks: every allocation reaches
        // the decision, which must see the same passes.
        let generation = 7;
        let passes = Horizon::Passes {
            passes: 2,
            interval: 0,
        };
        let _ = STATE.try_with(|s| s.ledger.grant(generation, passes, true));
        let before = allocation_number();
        let seen: Vec<_> = (1..=3)
            .map(|i| {
                let snap = count_allocation(generation);
                assert_eq!(snap.number, before + i);
                snap.withheld_pass
            })
            .collect();
        assert_eq!(seen, [true, true, false]);
        let _ = STATE.try_with(|s| s.ledger.grant(generation, passes, true));
        let snap = count_allocation(generation + 1);
        assert!(!snap.withheld_pass, "another generation");
    }

    #[test]
    fn nofail_and_reclaim_are_exempt_and_not_counted() {
        let before = allocation_number();
        assert!(!count_allocation(0).exempt);
        assert_eq!(allocation_number(), before + 1);
        assert!(nofail(|| count_allocation(0)).exempt);
        let _reclaiming = ReclaimGuard::enter().unwrap();
        assert!(count_allocation(0).exempt);
        assert_eq!(allocation_number(), before + 1);
    }

    #[test]
    fn fail_nth_counts_down_and_fires_once() {
        replace_fail_nth(3);
        let fired: Vec<bool> = (0..5).map(|_| count_allocation(0).nth_fired).collect();
        assert_eq!(fired, [false, false, true, false, false]);
        assert_eq!(fail_nth_left(), 0);
    }

    #[test]
    fn a_panicking_scope_restores_the_mode() {
        let r = std::panic::catch_unwind(|| noretry(|| panic!("inside")));
        assert!(r.is_err());
        assert_eq!(mode(), Mode::Normal);
    }

    #[test]
    fn reclaim_guard_refuses_re_entry_and_keeps_the_mode() {
        let _nofail = nofail_guard();
        let outer = ReclaimGuard::enter().expect("first entry");
        assert!(in_reclaim());
        assert!(ReclaimGuard::enter().is_none());
        assert_eq!(mode(), Mode::NoFail);
        drop(outer);
        assert!(!in_reclaim());
        assert_eq!(mode(), Mode::NoFail);
    }
}
