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
//! thread teardown. It also holds the thread's injection counters (its
//! allocation number and its fail-nth countdown), so that the injection path
//! touches one thread-local. The success path never reads it; with
//! injection on, the engaged branch's pass test does (see [`take_pass`]).

use core::cell::Cell;
use core::marker::PhantomData;

use crate::engaged;

const MODE_MASK: u8 = 0b11;
const MODE_NOFAIL: u8 = 1;
const MODE_NORETRY: u8 = 2;
const IN_RECLAIM: u8 = 0b100;
const NOWARN: u8 = 0b1000;
pub(crate) const MAKE_IT_FAIL: u8 = 0b1_0000;

/// Everything mayfail keeps per thread.
struct ThreadState {
    flags: Cell<u8>,
    /// The number this thread's allocation count reaches once its passes
    /// are used up: the count is `pass_end - passes` (wrapping; a negative
    /// `passes` counts as none), so that taking a pass only decrements
    /// `passes` (see [`ThreadState::allocations`]).
    pass_end: Cell<u64>,
    /// The fail-nth countdown: 0 = not armed (or fired).
    fail_nth: Cell<u64>,
    /// Whether the countdown, when it fires, leaves the thread "exhausted":
    /// that and every later attempt fails (a sweep's persistent mode).
    persistent: Cell<bool>,
    /// Set when a persistent countdown fired.
    exhausted: Cell<bool>,
    /// Allocations that may pass without a decision (see [`take_pass`]),
    /// granted under the generation `granted` (see `engaged::generation`)
    /// and the thread's scope as it is: a change of either voids them.
    /// Signed: the fast lane subtracts one and passes if the result is not
    /// negative, so a thread without passes goes below zero, where it stays
    /// "none" until the next grant; `i64::MAX` is "for good".
    passes: Cell<i64>,
    granted: Cell<u32>,
    /// The generation a pass must find in force to be taken: `granted`, or 0
    /// ("none", never in force) when the passes were granted while a sweep's
    /// child tracks blocks (every allocation must be recorded then).
    pass_key: Cell<u32>,
    /// Whether the allocation after the passes must fail (a probability
    /// draw decided so).
    due: Cell<bool>,
    /// Whether the passes were counted towards `interval` when granted (see
    /// [`grant_interval_passes`]): the ones a scope change voids are taken
    /// back.
    precounted: Cell<bool>,
    /// The configuration generation `base` belongs to, and the number of
    /// this thread's last allocation before that configuration: draws are
    /// indexed from it, so a configuration replays the same way however
    /// many allocations came before it.
    base_generation: Cell<u32>,
    base: Cell<u64>,
    /// The running counters of the injection attributes, for the
    /// configuration `counters_generation` (see [`with_counters`]).
    counters: Cell<Counters>,
    counters_generation: Cell<u32>,
    /// The thread's share of the heap limit's count (see `limit`).
    limit: LimitCells,
}

/// What a thread keeps of the heap limit's count (see `limit`): bytes it
/// may still allocate without touching the shared total, and bytes it freed
/// since it last folded them in. The in-place lanes of `alloc.rs` write
/// them from the thread pointer on x86-64 ([`CREDIT_AT`], [`FREED_AT`]).
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

/// A thread's running counters of the injection attributes: each thread
/// counts its own, so no allocation writes shared memory, and a thread's
/// failures do not depend on how other threads interleave with it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    /// Allocations counted towards `after`.
    pub(crate) after: u64,
    /// What is left of the `space` budget, in bytes.
    pub(crate) space: u64,
    /// Candidates counted towards `interval`.
    pub(crate) interval: u64,
    /// Draws made in the candidate-by-candidate `probability` sequence.
    pub(crate) draws: u64,
    /// What tells this thread's sequence from the others' (a hash of its
    /// name, odd; 0 until the first draw computes it).
    pub(crate) salt: u64,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            flags: Cell::new(0),
            pass_end: Cell::new(0),
            fail_nth: Cell::new(0),
            persistent: Cell::new(false),
            exhausted: Cell::new(false),
            passes: Cell::new(0),
            granted: Cell::new(0),
            pass_key: Cell::new(0),
            due: Cell::new(false),
            precounted: Cell::new(false),
            base_generation: Cell::new(0),
            base: Cell::new(0),
            counters: Cell::new(Counters {
                after: 0,
                space: 0,
                interval: 0,
                draws: 0,
                salt: 0,
            }),
            counters_generation: Cell::new(0),
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
        s.void_passes();
    });
}

impl ThreadState {
    /// The number of the thread's latest counted allocation.
    fn allocations(&self) -> u64 {
        self.pass_end.get().wrapping_sub(self.passes_left())
    }

    /// The passes left (a negative count is none).
    fn passes_left(&self) -> u64 {
        self.passes.get().max(0) as u64
    }

    /// Voids the thread's passes and the failure due after them (its scope
    /// changed): the allocations they would have let pass are decided
    /// again, so those counted in advance towards `interval` are taken
    /// back.
    fn void_passes(&self) {
        if self.precounted.replace(false) && self.counters_generation.get() == self.granted.get() {
            let mut c = self.counters.get();
            c.interval = c.interval.saturating_sub(self.passes_left());
            self.counters.set(c);
        }
        self.set_passes(0);
        self.due.set(false);
    }

    /// Replaces the thread's passes (at most `i64::MAX`: for good), keeping
    /// its allocation count.
    fn set_passes(&self, passes: u64) {
        let count = self.allocations();
        let passes = passes.min(i64::MAX as u64);
        self.passes.set(passes as i64);
        self.pass_end.set(count.wrapping_add(passes));
    }
}

/// Lets this allocation pass without a decision if the injection decision
/// said so under the generation `generation` (the one in force): counts it
/// (taking a pass is counting, see [`ThreadState::allocations`], so its
/// number stays exact for `nth=` and replay lines) and returns `true`. The
/// injection path's fast lane: one thread-local access, one compare, one
/// decrement; no shared write. `generation` is never 0, so a pass key of 0
/// (granted while tracking) never matches.
#[inline]
pub(crate) fn take_pass(generation: u32) -> bool {
    STATE
        .try_with(|s| {
            if s.pass_key.get() != generation {
                return false;
            }
            // Saturating: a thread without passes stays below zero.
            let left = s.passes.get().saturating_sub(1);
            s.passes.set(left);
            left >= 0
        })
        .unwrap_or(false)
}

/// Where the fast lane's pass key (`u32`) lies in the thread's state, for
/// the allocator's in-place fast lane on x86-64 (see `alloc.rs`), which
/// makes [`take_pass`]'s test at [`STATE_OFFSET`] from the thread pointer.
#[cfg(all(target_arch = "x86_64", not(miri), feature = "inject"))]
pub(crate) const PASS_KEY_AT: usize = core::mem::offset_of!(ThreadState, pass_key);
/// Where the passes (`i64`) lie in the thread's state (see [`PASS_KEY_AT`]).
#[cfg(all(target_arch = "x86_64", not(miri), feature = "inject"))]
pub(crate) const PASSES_AT: usize = core::mem::offset_of!(ThreadState, passes);

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

/// Records that the next `passes` allocations of this thread pass without a
/// decision under the generation `generation`, and whether the one after
/// them must fail. Passes granted while a sweep's child tracks blocks are
/// never taken by the fast lane (the key stays 0): the decision takes them
/// (see [`count_allocation`]).
pub(crate) fn grant_passes(generation: u32, passes: u64, then_due: bool) {
    grant(generation, passes, then_due, false);
}

/// Grants `passes` passes (see [`grant_passes`]) and counts them towards
/// `interval` now, in the thread's counters for `generation` (the decision
/// has just used them): the ones a scope change voids are taken back (see
/// `ThreadState::void_passes`).
pub(crate) fn grant_interval_passes(generation: u32, passes: u64, then_due: bool) {
    let passes = passes.min(i64::MAX as u64);
    let _ = STATE.try_with(|s| {
        if s.counters_generation.get() == generation {
            let mut c = s.counters.get();
            c.interval = c.interval.saturating_add(passes);
            s.counters.set(c);
        }
    });
    grant(generation, passes, then_due, true);
}

fn grant(generation: u32, passes: u64, then_due: bool, precounted: bool) {
    // `generation` was read (acquire) before: if tracking started after
    // that read, the generation has moved on since and the key never
    // matches; if before, the flag is seen here.
    // Nor while the heap limit counts: a pass would skip the count.
    let key = if engaged::is_set(engaged::TRACKING | engaged::LIMITED | engaged::LIMIT_LANE) {
        0
    } else {
        generation
    };
    let _ = STATE.try_with(|s| {
        s.granted.set(generation);
        s.pass_key.set(key);
        s.set_passes(passes);
        s.due.set(then_due);
        s.precounted.set(precounted);
    });
}

/// The index of allocation `number` within the configuration `generation`
/// on this thread: 1 for its first allocation under it.
pub(crate) fn index_in_generation(generation: u32, number: u64) -> u64 {
    STATE
        .try_with(|s| {
            if s.base_generation.get() != generation {
                s.base_generation.set(generation);
                s.base.set(number.saturating_sub(1));
            }
            number.saturating_sub(s.base.get())
        })
        .unwrap_or(number)
}

/// Runs `f` on this thread's counters for the configuration `generation`,
/// started afresh (with a `space` budget of `space` bytes) when they were
/// counted under another one. `None` once the thread-local is gone (thread
/// teardown): nothing is counted then.
pub(crate) fn with_counters<R>(
    generation: u32,
    space: u64,
    f: impl FnOnce(&mut Counters) -> R,
) -> Option<R> {
    STATE
        .try_with(|s| {
            let mut counters = if s.counters_generation.get() == generation {
                s.counters.get()
            } else {
                s.counters_generation.set(generation);
                Counters {
                    space,
                    ..Counters::default()
                }
            };
            let result = f(&mut counters);
            s.counters.set(counters);
            result
        })
        .ok()
}

/// Withholds the thread's passes from the fast lane, as a grant made while
/// a sweep's child tracks blocks does.
#[cfg(test)]
pub(crate) fn withhold_passes() {
    let _ = STATE.try_with(|s| s.pass_key.set(0));
}

/// Whether this allocation must fail because a draw decided so (consumed).
pub(crate) fn take_due(generation: u32) -> bool {
    STATE
        .try_with(|s| s.granted.get() == generation && s.due.replace(false))
        .unwrap_or(false)
}

/// What the injection path needs to know about the current thread, read in
/// one thread-local access.
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
            let left = s.passes.get();
            if left > 0 && s.granted.get() == generation {
                // Taking the pass counts the allocation. No countdown runs:
                // arming one voids the passes, and none are granted then.
                s.passes.set(left - 1);
                snap.number = s.allocations();
                snap.withheld_pass = true;
                return snap;
            }
            snap.number = s.allocations().wrapping_add(1);
            s.pass_end.set(s.pass_end.get().wrapping_add(1));
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
pub(crate) fn set_persistent(persistent: bool) {
    let _ = STATE.try_with(|s| {
        s.persistent.set(persistent);
        s.exhausted.set(false);
        s.void_passes();
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
    STATE.try_with(|s| s.allocations()).unwrap_or(0)
}

/// Sets the thread's fail-nth countdown; returns the previous value.
pub(crate) fn replace_fail_nth(n: u64) -> u64 {
    STATE
        .try_with(|s| {
            // A countdown counts every allocation: no pass skips it.
            s.void_passes();
            s.fail_nth.replace(n)
        })
        .unwrap_or(0)
}

/// The thread's fail-nth countdown.
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
    fn the_decision_takes_the_passes_the_fast_lane_left_then_the_due_failure() {
        // As while a sweep's child tracks blocks: every allocation reaches
        // the decision, which must see the same passes and failure.
        let generation = 7;
        grant_passes(generation, 2, true);
        let before = allocation_number();
        let mut seen = Vec::new();
        for i in 1..=4 {
            let snap = count_allocation(generation);
            assert_eq!(snap.number, before + i);
            let pass = snap.withheld_pass;
            seen.push((pass, !pass && take_due(generation)));
        }
        assert_eq!(
            seen,
            [(true, false), (true, false), (false, true), (false, false)]
        );
        assert_eq!(allocation_number(), before + 4, "each counted once");
        grant_passes(generation, 2, true);
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
