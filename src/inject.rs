//! Fault injection: the kernel's `should_fail` decision, per allocation.
//!
//! Configured by `MAYFAIL_INJECT` (read once at start-up, without
//! allocating) or [`configure_injection`]; per thread by [`fail_nth`]. The
//! attributes live in process-wide atomics; the decision for one allocation
//! reads them with relaxed loads, counts `after`, `space`, `interval` and
//! its draws in the thread's own counters, and writes shared memory only
//! when it fails an allocation (`times`, the statistics). Everything here
//! runs inside the allocator: it never allocates before deciding, never
//! locks and never panics.
//!
//! ## The decision, in order
//!
//! 1. Exempt: inside `nofail`, or inside mayfail's own slow path. Not counted.
//! 2. fail-nth: if the thread's countdown is running, step it; at zero, fail
//!    now; otherwise pass, whatever else is configured.
//! 3. Injection off: pass.
//! 4. `after`: the first `after` allocations of each thread pass.
//! 5. `min-size` / `max-size` (like the kernel's `min-order`), then `nth`:
//!    only the n-th allocation of each thread is a candidate.
//! 6. The kernel's `should_fail`: `probability == 0` passes; `task-filter=Y`
//!    passes outside `make_it_fail` scopes (`thread=` filters here too);
//!    `times == 0` passes; while the thread's `space` exceeds the size,
//!    subtract it and pass; with `interval > 1`, count in the thread's count
//!    and pass unless it is a multiple; fail with `probability` percent.
//! 7. On a failure, `times` is decremented unless it is `-1` (also when
//!    fail-nth caused it, as in the kernel).
//!
//! Steps 4 to 6 are the rule (`rule::decide`), a pure function of the
//! attributes, the thread's counters and the allocation; this module loads
//! the attributes, keeps `times` and the statistics, and records failures.
//! A verdict that holds for the thread's next allocations comes with a
//! horizon, which the ledger (`pass`) turns into passes that the
//! allocator's fast lane takes without coming here: every allocation after
//! a pass-for-good verdict (outside `make_it_fail` with `task-filter=Y`,
//! another thread than `thread=`, `times` spent, past `nth`), those before
//! `nth`, those between two multiples of `interval`, and those before the
//! failure a `probability` draw placed. The last two need a rule that
//! ignores sizes: with a size range, a stack filter or `space` left, each
//! candidate is decided here, and counts down to the same failures.

use core::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed,
};

use crate::engaged::{self, INJECTING};
use crate::hash::splitmix64;
use crate::hook::{FnPointer, Hook, Hooks};
use crate::record::{self, Cause};
pub(crate) use crate::request::{Op, Verdict};
use crate::rule;
use crate::scope;
use crate::spec::{MAX_THREAD_NAME, Spec};
use crate::stats::{COUNTERS, bump};
use crate::sys;

pub(crate) use crate::rule::StackCheck;

/// A stack filter: called for allocations that passed every filter before
/// `space`.
pub(crate) type StackFilter = fn(Op, usize, usize) -> StackCheck;

// SAFETY: a plain `fn` pointer type.
unsafe impl FnPointer for StackFilter {}

static STACK_FILTER: Hook<StackFilter> = Hook::new();
/// Called after every injected failure with the verbose level due (0 when
/// no verbose line is due): the crash report, the sweep's child.
static OBSERVERS: Hooks<fn(u8), 4> = Hooks::new();

/// Installs (or removes) the stack filter.
#[cfg_attr(not(any(feature = "sweep", feature = "sites")), allow(dead_code))]
pub(crate) fn set_stack_filter(filter: Option<StackFilter>) {
    STACK_FILTER.set(filter);
    engaged::new_generation();
}

/// The engaged path's fast lane: whether this allocation passes without a
/// decision, because the decision for an earlier one of this thread said the
/// next ones would (outside `make_it_fail` with `task-filter=Y`, on a thread
/// `thread=` does not name, after `times` ran out, or between two failures
/// that a `probability` draw placed). Counts the allocation. One
/// thread-local access and a read of the generation; no shared write.
#[inline]
pub(crate) fn quick_pass() -> bool {
    scope::take_pass(engaged::generation_relaxed())
}

/// Registers a function called after every injected failure.
pub(crate) fn observe(observer: fn(u8)) {
    let added = OBSERVERS.add(observer);
    debug_assert!(added, "more injection observers than slots");
}

/// Where the configuration in force came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Env = 1,
    Api = 2,
}

/// The configured attributes, one atomic each.
struct Attributes {
    threshold: AtomicU64,
    probability_nano: AtomicU64,
    interval: AtomicU64,
    min_size: AtomicUsize,
    max_size: AtomicUsize,
    task_filter: AtomicBool,
    after: AtomicU64,
    seed: AtomicU64,
    verbose: AtomicU8,
    transient: AtomicBool,
    report: AtomicBool,
    nth: AtomicU64,
    thread: [AtomicU8; MAX_THREAD_NAME],
    thread_len: AtomicU8,
    origin: AtomicU8,
    /// `times` and `space` as configured, for the canonical form.
    times_configured: AtomicI64,
    space_configured: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO_BYTE: AtomicU8 = AtomicU8::new(0);

static ATTRS: Attributes = Attributes {
    threshold: AtomicU64::new(0),
    probability_nano: AtomicU64::new(0),
    interval: AtomicU64::new(1),
    min_size: AtomicUsize::new(0),
    max_size: AtomicUsize::new(usize::MAX),
    task_filter: AtomicBool::new(false),
    after: AtomicU64::new(0),
    seed: AtomicU64::new(0),
    verbose: AtomicU8::new(0),
    transient: AtomicBool::new(false),
    report: AtomicBool::new(true),
    nth: AtomicU64::new(0),
    thread: [ZERO_BYTE; MAX_THREAD_NAME],
    thread_len: AtomicU8::new(0),
    origin: AtomicU8::new(0),
    times_configured: AtomicI64::new(1),
    space_configured: AtomicU64::new(0),
};

/// The shared counters, on their own cache lines: written when an allocation
/// fails (or prints a verbose line), never when one passes. The counters an
/// allocation that passes moves are the thread's own (`scope::Counters`).
#[repr(align(128))]
struct Running {
    times: AtomicI64,
    /// Rate limit of verbose lines: the current one-second window and how
    /// many lines it has printed.
    verbose_window: AtomicU64,
    verbose_lines: AtomicU64,
}

static RUNNING: Running = Running {
    times: AtomicI64::new(1),
    verbose_window: AtomicU64::new(0),
    verbose_lines: AtomicU64::new(0),
};

/// At most this many verbose lines per second.
const VERBOSE_LINES_PER_SECOND: u64 = 20;

fn default_seed() -> u64 {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    splitmix64(sys::now_ns() ^ (pid << 32) ^ sys::clock_ns(libc::CLOCK_REALTIME))
}

/// Makes a parsed spec the attributes in force and starts its counters
/// again; returns the seed in force. Injection must be off meanwhile (see
/// `configure`).
pub(crate) fn set_attributes(s: &Spec, origin: Origin) -> u64 {
    let a = &ATTRS;
    a.threshold.store(s.threshold(), Relaxed);
    a.probability_nano.store(s.probability_nano, Relaxed);
    a.interval.store(s.interval, Relaxed);
    a.min_size.store(s.min_size, Relaxed);
    a.max_size.store(s.max_size, Relaxed);
    a.task_filter.store(s.task_filter, Relaxed);
    a.after.store(s.after, Relaxed);
    let seed = s.seed.unwrap_or_else(default_seed);
    a.seed.store(seed, Relaxed);
    a.verbose.store(s.verbose, Relaxed);
    a.transient.store(s.transient, Relaxed);
    a.report.store(s.report, Relaxed);
    a.nth.store(s.nth, Relaxed);
    for (slot, &byte) in a.thread.iter().zip(s.thread.iter()) {
        slot.store(byte, Relaxed);
    }
    a.thread_len.store(s.thread_len, Relaxed);
    a.origin.store(origin as u8, Relaxed);
    a.times_configured.store(s.times, Relaxed);
    a.space_configured.store(s.space, Relaxed);
    let r = &RUNNING;
    r.times.store(s.times, Relaxed);
    engaged::new_generation();
    seed
}

/// Whether injection by attributes is on.
#[inline]
pub(crate) fn injecting() -> bool {
    engaged::is_set(INJECTING)
}

/// Turns injection by attributes on or off.
pub(crate) fn set_injecting(on: bool) {
    engaged::set(INJECTING, on);
}

/// The attributes in force, as a spec (for replay lines).
pub(crate) fn current_spec() -> (Spec, u64) {
    let a = &ATTRS;
    let mut s = Spec::DEFAULT;
    s.probability_nano = a.probability_nano.load(Relaxed);
    s.interval = a.interval.load(Relaxed);
    s.times = a.times_configured.load(Relaxed);
    s.space = a.space_configured.load(Relaxed);
    s.min_size = a.min_size.load(Relaxed);
    s.max_size = a.max_size.load(Relaxed);
    s.task_filter = a.task_filter.load(Relaxed);
    s.after = a.after.load(Relaxed);
    s.verbose = a.verbose.load(Relaxed);
    s.transient = a.transient.load(Relaxed);
    s.report = a.report.load(Relaxed);
    s.nth = a.nth.load(Relaxed);
    s.thread_len = a.thread_len.load(Relaxed);
    for (byte, slot) in s.thread.iter_mut().zip(a.thread.iter()) {
        *byte = slot.load(Relaxed);
    }
    (s, a.seed.load(Relaxed))
}

/// Whether the configuration came from the environment.
pub(crate) fn from_env() -> bool {
    ATTRS.origin.load(Relaxed) == Origin::Env as u8
}

/// Whether injected failures should be transient.
pub(crate) fn transient() -> bool {
    injecting() && ATTRS.transient.load(Relaxed)
}

fn thread_matches() -> bool {
    let a = &ATTRS;
    let len = a.thread_len.load(Relaxed) as usize;
    if len == 0 {
        return true;
    }
    let mut buf = [0u8; 16];
    let name = sys::thread_name(&mut buf);
    let wanted = len.min(sys::KERNEL_NAME_BYTES);
    name.len() == wanted
        && a.thread[..wanted]
            .iter()
            .zip(name)
            .all(|(slot, &b)| slot.load(Relaxed) == b)
}

/// Decides one allocation. See the module docs for the order.
#[inline]
pub(crate) fn decide(op: Op, size: usize, align: usize) -> Verdict {
    let generation = engaged::generation();
    let thread = scope::count_allocation(generation);
    if let Some(verdict) = by_thread(&thread, op, size, align) {
        return verdict;
    }
    if !injecting() {
        return Verdict::Pass;
    }
    let attrs = attributes();
    let x = rule::Allocation {
        size,
        number: thread.number,
        makes_it_fail: thread.makes_it_fail,
    };
    let mut world = Live { op, size, align };
    let Some(outcome) = scope::with_counters(generation, attrs.space, |c| {
        rule::decide(&attrs, c, x, &mut world)
    }) else {
        return Verdict::Pass;
    };
    scope::grant(generation, outcome.horizon);
    if outcome.fail {
        return fail(op, size, align, thread.number, Cause::Attributes);
    }
    Verdict::Pass
}

/// What the thread's own state decides before the attributes: a sweep's
/// exhausted thread fails, an exempt allocation or one that took a pass
/// passes, and a running fail-nth countdown decides alone.
fn by_thread(thread: &scope::Snapshot, op: Op, size: usize, align: usize) -> Option<Verdict> {
    if thread.exhausted {
        // A sweep's persistent mode: memory "never comes back". A nofail
        // allocation is not injected, but its attempts fail like all others,
        // so it retries for ever, as it would under real exhaustion.
        bump(&COUNTERS.injected);
        if thread.nofail {
            return Some(Verdict::Transient);
        }
        // The record keeps the first failure and this, the latest: the one
        // that reaches an infallible path is what a report blames.
        let seed = ATTRS.seed.load(Relaxed);
        record::capture(
            op,
            size,
            align,
            thread.number,
            Cause::FailNth,
            from_env(),
            seed,
        );
        return Some(Verdict::Fail);
    }
    if thread.exempt || thread.withheld_pass {
        return Some(Verdict::Pass);
    }
    if !thread.nth_armed {
        return None;
    }
    if !thread.nth_fired {
        return Some(Verdict::Pass);
    }
    // A persistent countdown leaves the thread exhausted, which only the
    // engaged path sees: it stays armed until `set_persistent`.
    if !scope::exhausted() {
        engaged::disarm_thread();
    }
    Some(fail(op, size, align, thread.number, Cause::FailNth))
}

/// The attributes in force, for the rule.
fn attributes() -> rule::Attrs {
    let a = &ATTRS;
    rule::Attrs {
        threshold: a.threshold.load(Relaxed),
        interval: a.interval.load(Relaxed),
        min_size: a.min_size.load(Relaxed),
        max_size: a.max_size.load(Relaxed),
        task_filter: a.task_filter.load(Relaxed),
        after: a.after.load(Relaxed),
        seed: a.seed.load(Relaxed),
        nth: a.nth.load(Relaxed),
        space: a.space_configured.load(Relaxed),
    }
}

/// The process as the rule sees it, for one allocation.
struct Live {
    op: Op,
    size: usize,
    align: usize,
}

impl rule::World for Live {
    fn thread_matches(&mut self) -> bool {
        thread_matches()
    }

    fn times_left(&mut self) -> i64 {
        RUNNING.times.load(Relaxed)
    }

    fn stack(&mut self) -> Option<StackCheck> {
        STACK_FILTER
            .get()
            .map(|filter| filter(self.op, self.size, self.align))
    }

    fn salt(&mut self) -> u64 {
        let mut name_buf = [0u8; 16];
        crate::hash::fnv1a(sys::thread_name(&mut name_buf))
    }
}

#[cold]
fn fail(op: Op, size: usize, align: usize, number: u64, cause: Cause) -> Verdict {
    let r = &RUNNING;
    let mut times = r.times.load(Relaxed);
    while times > 0 {
        match r
            .times
            .compare_exchange_weak(times, times - 1, Relaxed, Relaxed)
        {
            Ok(_) => break,
            Err(now) => times = now,
        }
    }
    bump(&COUNTERS.injected);
    let a = &ATTRS;
    let configured = injecting();
    let verbose = if configured {
        a.verbose.load(Relaxed)
    } else {
        0
    };
    let report = !configured || a.report.load(Relaxed);
    if report || verbose >= 2 {
        record::capture(
            op,
            size,
            align,
            number,
            cause,
            from_env(),
            a.seed.load(Relaxed),
        );
    }
    let verbose = if verbose >= 1 && verbose_line_due() {
        verbose
    } else {
        0
    };
    OBSERVERS.each(|observer| observer(verbose));
    if configured && a.transient.load(Relaxed) {
        Verdict::Transient
    } else {
        Verdict::Fail
    }
}

/// Whether one more verbose line fits in this second's allowance.
fn verbose_line_due() -> bool {
    let r = &RUNNING;
    let second = sys::now_ns() / 1_000_000_000 + 1;
    if r.verbose_window.swap(second, Relaxed) != second {
        r.verbose_lines.store(0, Relaxed);
    }
    r.verbose_lines.fetch_add(1, Relaxed) < VERBOSE_LINES_PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::random;

    #[test]
    fn the_random_sequence_depends_on_the_seed_and_is_repeatable() {
        let a: Vec<u32> = (0..64).map(|i| random(1, i)).collect();
        let b: Vec<u32> = (0..64).map(|i| random(1, i)).collect();
        let c: Vec<u32> = (0..64).map(|i| random(2, i)).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    /// The verdicts (`true`: fail) of `n` allocations of 64 bytes under
    /// `spec`, decided on a fresh thread named "withheld" inside
    /// `make_it_fail`, the passes each decision grants taken by the fast
    /// lane, or, with `withheld`, left to the decision, as while a sweep's
    /// child tracks blocks.
    fn verdicts(spec: &str, n: usize, withheld: bool) -> Option<Vec<bool>> {
        let spec = crate::spec::parse(spec.as_bytes()).unwrap();
        std::thread::Builder::new()
            .name("withheld".into())
            .spawn(move || {
                set_attributes(&spec, Origin::Api);
                set_injecting(true);
                let generation = engaged::generation();
                let seen = scope::make_it_fail(|| {
                    (0..n)
                        .map(|_| {
                            if scope::take_pass(engaged::generation()) {
                                return false;
                            }
                            let verdict = decide(Op::Alloc, 64, 8);
                            if withheld {
                                scope::withhold_passes();
                            }
                            verdict != Verdict::Pass
                        })
                        .collect()
                });
                set_injecting(false);
                // Another test changed the generation: start again.
                (engaged::generation() == generation + 1).then_some(seen)
            })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn passes_left_to_the_decision_give_the_verdicts_of_the_fast_lane() {
        let specs = [
            "interval=3,times=-1,task-filter=Y,thread=withheld,report=N",
            "probability=20,interval=4,times=-1,task-filter=Y,thread=withheld,seed=5,report=N",
            "probability=10,times=-1,task-filter=Y,thread=withheld,seed=9,report=N",
            "nth=7,times=-1,task-filter=Y,thread=withheld,report=N",
        ];
        for spec in specs {
            let (fast, withheld) = (0..100)
                .find_map(|_| Some((verdicts(spec, 60, false)?, verdicts(spec, 60, true)?)))
                .expect("the generation never held still");
            assert!(fast.contains(&true), "{spec}: something fails");
            assert_eq!(withheld, fast, "{spec}");
        }
    }

    #[test]
    fn the_random_sequence_is_roughly_uniform() {
        // Miri runs this thousands of times slower.
        let n = if cfg!(miri) { 2_000u64 } else { 100_000 };
        let below_quarter = (0..n)
            .filter(|&i| u64::from(random(7, i)) < (1u64 << 30))
            .count() as f64;
        let share = below_quarter / n as f64;
        let margin = if cfg!(miri) { 0.05 } else { 0.01 };
        assert!((0.25 - margin..0.25 + margin).contains(&share), "{share}");
    }
}
