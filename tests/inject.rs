//! Fault injection: the kernel's attributes against hand-computed
//! expectations, fail-nth per thread, seeds, transient versus final failures
//! with each retry knob, and the report of the call site that could not cope
//! (in a child process that really aborts or crashes).
//!
//! Injection is configured process-wide, so every test that configures it
//! runs its body in a child process; `task-filter=Y` with `make_it_fail`
//! keeps libtest's own thread out of it.

mod common;

use std::alloc::{Layout, System};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use common::{free, is_child, run_child, run_child_with};
use mayfail::{MayFail, stats};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

/// Makes `N` allocations of `size(i)` bytes inside `make_it_fail` and
/// returns the 1-based numbers of those that failed.
fn failing<const N: usize>(size: impl Fn(usize) -> usize) -> Vec<usize> {
    let mut blocks = [std::ptr::null_mut::<u8>(); N];
    mayfail::make_it_fail(|| {
        for (i, block) in blocks.iter_mut().enumerate() {
            *block = common::alloc(size(i + 1));
        }
    });
    let mut failed = Vec::new();
    for (i, &block) in blocks.iter().enumerate() {
        if block.is_null() {
            failed.push(i + 1);
        } else {
            free(block, size(i + 1));
        }
    }
    failed
}

/// Runs the body of test `name` in a child with `MAYFAIL_INJECT` unset.
fn child(name: &str) {
    run_child::<&str, &str>(name, &[("MAYFAIL_INJECT", None)]).assert_success();
}

#[test]
fn interval_3_times_2_fails_attempts_3_and_6_only() {
    if is_child() {
        mayfail::configure_injection("interval=3,times=2,task-filter=Y").unwrap();
        assert_eq!(failing::<12>(|_| 64), [3, 6]);
        return;
    }
    child("interval_3_times_2_fails_attempts_3_and_6_only");
}

#[test]
fn interval_counts_only_candidates_across_scopes_and_sizes() {
    if is_child() {
        // A long interval: the allocations between two multiples.
        mayfail::configure_injection("interval=7,times=-1,task-filter=Y").unwrap();
        assert_eq!(failing::<30>(|_| 64), [7, 14, 21, 28]);

        // Leaving `make_it_fail` between candidates: what happens outside
        // does not count, the count goes on inside.
        mayfail::configure_injection("interval=3,times=-1,task-filter=Y").unwrap();
        assert_eq!(failing::<1>(|_| 64), [] as [usize; 0]);
        let outside = common::alloc(64);
        assert!(!outside.is_null());
        free(outside, 64);
        assert_eq!(failing::<6>(|_| 64), [2, 5]);

        // `space` first, then `interval` among the candidates; a small
        // allocation still takes from what is left of the budget. The
        // kernel's rule, allocation by allocation.
        let size = |i: usize| if i.is_multiple_of(5) { 4 } else { 64 };
        let model = |n: usize, mut space: usize, interval: usize| {
            let mut candidates = 0usize;
            let mut failed = Vec::new();
            for i in 1..=n {
                if space > size(i) {
                    space -= size(i);
                    continue;
                }
                candidates += 1;
                if candidates.is_multiple_of(interval) {
                    failed.push(i);
                }
            }
            failed
        };
        for (space, interval) in [(200, 4), (130, 3), (1, 5), (0, 2)] {
            mayfail::configure_injection(&format!(
                "space={space},interval={interval},times=-1,task-filter=Y"
            ))
            .unwrap();
            assert_eq!(
                failing::<40>(size),
                model(40, space, interval),
                "space={space},interval={interval}"
            );
        }
        return;
    }
    child("interval_counts_only_candidates_across_scopes_and_sizes");
}

#[test]
fn probability_with_interval_draws_only_among_candidates() {
    if is_child() {
        let spec = "probability=30,interval=4,times=-1,task-filter=Y,seed=3";
        let run = || {
            mayfail::configure_injection(spec).unwrap();
            // Two scopes with an allocation outside between them: the
            // candidates of both count as one sequence.
            let mut failed = failing::<10>(|_| 64);
            let outside = common::alloc(64);
            assert!(!outside.is_null());
            free(outside, 64);
            failed.extend(failing::<390>(|_| 64).iter().map(|i| i + 10));
            failed
        };
        let failed = run();
        assert!(
            failed.iter().all(|i| i.is_multiple_of(4)),
            "only every 4th candidate can fail: {failed:?}"
        );
        // About 30 % of 100 candidates.
        assert!((12..=50).contains(&failed.len()), "{failed:?}");
        assert_eq!(run(), failed, "the same seed, the same failures");
        return;
    }
    child("probability_with_interval_draws_only_among_candidates");
}

/// Filters that let every allocation through change how many allocations
/// come to the decision (with a size range each one does; without, the
/// ones a draw lets pass are skipped), never which ones fail: one seed,
/// one failure sequence.
#[test]
fn the_same_seed_fails_the_same_allocations_with_filters_that_let_all_through() {
    if is_child() {
        let sizes = |i: usize| 8 + i % 200;
        let run = move || {
            for base in [
                "probability=3,times=-1,task-filter=Y,seed=21",
                "probability=25,interval=3,times=-1,task-filter=Y,seed=8",
            ] {
                mayfail::configure_injection(base).unwrap();
                let plain = failing::<2000>(sizes);
                assert!(plain.len() > 10, "{base}: {plain:?}");
                for filter in [
                    "min-size=1",
                    "max-size=1G",
                    "space=1",
                    "thread=sequence",
                    "min-size=1,max-size=1G,space=1",
                ] {
                    mayfail::configure_injection(&format!("{base},{filter}")).unwrap();
                    assert_eq!(failing::<2000>(sizes), plain, "{base} with {filter}");
                }
            }
            mayfail::disable_injection();
        };
        let thread = std::thread::Builder::new().name("sequence".into());
        thread.spawn(run).unwrap().join().unwrap();
        return;
    }
    child("the_same_seed_fails_the_same_allocations_with_filters_that_let_all_through");
}

#[test]
fn arming_or_disarming_fail_nth_does_not_leave_a_drawn_failure_due() {
    if is_child() {
        // Whether the second of two allocations fails under a 1 %
        // probability with `seed`, with `between` run between them.
        let second_fails = |seed: u64, between: &dyn Fn()| {
            mayfail::configure_injection(&format!(
                "probability=1,times=-1,task-filter=Y,seed={seed}"
            ))
            .unwrap();
            let (a, b) = mayfail::make_it_fail(|| {
                let a = common::alloc(64);
                between();
                (a, common::alloc(64))
            });
            mayfail::disable_injection();
            for block in [a, b] {
                if !block.is_null() {
                    free(block, 64);
                }
            }
            b.is_null()
        };
        let count =
            |between: &dyn Fn()| (0..200).filter(|&seed| second_fails(seed, between)).count();
        // The second allocation is decided afresh once the passes are
        // void: about 1 % again, not the failure the first draw placed.
        for (what, between) in [
            ("nothing", &(|| {}) as &dyn Fn()),
            ("fail_nth(0)", &|| mayfail::fail_nth(0)),
            ("fail_nth(1000), then 0", &|| {
                mayfail::fail_nth(1_000);
                mayfail::fail_nth(0);
            }),
        ] {
            let failed = count(between);
            assert!(failed <= 10, "{what} between: {failed} of 200 failed");
        }
        return;
    }
    child("arming_or_disarming_fail_nth_does_not_leave_a_drawn_failure_due");
}

/// How an allocation of the attribute test below is made.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scope {
    Outside,
    MakeItFail,
    Nofail,
    Nowarn,
}

/// The attribute sets the test below draws from.
#[derive(Clone, Copy, Debug)]
struct Attributes {
    space: usize,
    interval: u64,
    after: u64,
    min_size: usize,
    max_size: usize,
    times: i64,
    task_filter: bool,
}

/// The kernel's rule, one allocation after the other (`true`: it succeeds).
fn kernel_rule(a: Attributes, allocations: &[(Scope, usize)]) -> Vec<bool> {
    let (mut after, mut space, mut candidates, mut times) = (0, a.space, 0u64, a.times);
    let mut decide = |scope: Scope, size: usize| {
        if scope == Scope::Nofail {
            return true; // exempt, not counted
        }
        if after < a.after {
            after += 1;
            return true;
        }
        if size < a.min_size || size > a.max_size {
            return true;
        }
        if (a.task_filter && scope == Scope::Outside) || times == 0 {
            return true;
        }
        if space > size {
            space -= size;
            return true;
        }
        candidates += 1;
        if !candidates.is_multiple_of(a.interval) {
            return true;
        }
        if times > 0 {
            times -= 1;
        }
        false
    };
    allocations
        .iter()
        .map(|&(scope, size)| decide(scope, size))
        .collect()
}

/// The same allocations through mayfail, on a fresh thread.
fn through_mayfail(a: Attributes, allocations: &[(Scope, usize)]) -> Vec<bool> {
    let mut spec = format!(
        "interval={},space={},after={},min-size={},times={},task-filter={},thread=rule",
        a.interval,
        a.space,
        a.after,
        a.min_size,
        a.times,
        if a.task_filter { "Y" } else { "N" }
    );
    if a.max_size != usize::MAX {
        spec += &format!(",max-size={}", a.max_size);
    }
    let allocations = allocations.to_vec();
    std::thread::Builder::new()
        .name("rule".into())
        .spawn(move || {
            mayfail::configure_injection(&spec).unwrap();
            // Made inside `nofail`: the bookkeeping is not counted, and
            // the pushes below do not allocate.
            let mut blocks: Vec<*mut u8> =
                mayfail::nofail(|| Vec::with_capacity(allocations.len()));
            for &(scope, size) in &allocations {
                let one = || common::alloc(size);
                let block = match scope {
                    Scope::Outside => one(),
                    Scope::MakeItFail => mayfail::make_it_fail(one),
                    Scope::Nofail => mayfail::make_it_fail(|| mayfail::nofail(one)),
                    Scope::Nowarn => mayfail::make_it_fail(|| mayfail::nowarn(one)),
                };
                blocks.push(block);
            }
            mayfail::disable_injection();
            blocks
                .iter()
                .zip(&allocations)
                .map(|(&block, &(_, size))| {
                    if !block.is_null() {
                        free(block, size);
                    }
                    !block.is_null()
                })
                .collect()
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Every combination of `after`, a size range, `task-filter`, `times`,
/// `space` and `interval`, over allocations of mixed sizes in and out of
/// scopes that void the passes: mayfail's verdicts (with its passes) are
/// those of the kernel's rule applied to each allocation in turn.
#[test]
fn attributes_follow_the_kernel_rule_allocation_by_allocation() {
    if is_child() {
        // A fixed sequence (splitmix64) of random cases.
        let mut state = 0x5eed_u64;
        let mut below = |n: usize| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % n as u64) as usize
        };
        for case in 0..3000 {
            let a = Attributes {
                space: [0, 1, 2, 100, 300][below(5)],
                interval: [1, 2, 3, 7][below(4)],
                after: [0, 3, 10][below(3)],
                min_size: [0, 0, 16][below(3)],
                max_size: [usize::MAX, usize::MAX, 200][below(3)],
                times: [-1, -1, 3][below(3)],
                task_filter: below(2) == 0,
            };
            let mut scope = Scope::MakeItFail;
            let allocations: Vec<(Scope, usize)> = (0..10 + below(60))
                .map(|_| {
                    if below(6) == 0 {
                        scope = [
                            Scope::Outside,
                            Scope::Nofail,
                            Scope::Nowarn,
                            Scope::MakeItFail,
                        ][below(4)];
                    }
                    (scope, [1, 4, 8, 64, 150, 400][below(6)])
                })
                .collect();
            assert_eq!(
                through_mayfail(a, &allocations),
                kernel_rule(a, &allocations),
                "case {case}: {a:?}\n{allocations:?}"
            );
        }
        return;
    }
    child("attributes_follow_the_kernel_rule_allocation_by_allocation");
}

#[test]
fn the_environment_spec_applies_from_the_first_allocation() {
    if is_child() {
        assert_eq!(failing::<12>(|_| 64), [3, 6]);
        return;
    }
    run_child_with(
        "the_environment_spec_applies_from_the_first_allocation",
        &[("MAYFAIL_INJECT", "interval=3,times=2,task-filter=Y")],
    )
    .assert_success();
}

#[test]
fn space_1000_lets_exactly_nine_100_byte_allocations_through() {
    if is_child() {
        mayfail::configure_injection("space=1000,task-filter=Y").unwrap();
        assert_eq!(failing::<14>(|_| 100), [10]);
        return;
    }
    child("space_1000_lets_exactly_nine_100_byte_allocations_through");
}

#[test]
fn interval_space_and_draws_count_per_thread() {
    if is_child() {
        let on_a_thread = |f: fn() -> Vec<usize>| std::thread::spawn(f).join().unwrap();
        mayfail::configure_injection("interval=3,times=-1,task-filter=Y").unwrap();
        assert_eq!(failing::<2>(|_| 64), []);
        // The thread's own third candidate fails, not the process's third.
        assert_eq!(on_a_thread(|| failing::<4>(|_| 64)), [3]);
        assert_eq!(failing::<1>(|_| 64), [1]);
        mayfail::configure_injection("space=250,times=-1,task-filter=Y").unwrap();
        assert_eq!(failing::<2>(|_| 100), []);
        // A budget of its own: 250 bytes, not the 50 this thread left.
        assert_eq!(on_a_thread(|| failing::<3>(|_| 100)), [3]);
        assert_eq!(failing::<2>(|_| 100), [1, 2]);
        // Candidate-by-candidate draws (a size range): each thread's
        // sequence starts with the configuration, whatever another thread
        // drew before it.
        let spec = "probability=50,min-size=1,times=-1,task-filter=Y,seed=7";
        mayfail::configure_injection(spec).unwrap();
        let first = std::thread::Builder::new()
            .name("drawer".into())
            .spawn(|| failing::<16>(|_| 64))
            .unwrap()
            .join()
            .unwrap();
        mayfail::configure_injection(spec).unwrap();
        // This thread draws first this time.
        let _ = failing::<5>(|_| 64);
        let again = std::thread::Builder::new()
            .name("drawer".into())
            .spawn(|| failing::<16>(|_| 64))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(first, again);
        return;
    }
    child("interval_space_and_draws_count_per_thread");
}

#[test]
fn size_filters_bound_the_candidates() {
    if is_child() {
        mayfail::configure_injection("min-size=100,max-size=200,times=-1,task-filter=Y").unwrap();
        let sizes = [50, 99, 100, 150, 200, 201, 4096];
        assert_eq!(failing::<7>(|i| sizes[i - 1]), [3, 4, 5]);
        mayfail::configure_injection("min-size=1K,times=-1,task-filter=Y").unwrap();
        assert_eq!(failing::<7>(|i| sizes[i - 1]), [7]);
        return;
    }
    child("size_filters_bound_the_candidates");
}

#[test]
fn the_task_filter_limits_injection_to_make_it_fail_scopes() {
    if is_child() {
        mayfail::configure_injection("times=-1,task-filter=Y").unwrap();
        let outside = common::alloc(64);
        assert!(
            !outside.is_null(),
            "outside make_it_fail nothing is injected"
        );
        free(outside, 64);
        let guard = mayfail::make_it_fail_guard();
        let inside = common::alloc(64);
        let nested = mayfail::make_it_fail(|| common::alloc(64));
        let still_inside = common::alloc(64);
        drop(guard);
        let after = common::alloc(64);
        assert!(inside.is_null() && nested.is_null() && still_inside.is_null());
        assert!(!after.is_null(), "the guard ended the scope");
        free(after, 64);
        return;
    }
    child("the_task_filter_limits_injection_to_make_it_fail_scopes");
}

#[test]
fn after_lets_the_first_allocations_of_the_process_pass() {
    if is_child() {
        mayfail::configure_injection("after=5,times=-1,task-filter=Y").unwrap();
        assert_eq!(failing::<8>(|_| 32), [6, 7, 8]);
        return;
    }
    child("after_lets_the_first_allocations_of_the_process_pass");
}

#[test]
fn the_same_seed_gives_the_same_failures_and_another_seed_others() {
    if is_child() {
        let run = |seed: u64| {
            let spec = format!("probability=50,times=-1,task-filter=Y,seed={seed}");
            mayfail::configure_injection(&spec).unwrap();
            failing::<64>(|_| 48)
        };
        let first = run(42);
        assert_eq!(run(42), first);
        assert_ne!(run(43), first);
        assert!(
            (16..=48).contains(&first.len()),
            "about half: {}",
            first.len()
        );
        return;
    }
    child("the_same_seed_gives_the_same_failures_and_another_seed_others");
}

#[test]
fn probability_zero_never_fails_and_decimals_are_accepted() {
    if is_child() {
        mayfail::configure_injection("probability=0,times=-1,task-filter=Y").unwrap();
        assert!(failing::<64>(|_| 48).is_empty());
        mayfail::configure_injection("probability=0.5,times=-1,task-filter=Y,seed=1").unwrap();
        let before = stats();
        let mut failures = 0;
        for _ in 0..20 {
            failures += failing::<64>(|_| 48).len();
        }
        assert_eq!(stats().since(&before).injected, failures as u64);
        assert!(failures < 40, "0.5 % of 1280 is about 6: {failures}");
        return;
    }
    child("probability_zero_never_fails_and_decimals_are_accepted");
}

/// Runs in the test process itself, next to the other tests: fail-nth is
/// strictly per thread.
#[test]
fn fail_nth_fails_the_nth_allocation_of_its_own_thread_only() {
    let threads: Vec<_> = (1..=4u64)
        .map(|n| {
            std::thread::spawn(move || {
                mayfail::fail_nth(n * 2);
                assert_eq!(mayfail::fail_nth_pending(), n * 2);
                let mut outcomes = [true; 10];
                for (i, ok) in outcomes.iter_mut().enumerate() {
                    let mut v: Vec<u8> = Vec::new();
                    *ok = v.try_reserve_exact(16 + i).is_ok();
                }
                assert_eq!(mayfail::fail_nth_pending(), 0, "it fired");
                let failed: Vec<usize> = (1..=10).filter(|&i| !outcomes[i - 1]).collect();
                (n, failed)
            })
        })
        .collect();
    let bystander = std::thread::spawn(|| {
        (0..1000)
            .filter(|i| Vec::<u8>::new().try_reserve(8 + i % 64).is_err())
            .count()
    });
    for t in threads {
        let (n, failed) = t.join().unwrap();
        assert_eq!(failed, [n as usize * 2], "thread armed with {}", n * 2);
    }
    assert_eq!(
        bystander.join().unwrap(),
        0,
        "an unarmed thread never fails"
    );
}

#[test]
fn fail_nth_can_be_disarmed_and_skips_nofail() {
    mayfail::fail_nth(2);
    mayfail::fail_nth(0);
    assert_eq!(mayfail::fail_nth_pending(), 0);
    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(1).is_ok() && Vec::<u8>::new().try_reserve(1).is_ok());

    mayfail::fail_nth(1);
    let kept = mayfail::nofail(|| Vec::<u8>::with_capacity(64));
    assert_eq!(
        mayfail::fail_nth_pending(),
        1,
        "nofail allocations are not counted"
    );
    assert!(Vec::<u8>::new().try_reserve(64).is_err());
    drop(kept);
}

#[test]
fn nofail_is_never_injected() {
    if is_child() {
        mayfail::configure_injection("times=-1,task-filter=Y").unwrap();
        let before = stats();
        let p = mayfail::make_it_fail(|| mayfail::nofail(|| common::alloc(64)));
        assert!(!p.is_null());
        free(p, 64);
        assert_eq!(stats().since(&before).injected, 0);
        return;
    }
    child("nofail_is_never_injected");
}

#[test]
fn transient_and_final_failures_with_each_retry_knob() {
    if is_child() {
        let knob = mayfail::retries();
        for transient in ["N", "Y"] {
            let spec = format!("times=-1,task-filter=Y,transient={transient}");
            mayfail::configure_injection(&spec).unwrap();
            let before = stats();
            let p = mayfail::make_it_fail(|| common::alloc(64));
            let d = stats().since(&before);
            let served = !p.is_null();
            if served {
                free(p, 64);
            }
            let expected = match (transient, knob) {
                // A final injected failure ignores the policy.
                ("N", _) => (false, 0, 0, 0),
                // A transient one fails one attempt: the policy retries.
                ("Y", 0) => (false, 0, 0, 1),
                ("Y", _) => (true, 1, 1, 0),
                _ => unreachable!(),
            };
            assert_eq!(
                (served, d.retries, d.recovered, d.failed),
                expected,
                "transient={transient} retries={knob}: {d:?}"
            );
            assert_eq!(d.injected, 1);
        }
        return;
    }
    for knob in ["-1", "0", "3"] {
        run_child(
            "transient_and_final_failures_with_each_retry_knob",
            &[("MAYFAIL_RETRIES", Some(knob)), ("MAYFAIL_INJECT", None)],
        )
        .assert_success();
    }
}

#[test]
fn bad_specs_are_refused_with_the_field_and_the_accepted_forms() {
    let long = format!("probability={}", "9".repeat(64 * 1024));
    let cases: [(&str, &str); 12] = [
        ("", "the spec is empty"),
        (
            "probabilty=5",
            "unknown key \"probabilty\"; keys: probability, interval",
        ),
        (
            "probability=abc",
            "probability takes a percentage from 0 to 100",
        ),
        (
            "probability=101",
            "probability takes a percentage from 0 to 100",
        ),
        ("interval=0", "interval takes a whole number >= 1"),
        (
            "times=-2",
            "times takes -1 (unlimited) or a whole number >= 0",
        ),
        ("times=1,times=2", "\"times\" is given twice"),
        ("times=1,,interval=2", "empty pair"),
        (
            "space=12Q",
            "space takes bytes, with an optional K, M or G suffix",
        ),
        ("verbose=3", "verbose takes 0, 1 or 2"),
        ("task-filter=maybe", "task-filter takes Y or N"),
        (&long, "probability takes a percentage"),
    ];
    for (spec, expected) in cases {
        let err = mayfail::configure_injection(spec).expect_err(spec);
        let text = err.to_string();
        assert!(text.starts_with("invalid injection spec: "), "{text}");
        assert!(text.contains(expected), "{spec:.40}: {text}");
        assert!(text.len() < 300, "a long value is cut: {}", text.len());
        let _: &dyn std::error::Error = &err;
    }
}

#[test]
fn a_bad_environment_spec_prints_one_line_and_leaves_injection_off() {
    if is_child() {
        assert!(failing::<8>(|_| 64).is_empty());
        assert_eq!(stats().injected, 0);
        return;
    }
    for spec in [
        "probability=abc,task-filter=Y",
        "times=1,times=1",
        "nope",
        "task-filter=Y,",
    ] {
        let run = run_child_with(
            "a_bad_environment_spec_prints_one_line_and_leaves_injection_off",
            &[("MAYFAIL_INJECT", spec)],
        );
        run.assert_success();
        let lines = run.mayfail_lines();
        assert_eq!(lines.len(), 1, "{spec}: {}", run.stderr);
        assert!(
            lines[0].starts_with("mayfail: ignoring MAYFAIL_INJECT=\""),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("injection stays off"), "{}", lines[0]);
    }
}

#[test]
fn verbose_prints_the_seed_and_one_line_per_injected_failure() {
    if is_child() {
        assert_eq!(failing::<6>(|_| 64), [2, 4]);
        return;
    }
    let run = run_child_with(
        "verbose_prints_the_seed_and_one_line_per_injected_failure",
        &[(
            "MAYFAIL_INJECT",
            "interval=2,times=2,task-filter=Y,verbose=1",
        )],
    );
    run.assert_success();
    let lines = run.mayfail_lines();
    assert_eq!(lines.len(), 3, "{}", run.stderr);
    assert!(lines[0].starts_with("mayfail: injecting allocation failures: MAYFAIL_INJECT='"));
    assert!(lines[0].contains(",seed="), "{}", lines[0]);
    for line in &lines[1..] {
        assert!(
            line.contains("injected failure: alloc of 64 bytes (align 8)"),
            "{line}"
        );
        assert!(line.contains("its allocation #"), "{line}");
    }
}

#[test]
fn nth_fails_that_allocation_of_the_thread_and_no_other() {
    if is_child() {
        // The allocations (1-based) among 100 that fail on a fresh thread
        // with `nth=N`: the thread's own allocation N, wherever it falls.
        let failed_with = |nth: usize| {
            mayfail::configure_injection(&format!(
                "probability=100,times=-1,nth={nth},thread=nth-probe"
            ))
            .unwrap();
            let failed = std::thread::Builder::new()
                .name("nth-probe".into())
                .spawn(|| failing::<100>(|_| 64))
                .unwrap()
                .join()
                .unwrap();
            mayfail::disable_injection();
            failed
        };
        let first = failed_with(40);
        assert_eq!(first.len(), 1, "{first:?}");
        for later in [1, 2, 9, 30] {
            assert_eq!(
                failed_with(40 + later),
                [first[0] + later],
                "nth={}",
                40 + later
            );
        }
        return;
    }
    child("nth_fails_that_allocation_of_the_thread_and_no_other");
}

fn push_one(v: &mut Vec<u64>) {
    v.push(7);
}

#[test]
fn abort_report_names_the_call_site() {
    if is_child() {
        let mut v = Vec::new();
        mayfail::make_it_fail(|| push_one(&mut v));
        unreachable!("Vec::push cannot survive a failed allocation");
    }
    let name = "abort_report_names_the_call_site";
    let run = run_child_with(name, &[("MAYFAIL_INJECT", "task-filter=Y")]);
    assert_eq!(run.signal, Some(libc::SIGABRT), "{}", run.stderr);
    let report = assert_aborted_with_report(
        &run.stderr,
        run.code,
        "memory allocation of 32 bytes failed",
    );
    let first = first_frame(&report);
    assert!(
        first.contains("inject::push_one"),
        "the call site is on top: {report}"
    );

    // Run the replay line again, in the same environment: same place.
    let replay = report
        .lines()
        .find_map(|l| l.strip_prefix("mayfail:   replay: "))
        .expect("a replay line");
    let spec = replay
        .strip_prefix("MAYFAIL_INJECT='")
        .and_then(|rest| rest.split_once("' "))
        .expect("the replay starts with MAYFAIL_INJECT='...'");
    assert!(spec.0.starts_with("nth="), "{replay}");
    assert!(spec.0.contains(",thread=abort_report_na"), "{replay}");
    let argv: Vec<&str> = spec.1.split(' ').collect();
    let again = Command::new(argv[0])
        .args(&argv[1..])
        .env("MAYFAIL_TEST_CHILD", "1")
        .env("MAYFAIL_INJECT", spec.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.signal(), Some(libc::SIGABRT), "{stderr}");
    let replayed = assert_aborted_with_report(
        &stderr,
        again.status.code(),
        "memory allocation of 32 bytes failed",
    );
    assert_eq!(
        first_frame(&replayed),
        first,
        "the replay fails at the same place"
    );
}

/// Checks that a child aborted after an injected failure and returns the
/// report.
fn assert_aborted_with_report(stderr: &str, code: Option<i32>, std_message: &str) -> String {
    assert_eq!(code, None, "killed by a signal: {stderr}");
    assert!(stderr.contains(std_message), "{stderr}");
    let start = stderr
        .find("mayfail: the process is aborting after an injected allocation failure")
        .unwrap_or_else(|| panic!("no report: {stderr}"));
    let report = &stderr[start..];
    assert!(
        report
            .contains("mayfail:   cause: std's handle_alloc_error, an infallible allocation path"),
        "{report}"
    );
    assert!(
        report.contains("failed on purpose: alloc of 32 bytes (align 8)"),
        "{report}"
    );
    report.to_owned()
}

fn first_frame(report: &str) -> String {
    let mut lines = report
        .lines()
        .skip_while(|l| !l.contains("backtrace of the failing allocation"));
    lines.next();
    lines.next().expect("a frame").trim().to_owned()
}

#[test]
fn a_null_write_after_injection_is_reported_as_a_likely_unchecked_null() {
    if is_child() {
        let layout = Layout::from_size_align(64, 8).unwrap();
        mayfail::fail_nth(1);
        // SAFETY: deliberately not: the null check is missing, as in the bugs
        // this report is for.
        unsafe {
            let p = std::alloc::alloc(layout);
            std::ptr::write_volatile(p.add(8), 1u8);
        }
        unreachable!("writing through null faults");
    }
    let run = run_child::<&str, &str>(
        "a_null_write_after_injection_is_reported_as_a_likely_unchecked_null",
        &[("MAYFAIL_INJECT", None)],
    );
    assert_eq!(run.signal, Some(libc::SIGSEGV), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "mayfail: the process crashed (SIGSEGV at address 0x8) after an injected allocation \
             failure: likely an unchecked null"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("by fail-nth"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("(the program sets up this injection itself)"),
        "{}",
        run.stderr
    );
    let first = first_frame(&run.stderr);
    assert!(
        first.contains("inject::a_null_write_after_injection"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_handled_failure_followed_by_an_unrelated_abort_is_not_blamed_directly() {
    if is_child() {
        mayfail::fail_nth(1);
        assert!(Vec::<u8>::new().try_reserve(10).is_err());
        let handled_fine: Vec<u8> = std::hint::black_box(vec![1u8; 100]);
        drop(handled_fine);
        std::process::abort();
    }
    let run = run_child::<&str, &str>(
        "a_handled_failure_followed_by_an_unrelated_abort_is_not_blamed_directly",
        &[("MAYFAIL_INJECT", None)],
    );
    assert_eq!(run.signal, Some(libc::SIGABRT), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "mayfail:   cause: not handle_alloc_error; the last injected failure on this \
             thread was handled at the time"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn report_n_turns_the_report_off() {
    if is_child() {
        let mut v = Vec::new();
        mayfail::make_it_fail(|| push_one(&mut v));
        unreachable!();
    }
    let run = run_child_with(
        "report_n_turns_the_report_off",
        &[("MAYFAIL_INJECT", "task-filter=Y,report=N")],
    );
    assert_eq!(run.signal, Some(libc::SIGABRT), "{}", run.stderr);
    assert!(
        run.stderr.contains("memory allocation of 32 bytes failed"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("mayfail: the process is aborting"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_thread_filter_limits_injection_to_threads_of_that_name() {
    if is_child() {
        let attempt = |name: &str| {
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(|| {
                    mayfail::make_it_fail(|| {
                        (0..10)
                            .filter(|i| Vec::<u8>::new().try_reserve(16 + i).is_err())
                            .count()
                    })
                })
                .unwrap()
                .join()
                .unwrap()
        };
        assert_eq!(attempt("indexer"), 10);
        assert_eq!(attempt("other"), 0);
        // Names longer than the kernel's 15 bytes match on their first 15.
        assert_eq!(attempt("compaction-worker-7"), 0);
        mayfail::configure_injection("times=-1,task-filter=Y,thread=compaction-worker-3").unwrap();
        assert_eq!(attempt("compaction-worker-7"), 10, "same first 15 bytes");
        return;
    }
    run_child_with(
        "the_thread_filter_limits_injection_to_threads_of_that_name",
        &[("MAYFAIL_INJECT", "times=-1,task-filter=Y,thread=indexer")],
    )
    .assert_success();
}

#[inline(never)]
fn reserve_for_the_index(v: &mut Vec<u32>) -> bool {
    v.try_reserve(1000).is_ok()
}

#[test]
fn verbose_2_adds_the_backtrace_of_each_injected_failure() {
    if is_child() {
        let mut v = Vec::new();
        assert!(!mayfail::make_it_fail(|| reserve_for_the_index(&mut v)));
        return;
    }
    let run = run_child_with(
        "verbose_2_adds_the_backtrace_of_each_injected_failure",
        &[("MAYFAIL_INJECT", "task-filter=Y,verbose=2")],
    );
    run.assert_success();
    assert!(
        run.stderr
            .contains("injected failure: alloc of 4000 bytes (align 4)"),
        "{}",
        run.stderr
    );
    let first = first_frame(&run.stderr);
    assert!(
        first.contains("inject::reserve_for_the_index"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_sigsegv_sent_by_kill_after_an_injected_failure_is_not_blamed_on_it() {
    if is_child() {
        mayfail::fail_nth(1);
        assert!(Vec::<u8>::new().try_reserve(10).is_err());
        // std's stack-overflow handler, which mayfail hands a signal over
        // to, lets a sent SIGSEGV pass once and restores the default action:
        // the next one ends the process.
        loop {
            // SAFETY: raising a signal has no preconditions.
            unsafe { libc::raise(libc::SIGSEGV) };
        }
    }
    let run = run_child::<&str, &str>(
        "a_sigsegv_sent_by_kill_after_an_injected_failure_is_not_blamed_on_it",
        &[("MAYFAIL_INJECT", None)],
    );
    assert_eq!(run.signal, Some(libc::SIGSEGV), "{}", run.stderr);
    assert!(
        !run.stderr.contains("likely an unchecked null"),
        "a sent signal is not a fault: {}",
        run.stderr
    );
}

#[test]
fn an_abort_on_a_small_stack_thread_still_gets_its_report() {
    if is_child() {
        let worker = std::thread::Builder::new()
            .name("small-stack".to_owned())
            .stack_size(32 << 10)
            .spawn(|| {
                mayfail::fail_nth(1);
                let mut v: Vec<u64> = Vec::new();
                push_one(&mut v);
            })
            .unwrap();
        let _ = worker.join();
        unreachable!("the push aborts the process");
    }
    let run = run_child::<&str, &str>(
        "an_abort_on_a_small_stack_thread_still_gets_its_report",
        &[("MAYFAIL_INJECT", None)],
    );
    assert_eq!(run.signal, Some(libc::SIGABRT), "{}", run.stderr);
    let report = assert_aborted_with_report(
        &run.stderr,
        run.code,
        "memory allocation of 32 bytes failed",
    );
    assert!(report.contains("raw frames:"), "{report}");
    assert!(report.contains("thread 'small-stack'"), "{report}");
    assert!(first_frame(&report).contains("push_one"), "{report}");
}

#[test]
fn a_crash_replay_line_survives_the_shell_whatever_the_arguments() {
    let name = "a_crash_replay_line_survives_the_shell_whatever_the_arguments";
    if is_child() {
        let mut v = Vec::new();
        mayfail::make_it_fail(|| push_one(&mut v));
        unreachable!("Vec::push cannot survive a failed allocation");
    }
    let dir = std::env::temp_dir().join(format!("mayfail-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // libtest takes extra words as more filters: with --exact, none of these
    // selects another test, and they all reach the command line.
    let tricky = [
        "a b",
        "it's",
        "$(touch pwned)",
        "`touch pwned2`",
        "caf\u{e9}",
        "x\"y\\z",
        "",
    ];
    let first = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .args(tricky)
        .current_dir(&dir)
        .env("MAYFAIL_TEST_CHILD", "1")
        .env("MAYFAIL_INJECT", "task-filter=Y")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&first.stderr);
    let report = assert_aborted_with_report(
        &stderr,
        first.status.code(),
        "memory allocation of 32 bytes failed",
    );
    let replay = report
        .lines()
        .find_map(|l| l.strip_prefix("mayfail:   replay: "))
        .expect("a replay line")
        .to_owned();
    // Pasted into a shell: the same point fails, and nothing else runs.
    let again = Command::new("bash")
        .args(["-c", &replay])
        .current_dir(&dir)
        .env("MAYFAIL_TEST_CHILD", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(
        again.status.signal(),
        Some(libc::SIGABRT),
        "{replay}\n{stderr}"
    );
    let replayed = assert_aborted_with_report(
        &stderr,
        again.status.code(),
        "memory allocation of 32 bytes failed",
    );
    assert_eq!(first_frame(&replayed), first_frame(&report), "{replay}");
    let again_replay = replayed
        .lines()
        .find_map(|l| l.strip_prefix("mayfail:   replay: "))
        .unwrap();
    assert_eq!(
        again_replay, replay,
        "the replay's own argv is the original one"
    );
    let created: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(created.is_empty(), "the shell ran something: {created:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_verbose_line_pastes_back_to_the_same_state_file() {
    let name = "the_verbose_line_pastes_back_to_the_same_state_file";
    if is_child() {
        // What MAYFAIL_INJECT said is in force; allocate a little.
        drop(std::hint::black_box(vec![0u8; 64]));
        return;
    }
    let dir = std::env::temp_dir().join(format!("mayfail-verbose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("st'a \"te;$(touch pwned) caf\u{e9}.state");
    let spec = format!("sites={},times=0,verbose=1", state.display());
    let run = run_child_with(name, &[("MAYFAIL_INJECT", spec.as_str())]);
    run.assert_success();
    assert!(state.exists(), "the first run opened the state file");
    std::fs::remove_file(&state).unwrap();
    let assignment = run
        .mayfail_lines()
        .iter()
        .find_map(|l| l.strip_prefix("mayfail: injecting allocation failures: "))
        .unwrap_or_else(|| panic!("no verbose line: {}", run.stderr))
        .to_owned();
    // Pasted into a shell, the assignment gives back a spec for the same file.
    let printed = Command::new("bash")
        .args([
            "-c",
            &format!("{assignment}; printf %s \"$MAYFAIL_INJECT\""),
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(printed.status.success());
    let value = String::from_utf8(printed.stdout).unwrap();
    assert!(mayfail::check_injection(&value).is_ok(), "{value}");
    let again = run_child_with(name, &[("MAYFAIL_INJECT", value.as_str())]);
    again.assert_success();
    assert!(
        state.exists(),
        "the pasted spec names the same file: {value}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| *n != state.file_name().unwrap())
        .collect();
    assert!(left.is_empty(), "the shell ran something: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `f` on a thread with a 32 KiB stack and waits for it.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name("small-stack".to_owned())
        .stack_size(32 << 10)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn verbose_backtraces_on_a_small_stack_thread_do_not_crash_it() {
    let name = "verbose_backtraces_on_a_small_stack_thread_do_not_crash_it";
    if is_child() {
        on_small_stack(|| {
            let handled = mayfail::make_it_fail(|| Vec::<u64>::new().try_reserve(8).is_err());
            assert!(handled);
        });
        return;
    }
    let run = run_child_with(
        name,
        &[(
            "MAYFAIL_INJECT",
            "probability=100,times=1,task-filter=Y,verbose=2",
        )],
    );
    run.assert_success();
    assert!(
        run.stderr.contains("backtrace of the failing allocation"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("inject::verbose_backtraces"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_site_walk_on_a_small_stack_thread_does_not_crash_it() {
    let name = "the_site_walk_on_a_small_stack_thread_does_not_crash_it";
    if is_child() {
        on_small_stack(|| {
            // The first new stack of the program's own code fails: handled.
            let failed = Vec::<u64>::new().try_reserve(8).is_err();
            std::hint::black_box(failed);
        });
        return;
    }
    let dir = std::env::temp_dir().join(format!("mayfail-small-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("walk.state");
    // Only the small thread's allocations are candidates.
    let spec = format!("sites={},thread=small-stack", state.display());
    let run = run_child_with(name, &[("MAYFAIL_INJECT", spec.as_str())]);
    run.assert_success();
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let site = text
        .lines()
        .find(|l| l.starts_with("site\t"))
        .unwrap_or_else(|| panic!("no site: {text}"));
    assert!(site.contains("\tsmall-stack\t"), "{site}");
    assert!(
        site.contains("the_site_walk_on_a_small_stack"),
        "named: {site}"
    );
}

/// The indices (1-based) of the allocations that failed among `n` of 64
/// bytes on this thread, made in one `make_it_fail` scope.
fn failing_plain(n: usize) -> Vec<usize> {
    // The bookkeeping is not injected (nofail allocations are not counted).
    let (mut blocks, mut failed) =
        mayfail::nofail(|| (Vec::with_capacity(n), Vec::with_capacity(n)));
    // Only these allocations are candidates (task-filter=Y): the thread's
    // own start-up and the harness around it are never injected.
    mayfail::make_it_fail(|| {
        for _ in 0..n {
            blocks.push(common::alloc(64));
        }
    });
    for (i, &block) in blocks.iter().enumerate() {
        if block.is_null() {
            failed.push(i + 1);
        } else {
            free(block, 64);
        }
    }
    failed
}

#[test]
fn a_probability_seed_replays_per_thread_whatever_the_interleaving() {
    if is_child() {
        mayfail::set_retries(0);
        let run = |seed: u64| {
            mayfail::configure_injection(&format!(
                "probability=5,times=-1,task-filter=Y,seed={seed}"
            ))
            .unwrap();
            // Two named threads allocating at once: their interleaving
            // differs from run to run, their own sequences must not.
            let failed: Vec<Vec<usize>> = std::thread::scope(|s| {
                let threads: Vec<_> = mayfail::nofail(|| {
                    ["left", "right"]
                        .into_iter()
                        .map(|name| {
                            std::thread::Builder::new()
                                .name(name.to_owned())
                                .spawn_scoped(s, || failing_plain(4000))
                                .unwrap()
                        })
                        .collect()
                });
                mayfail::nofail(|| threads.into_iter().map(|t| t.join().unwrap()).collect())
            });
            mayfail::disable_injection();
            failed
        };
        let first = run(7);
        assert_eq!(run(7), first, "the same seed, the same failures per thread");
        assert_ne!(run(8), first);
        for failed in &first {
            // 5 % of 4000 is 200; a binomial spread of +-4 sigma is +-55.
            assert!((145..=255).contains(&failed.len()), "{}", failed.len());
        }
        assert_ne!(first[0], first[1], "each thread has its own sequence");
        return;
    }
    child("a_probability_seed_replays_per_thread_whatever_the_interleaving");
}

#[test]
fn a_state_file_rewritten_while_it_is_read_never_kills_the_program() {
    let name = "a_state_file_rewritten_while_it_is_read_never_kills_the_program";
    if is_child() {
        let path = std::env::var("STATE").unwrap();
        let line = format!("runtime\t{:016x}\n", 0xabcdu64).repeat(40_000);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Truncated and refilled over and over: a reader that maps
                // the file would touch pages past its end.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::fs::write(&path, "mayfail-sites\t1\n").unwrap();
                    std::fs::write(&path, format!("mayfail-sites\t1\n{line}")).unwrap();
                }
            });
            for _ in 0..300 {
                // times=0: the walk is configured, nothing fails.
                let _ = mayfail::configure_injection(&format!("sites={path},times=0"));
            }
            mayfail::disable_injection();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        return;
    }
    let dir = std::env::temp_dir().join(format!("mayfail-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("walk.state");
    let run = run_child::<&str, &str>(
        name,
        &[
            ("MAYFAIL_INJECT", None),
            ("STATE", Some(state.to_str().unwrap())),
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(run.signal, None, "killed: {}", run.stderr);
    run.assert_success();
}
