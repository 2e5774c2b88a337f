//! The kernel's fault-injection rule (`should_fail` and the attributes
//! around it), for one allocation, as a pure function of the attributes in
//! force, the thread's running counters and the allocation: a verdict, and
//! how far it reaches (the [`Horizon`] the ledger, `pass`, turns into
//! passes).
//!
//! One rule, one draw: a `probability` draw places the thread's next
//! failure a geometric number of candidates ahead (indexed by the thread's
//! allocation number and salted with its name), and every candidate counts
//! down to it, whether the allocations between are decided one by one or
//! skipped as passes. So the same seed fails the same allocations whatever
//! filters let every allocation through (`min-size=1`, a `max-size` above
//! every size, `space=1`, `thread=` naming the thread): only how many of
//! them come here changes.
//!
//! What the rule cannot compute from its arguments it asks of a [`World`]
//! (the thread's name, `times` left, the stack filter), each only when it
//! reaches that step. It never allocates, locks or panics.

use crate::hash::splitmix64;
use crate::pass::{Counters, Horizon};

/// What a stack filter says of one allocation (the site walk's `sites=`
/// and `stack=` modes).
#[cfg_attr(not(feature = "sites"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StackCheck {
    /// Not a candidate.
    Pass,
    /// A new site, recorded: fail it now, bypassing `space`, `interval` and
    /// `probability`.
    Fail,
    /// The stack matches; the usual `space`, `interval` and `probability`
    /// steps decide.
    Candidate,
}

/// The `index`-th random number of the sequence for `seed`, 32 bits.
pub(crate) fn random(seed: u64, index: u64) -> u32 {
    (splitmix64(seed ^ splitmix64(index)) >> 32) as u32
}

/// The attributes in force, as plain values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attrs {
    /// `probability` as a threshold on a 32-bit draw (0: never; above
    /// `u32::MAX`: always).
    pub(crate) threshold: u64,
    pub(crate) interval: u64,
    pub(crate) min_size: usize,
    pub(crate) max_size: usize,
    pub(crate) task_filter: bool,
    pub(crate) after: u64,
    pub(crate) seed: u64,
    pub(crate) nth: u64,
    /// `space` as configured: the counters' budget at the start.
    pub(crate) space: u64,
}

/// The allocation being decided.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allocation {
    pub(crate) size: usize,
    /// Its number on the thread (1-based).
    pub(crate) number: u64,
    /// Inside a `make_it_fail` scope.
    pub(crate) makes_it_fail: bool,
}

/// What the rule asks of the process, each when it reaches that step.
pub(crate) trait World {
    /// Whether `thread=` names this thread (or is unset).
    fn thread_matches(&mut self) -> bool;
    /// `times` left (`-1`: no limit).
    fn times_left(&mut self) -> i64;
    /// The stack filter's word on this allocation, if one is installed.
    fn stack(&mut self) -> Option<StackCheck>;
    /// What tells this thread's draws from the others' (a hash of its
    /// name).
    fn salt(&mut self) -> u64;
}

/// The rule's answer for one allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Whether the allocation fails.
    pub(crate) fail: bool,
    /// How many of the thread's next allocations are known to pass.
    pub(crate) horizon: Horizon,
}

const PASS: Outcome = Outcome {
    fail: false,
    horizon: Horizon::None,
};
const FAIL: Outcome = Outcome {
    fail: true,
    horizon: Horizon::None,
};
const FOR_GOOD: Outcome = Outcome {
    fail: false,
    horizon: Horizon::ForGood,
};

/// Decides one allocation (see `inject`'s module docs for the order), and
/// counts it in `c`.
pub(crate) fn decide(a: &Attrs, c: &mut Counters, x: Allocation, w: &mut impl World) -> Outcome {
    // The common case of `task-filter=Y`: outside `make_it_fail`, nothing
    // below can fail this allocation, and with no `after` to count, nothing
    // below has to be counted either (the size range and `nth` are pure
    // filters). Same verdict, decided early.
    if a.task_filter && !x.makes_it_fail && a.after == 0 {
        return FOR_GOOD;
    }
    if c.after < a.after {
        c.after += 1;
        return PASS;
    }
    if x.size < a.min_size || x.size > a.max_size {
        return PASS;
    }
    if a.nth != 0 && x.number != a.nth {
        // Only the thread's allocation `nth` is a candidate: the ones before
        // it pass without a decision (nothing above counts any more: `after`
        // is spent), and every one after it.
        if x.number < a.nth {
            let passes = a.nth - x.number - 1;
            let horizon = Horizon::Passes {
                passes,
                interval: 0,
            };
            return Outcome {
                fail: false,
                horizon,
            };
        }
        return FOR_GOOD;
    }
    if a.threshold == 0
        || (a.task_filter && !x.makes_it_fail)
        || !w.thread_matches()
        || w.times_left() == 0
    {
        return FOR_GOOD;
    }
    // The site walk: `sites=` fails a new call stack once per process,
    // bypassing space/interval/probability; `stack=` makes only that stack
    // a candidate.
    let filtered = match w.stack() {
        Some(StackCheck::Candidate) => true,
        Some(StackCheck::Pass) => return PASS,
        Some(StackCheck::Fail) => return FAIL,
        None => false,
    };
    if c.space > x.size as u64 {
        c.space -= x.size as u64;
        return PASS;
    }
    // Whether the allocation's size no longer matters: no size range, no
    // stack filter, and a `space` budget too small for any allocation to
    // take from it (every size is at least 1). Then the allocations up to
    // the next candidate that can fail are known to pass.
    let size_blind =
        !filtered && a.min_size == 0 && a.max_size == usize::MAX && c.space <= 1 && a.nth == 0;
    candidate(a, c, x, w, size_blind)
}

/// The candidate steps: `interval`, then the draw.
fn candidate(
    a: &Attrs,
    c: &mut Counters,
    x: Allocation,
    w: &mut impl World,
    size_blind: bool,
) -> Outcome {
    let interval = a.interval.max(1);
    if interval > 1 {
        c.interval += 1;
        let into = c.interval % interval;
        if into != 0 {
            // The allocations before the next multiple pass.
            if !size_blind {
                return PASS;
            }
            let passes = interval - 1 - into;
            c.precount(passes, interval);
            let horizon = Horizon::Passes { passes, interval };
            return Outcome {
                fail: false,
                horizon,
            };
        }
    }
    if a.threshold > u64::from(u32::MAX) {
        // 100 %: every candidate fails.
        return FAIL;
    }
    let left = match c.gap.take() {
        Some(left) => left,
        None => draw(a, c, x, w),
    };
    if left == 0 {
        return FAIL;
    }
    // This candidate passes, and `left - 1` more; the one after them fails.
    c.gap = Some(left - 1);
    if !size_blind {
        return PASS;
    }
    // The allocations up to that one pass: `interval - 1` between two
    // candidates.
    let passes = left.saturating_mul(interval) - 1;
    c.precount(passes, interval);
    let horizon = Horizon::Passes { passes, interval };
    Outcome {
        fail: false,
        horizon,
    }
}

/// How many candidates pass before the thread's next failure, drawn at
/// allocation `x`.
fn draw(a: &Attrs, c: &mut Counters, x: Allocation, w: &mut impl World) -> u64 {
    let base = *c.base.get_or_insert(x.number.saturating_sub(1));
    let salt = match c.salt {
        Some(salt) => salt,
        None => *c.salt.insert(w.salt()),
    };
    gap(a.seed ^ salt, x.number.saturating_sub(base), a.threshold)
}

/// How many candidates pass before the next failure when each fails with
/// probability `threshold / 2^32`: a geometric draw (inverse transform),
/// the `index`-th of the sequence for `seed`.
fn gap(seed: u64, index: u64, threshold: u64) -> u64 {
    let uniform = (f64::from(random(seed, index)) + 1.0) / 4_294_967_296.0;
    let p = threshold as f64 / 4_294_967_296.0;
    let passes = uniform.ln() / (-p).ln_1p();
    if passes.is_finite() && passes >= 0.0 {
        // Saturating: a huge gap is "not in this run".
        passes as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A world where the thread matches, `times` is unlimited and no stack
    /// filter is installed.
    struct Plain;

    impl World for Plain {
        fn thread_matches(&mut self) -> bool {
            true
        }
        fn times_left(&mut self) -> i64 {
            -1
        }
        fn stack(&mut self) -> Option<StackCheck> {
            None
        }
        fn salt(&mut self) -> u64 {
            0x5a17
        }
    }

    /// The attributes of `spec` (parsed as `MAYFAIL_INJECT` is).
    fn attrs(spec: &str) -> Attrs {
        let s = crate::spec::parse(spec.as_bytes()).unwrap();
        Attrs {
            threshold: s.threshold(),
            interval: s.interval,
            min_size: s.min_size,
            max_size: s.max_size,
            task_filter: s.task_filter,
            after: s.after,
            seed: s.seed.unwrap_or(0),
            nth: s.nth,
            space: s.space,
        }
    }

    /// The verdicts (`true`: fail) of allocations of `sizes` in turn, each
    /// inside `make_it_fail` unless `outside` names its index, the horizons
    /// taken as the ledger takes them: the allocations they cover pass
    /// without coming here.
    fn run(a: &Attrs, sizes: &[usize], outside: &dyn Fn(usize) -> bool) -> Vec<bool> {
        let mut c = Counters::fresh(a.space);
        let (mut skip, mut precounted) = (0u64, 0u64);
        let mut seen = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            if i > 0 && outside(i) != outside(i - 1) {
                // A scope change voids the passes, as the ledger does.
                if precounted != 0 {
                    c.give_back(skip, precounted);
                }
                skip = 0;
            }
            if skip > 0 {
                skip -= 1;
                seen.push(false);
                continue;
            }
            let x = Allocation {
                size,
                number: i as u64 + 1,
                makes_it_fail: !outside(i),
            };
            let out = decide(a, &mut c, x, &mut Plain);
            (skip, precounted) = match out.horizon {
                Horizon::None => (0, 0),
                Horizon::Passes { passes, interval } => (passes, interval),
                Horizon::ForGood => (u64::MAX, 0),
            };
            seen.push(out.fail);
        }
        seen
    }

    /// The kernel's rule for the attributes the model covers, one
    /// allocation after the other (`true`: it fails): the model of the
    /// integration test `attributes_follow_the_kernel_rule_...`, here
    /// against the rule itself, its horizons taken.
    fn kernel(a: &Attrs, sizes: &[usize], outside: &dyn Fn(usize) -> bool) -> Vec<bool> {
        let (mut after, mut space, mut candidates) = (0, a.space, 0u64);
        let mut decide = |i: usize, size: usize| {
            if after < a.after {
                after += 1;
                return false;
            }
            if size < a.min_size || size > a.max_size || (a.task_filter && outside(i)) {
                return false;
            }
            if space > size as u64 {
                space -= size as u64;
                return false;
            }
            candidates += 1;
            candidates.is_multiple_of(a.interval.max(1))
        };
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| decide(i, s))
            .collect()
    }

    #[test]
    fn the_rule_follows_the_kernels_model_with_its_horizons() {
        let mut state = 0x5eed_u64;
        let mut below = |n: usize| {
            state = crate::hash::splitmix64(state);
            (state % n as u64) as usize
        };
        // Miri runs this thousands of times slower.
        let cases = if cfg!(miri) { 50 } else { 2000 };
        for case in 0..cases {
            let spec = format!(
                "probability=100,times=-1,space={},interval={},after={},min-size={},task-filter={}{}",
                [0, 1, 2, 100, 300][below(5)],
                [1, 2, 3, 7][below(4)],
                [0, 3, 10][below(3)],
                [0, 0, 16][below(3)],
                ["N", "Y"][below(2)],
                ["", "", ",max-size=200"][below(3)],
            );
            let a = attrs(&spec);
            let sizes: Vec<usize> = (0..10 + below(60))
                .map(|_| [1, 4, 8, 64, 150, 400][below(6)])
                .collect();
            let out_from = below(80);
            let outside = |i: usize| i >= out_from && i < out_from + 5;
            assert_eq!(
                run(&a, &sizes, &outside),
                kernel(&a, &sizes, &outside),
                "case {case}: {spec} {sizes:?}"
            );
        }
    }

    #[test]
    fn the_same_seed_fails_the_same_allocations_whatever_filters_let_all_through() {
        let n = if cfg!(miri) { 300 } else { 3000 };
        let sizes: Vec<usize> = (0..n).map(|i| 8 + i % 300).collect();
        let all = |_| false;
        for base in [
            "probability=5,times=-1,seed=11",
            "probability=20,interval=3,times=-1,seed=4",
            "probability=3,times=-1,seed=77",
        ] {
            let plain = run(&attrs(base), &sizes, &all);
            assert!(plain.contains(&true), "{base}: something fails");
            for filter in [
                "min-size=1",
                "max-size=1000000",
                "space=1",
                "min-size=1,max-size=1G",
            ] {
                let filtered = run(&attrs(&format!("{base},{filter}")), &sizes, &all);
                assert_eq!(filtered, plain, "{base} with {filter}");
            }
        }
    }
}
