//! The injection ledger: one thread's allocation count, the passes the
//! injection rule granted it, and the rule's running counters.
//!
//! The rule (`rule`) decides one allocation and says how many of the next
//! ones it already knows pass (its horizon); this module turns that horizon
//! into passes, which the allocator's fast lanes take without a decision
//! (see [`Ledger::take`]), and keeps the thread's allocation number exact
//! while they do: taking a pass is counting. A change of the configuration
//! (its generation) or of the thread's scope voids the passes; those the
//! rule had counted in advance are given back to its counters, so that the
//! allocations they covered are decided again exactly as they would have
//! been.
//!
//! The ledger lives in the thread's state (`scope`), a `const` thread-local
//! without a destructor; it is `repr(C)`, and the in-place lane on x86-64
//! (`arch`) reaches its fields from the thread pointer at the offsets
//! `core::mem::offset_of!` gives. Nothing here allocates, locks or panics;
//! nothing is shared between threads.

use core::cell::Cell;

/// A thread's running counters of the injection attributes, for one
/// configuration: each thread counts its own, so no allocation writes
/// shared memory, and a thread's failures do not depend on how other threads
/// interleave with it. The rule (`rule::decide`) reads and writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Allocations counted towards `after`.
    pub(crate) after: u64,
    /// What is left of the `space` budget, in bytes.
    pub(crate) space: u64,
    /// Candidates counted towards `interval`.
    pub(crate) interval: u64,
    /// Candidates left to pass before the one the last `probability` draw
    /// fails (`None`: the next candidate draws).
    pub(crate) gap: Option<u64>,
    /// The number of the thread's last allocation before its first draw
    /// under this configuration: draws are indexed from it, so that a
    /// configuration replays the same way however many allocations came
    /// before it.
    pub(crate) base: Option<u64>,
    /// What tells this thread's sequence from the others' (a hash of its
    /// name), computed at the first draw.
    pub(crate) salt: Option<u64>,
}

impl Counters {
    /// The counters of a configuration's start, with `space` bytes of
    /// `space` budget.
    pub(crate) const fn fresh(space: u64) -> Counters {
        Counters {
            after: 0,
            space,
            interval: 0,
            gap: None,
            base: None,
            salt: None,
        }
    }

    /// Counts `passes` allocations in advance, which the rule let pass
    /// before they were made, among candidates every `interval` (the
    /// passes end just before a multiple): towards `interval`, and the
    /// candidates among them towards the draw's gap.
    #[cfg(feature = "inject")]
    pub(crate) fn precount(&mut self, passes: u64, interval: u64) {
        self.interval = self.interval.saturating_add(passes);
        self.gap = self.gap.map(|g| g.saturating_sub(passes / interval.max(1)));
    }

    /// Takes back `unused` of the passes counted in advance by
    /// [`precount`](Self::precount): they were the last ones before the
    /// multiple.
    pub(crate) fn give_back(&mut self, unused: u64, interval: u64) {
        self.interval = self.interval.saturating_sub(unused);
        self.gap = self.gap.map(|g| g.saturating_add(unused / interval.max(1)));
    }
}

/// How far the rule's verdict for one allocation reaches beyond it. Only
/// the rule (`inject`) makes one; the ledger takes any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
pub(crate) enum Horizon {
    /// Nothing is known of the next allocations: each is decided.
    None,
    /// The next `passes` allocations pass; with `interval` non-zero, the
    /// rule counted them in advance among candidates every `interval` (see
    /// [`Counters::precount`]), and takes back those a void leaves unused.
    Passes { passes: u64, interval: u64 },
    /// Every later allocation passes, until the configuration or the
    /// thread's scope changes.
    ForGood,
}

/// One thread's ledger (see the module docs).
#[repr(C)]
pub(crate) struct Ledger {
    /// Allocations that may pass without a decision, granted under the
    /// generation `granted` (see `engaged::generation`) and the thread's
    /// scope as it is: a change of either voids them. Signed: the fast lane
    /// subtracts one and passes if the result is not negative, so a thread
    /// without passes goes below zero, where it stays "none" until the next
    /// grant; `i64::MAX` is "for good".
    pub(crate) passes: Cell<i64>,
    /// The generation a pass must find in force to be taken: `granted`, or 0
    /// ("none", never in force) when the passes were granted while a
    /// sweep's child tracks blocks or the heap limit counts (every
    /// allocation must come to the engaged path then).
    pub(crate) pass_key: Cell<u32>,
    granted: Cell<u32>,
    /// The number this thread's allocation count reaches once its passes
    /// are used up: the count is `pass_end - passes` (wrapping; a negative
    /// `passes` counts as none), so that taking a pass only decrements
    /// `passes` (see [`Ledger::allocations`]).
    pass_end: Cell<u64>,
    /// The `interval` the passes were counted in advance with (0: not
    /// counted; see [`Horizon::Passes`]).
    precounted: Cell<u64>,
    /// The rule's counters, for the configuration `counters_generation`.
    counters: Cell<Counters>,
    counters_generation: Cell<u32>,
}

impl Ledger {
    /// A thread's ledger at its start.
    pub(crate) const fn new() -> Ledger {
        Ledger {
            passes: Cell::new(0),
            pass_key: Cell::new(0),
            granted: Cell::new(0),
            pass_end: Cell::new(0),
            precounted: Cell::new(0),
            counters: Cell::new(Counters::fresh(0)),
            counters_generation: Cell::new(0),
        }
    }

    /// The number of the thread's latest counted allocation.
    pub(crate) fn allocations(&self) -> u64 {
        self.pass_end.get().wrapping_sub(self.passes_left())
    }

    /// The passes left (a negative count is none).
    fn passes_left(&self) -> u64 {
        self.passes.get().max(0) as u64
    }

    /// Lets this allocation pass without a decision if the rule said so
    /// under the generation `generation` (the one in force): counts it
    /// (taking a pass is counting) and returns `true`. The fast lane: one
    /// compare, one decrement. `generation` is never 0, so a pass key of 0
    /// never matches. The in-place lane on x86-64 makes the same test.
    #[cfg_attr(not(feature = "inject"), allow(dead_code))]
    #[inline]
    pub(crate) fn take(&self, generation: u32) -> bool {
        if self.pass_key.get() != generation {
            return false;
        }
        // Saturating: a thread without passes stays below zero.
        let left = self.passes.get().saturating_sub(1);
        self.passes.set(left);
        left >= 0
    }

    /// Counts one allocation that comes to the decision: `(number, true)`
    /// if it took a pass granted under `generation` that the fast lane
    /// left (granted while every allocation must come to the engaged
    /// path), `(number, false)` if it is counted afresh.
    #[cfg_attr(not(feature = "inject"), allow(dead_code))]
    #[inline]
    pub(crate) fn count(&self, generation: u32) -> (u64, bool) {
        let left = self.passes.get();
        if left > 0 && self.granted.get() == generation {
            self.passes.set(left - 1);
            return (self.allocations(), true);
        }
        let number = self.allocations().wrapping_add(1);
        self.pass_end.set(self.pass_end.get().wrapping_add(1));
        (number, false)
    }

    /// Voids the thread's passes (its scope changed, or a countdown that
    /// counts every allocation started): the allocations they would have
    /// let pass are decided again, so what the rule counted in advance for
    /// them is given back.
    pub(crate) fn void(&self) {
        let interval = self.precounted.replace(0);
        if interval != 0 && self.counters_generation.get() == self.granted.get() {
            let mut c = self.counters.get();
            c.give_back(self.passes_left(), interval);
            self.counters.set(c);
        }
        self.set_passes(0);
    }

    /// Replaces the thread's passes (at most `i64::MAX`: for good), keeping
    /// its allocation count.
    fn set_passes(&self, passes: u64) {
        let count = self.allocations();
        let passes = passes.min(i64::MAX as u64);
        self.passes.set(passes as i64);
        self.pass_end.set(count.wrapping_add(passes));
    }

    /// Turns the rule's horizon, decided under `generation`, into passes,
    /// which the fast lanes may take unless `withheld` (a sweep's child
    /// tracks blocks or the heap limit counts: the decision takes them
    /// then, see [`count`](Self::count)).
    #[cfg_attr(not(feature = "inject"), allow(dead_code))]
    pub(crate) fn grant(&self, generation: u32, horizon: Horizon, withheld: bool) {
        let (passes, interval) = match horizon {
            Horizon::None => return,
            Horizon::Passes { passes, interval } => (passes, interval),
            Horizon::ForGood => (u64::MAX, 0),
        };
        self.granted.set(generation);
        self.pass_key.set(if withheld { 0 } else { generation });
        self.set_passes(passes);
        self.precounted.set(interval);
    }

    /// Runs the rule `f` on the counters for the configuration
    /// `generation`, started afresh (with a `space` budget of `space`
    /// bytes) when they were counted under another one.
    #[cfg_attr(not(feature = "inject"), allow(dead_code))]
    pub(crate) fn with_counters<R>(
        &self,
        generation: u32,
        space: u64,
        f: impl FnOnce(&mut Counters) -> R,
    ) -> R {
        let mut counters = if self.counters_generation.get() == generation {
            self.counters.get()
        } else {
            self.counters_generation.set(generation);
            Counters::fresh(space)
        };
        let result = f(&mut counters);
        self.counters.set(counters);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_count_allocations_and_a_void_keeps_the_count() {
        let ledger = Ledger::new();
        assert_eq!(ledger.count(3), (1, false));
        ledger.grant(
            3,
            Horizon::Passes {
                passes: 2,
                interval: 0,
            },
            false,
        );
        assert!(ledger.take(3));
        assert_eq!(ledger.allocations(), 2);
        assert!(!ledger.take(4), "another generation");
        assert!(ledger.take(3));
        assert!(!ledger.take(3), "used up");
        assert_eq!(ledger.count(3), (4, false));
        ledger.grant(3, Horizon::ForGood, false);
        ledger.void();
        assert!(!ledger.take(3));
        assert_eq!(ledger.count(3), (5, false));
    }

    #[test]
    fn the_decision_takes_the_passes_the_fast_lane_was_not_given() {
        // As while a sweep's child tracks blocks: every allocation reaches
        // the decision, which must see the same passes.
        let ledger = Ledger::new();
        ledger.grant(
            7,
            Horizon::Passes {
                passes: 2,
                interval: 0,
            },
            true,
        );
        assert!(!ledger.take(7), "withheld from the fast lane");
        let seen: Vec<_> = (0..3).map(|_| ledger.count(7)).collect();
        assert_eq!(seen, [(1, true), (2, true), (3, false)]);
        ledger.grant(
            7,
            Horizon::Passes {
                passes: 2,
                interval: 0,
            },
            true,
        );
        assert_eq!(ledger.count(8), (4, false), "another generation");
    }

    #[test]
    #[cfg(feature = "inject")]
    fn a_void_gives_back_what_the_rule_counted_in_advance() {
        let ledger = Ledger::new();
        let counted = |c: Counters| {
            ledger.with_counters(5, 0, |mine| *mine = c);
        };
        // Four candidates every 3 allocations ahead of a failure: 11
        // passes, counted in advance; 3 of them candidates.
        counted(Counters {
            interval: 3,
            gap: Some(3),
            ..Counters::fresh(0)
        });
        ledger.with_counters(5, 0, |c| c.precount(11, 3));
        ledger.grant(
            5,
            Horizon::Passes {
                passes: 11,
                interval: 3,
            },
            false,
        );
        assert_eq!(
            ledger.with_counters(5, 0, |c| (c.interval, c.gap)),
            (14, Some(0))
        );
        for _ in 0..4 {
            assert!(ledger.take(5));
        }
        ledger.void();
        // 7 unused: the last two candidates among them are decided again.
        assert_eq!(
            ledger.with_counters(5, 0, |c| (c.interval, c.gap)),
            (7, Some(2))
        );
    }
}
