//! Reclaimers: the table, and reclaimers that allocate or panic while memory
//! is really exhausted (in a child process under `RLIMIT_AS`).

mod common;

use std::alloc::System;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use common::{Exhaustion, alloc, free, is_child, run_child_with};
use mayfail::{MAX_RECLAIMERS, MayFail, Reclaimer, ReclaimersFull, stats};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

fn numbered<const N: usize>(_wanted: usize) -> usize {
    N
}

#[test]
fn the_table_holds_sixteen_refuses_the_seventeenth_and_frees_slots() {
    if is_child() {
        let all: [Reclaimer; 17] = [
            numbered::<1>,
            numbered::<2>,
            numbered::<3>,
            numbered::<4>,
            numbered::<5>,
            numbered::<6>,
            numbered::<7>,
            numbered::<8>,
            numbered::<9>,
            numbered::<10>,
            numbered::<11>,
            numbered::<12>,
            numbered::<13>,
            numbered::<14>,
            numbered::<15>,
            numbered::<16>,
            numbered::<17>,
        ];
        assert_eq!(MAX_RECLAIMERS, 16);
        for f in &all[..16] {
            mayfail::add_reclaimer(*f).expect("a free slot");
        }
        assert_eq!(mayfail::add_reclaimer(all[16]), Err(ReclaimersFull));
        let message = ReclaimersFull.to_string();
        assert!(
            message.contains("16") && message.contains("remove_reclaimer"),
            "{message}"
        );
        // Registering one again is a no-op, not a second slot.
        assert_eq!(mayfail::add_reclaimer(all[3]), Ok(()));
        assert!(mayfail::remove_reclaimer(all[3]));
        assert!(!mayfail::remove_reclaimer(all[3]), "removed once only");
        assert_eq!(mayfail::add_reclaimer(all[16]), Ok(()));
        assert_eq!(mayfail::add_reclaimer(all[3]), Err(ReclaimersFull));
        return;
    }
    run_child_with(
        "the_table_holds_sixteen_refuses_the_seventeenth_and_frees_slots",
        &[],
    )
    .assert_success();
}

static SAW_IN_RECLAIM: AtomicBool = AtomicBool::new(false);
static INNER_TRY_RESERVE_FAILED: AtomicBool = AtomicBool::new(false);
#[allow(clippy::vec_box)] // each Box is an allocation made inside the reclaimer
static KEPT: Mutex<Vec<Box<[u8; 256]>>> = Mutex::new(Vec::new());
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Allocates while memory is exhausted (fallibly: it must get an `Err` at
/// once, without recursing into reclaim), then frees ballast and allocates
/// again (it must be served).
fn allocating_reclaimer(wanted: usize) -> usize {
    CALLS.fetch_add(1, SeqCst);
    SAW_IN_RECLAIM.store(mayfail::in_reclaim(), SeqCst);
    let mut scratch: Vec<u8> = Vec::new();
    INNER_TRY_RESERVE_FAILED.store(scratch.try_reserve(4096).is_err(), SeqCst);
    let freed = Exhaustion::release(wanted);
    if let Ok(mut kept) = KEPT.try_lock() {
        kept.push(Box::new([7; 256]));
    }
    freed
}

#[test]
fn a_reclaimer_that_allocates_is_served_without_recursion() {
    if is_child() {
        KEPT.lock().unwrap().reserve(4);
        mayfail::add_reclaimer(allocating_reclaimer).unwrap();
        let pressure = Exhaustion::start();
        let before = stats();
        let p = alloc(64);
        let d = stats().since(&before);
        pressure.end();
        assert!(!p.is_null());
        free(p, 64);
        assert!(
            SAW_IN_RECLAIM.load(SeqCst),
            "reclaimers run marked in reclaim"
        );
        assert!(
            INNER_TRY_RESERVE_FAILED.load(SeqCst),
            "an allocation inside reclaim fails at once while memory is exhausted"
        );
        assert_eq!(
            KEPT.lock().unwrap().len(),
            1,
            "the reclaimer's own Box was served"
        );
        assert_eq!(CALLS.load(SeqCst), 1, "no recursion into the reclaimer");
        // One retry for the outer request; the inner failure is a plain null.
        assert_eq!((d.retries, d.recovered, d.failed), (1, 1, 1), "{d:?}");
        return;
    }
    run_child_with(
        "a_reclaimer_that_allocates_is_served_without_recursion",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

static PANICS: AtomicUsize = AtomicUsize::new(0);
static COUNTED: AtomicUsize = AtomicUsize::new(0);

/// Frees ballast, then panics: the bytes it freed count as 0.
fn panicking_reclaimer(wanted: usize) -> usize {
    PANICS.fetch_add(1, SeqCst);
    Exhaustion::release(wanted);
    panic!("reclaimer bug");
}

fn counting_reclaimer(_wanted: usize) -> usize {
    COUNTED.fetch_add(1, SeqCst);
    0
}

#[test]
fn a_panicking_reclaimer_is_caught_reported_once_and_removed() {
    if is_child() {
        mayfail::add_reclaimer(panicking_reclaimer).unwrap();
        mayfail::add_reclaimer(counting_reclaimer).unwrap();
        let pressure = Exhaustion::start();
        let before = stats();
        let p = alloc(64);
        let first = stats().since(&before);
        assert!(
            !p.is_null(),
            "memory freed before the panic is there to use"
        );
        free(p, 64);

        Exhaustion::fill();
        let before = stats();
        let q = alloc(64);
        let second = stats().since(&before);
        pressure.end();
        assert!(q.is_null(), "nothing frees memory any more");
        assert_eq!(
            PANICS.load(SeqCst),
            1,
            "a panicking reclaimer is not called again"
        );
        assert_eq!(
            COUNTED.load(SeqCst),
            1 + 3,
            "the other reclaimer keeps running"
        );
        assert_eq!(
            (
                first.retries,
                first.recovered,
                first.reclaimer_panics,
                first.reclaimed_bytes
            ),
            (1, 1, 1, 0),
            "{first:?}"
        );
        assert_eq!((second.retries, second.failed), (3, 1), "{second:?}");
        assert!(
            !mayfail::remove_reclaimer(panicking_reclaimer),
            "it was removed"
        );
        return;
    }
    let run = run_child_with(
        "a_panicking_reclaimer_is_caught_reported_once_and_removed",
        &[("MAYFAIL_RETRIES", "3")],
    );
    run.assert_success();
    let reports: Vec<&str> = run
        .mayfail_lines()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert_eq!(reports.len(), 1, "{}", run.stderr);
    assert!(reports[0].contains("reclaimer #0"), "{}", reports[0]);
    assert!(
        run.stderr.contains("reclaimer bug"),
        "the panic hook still runs"
    );
}

static RACED_CALLS: AtomicUsize = AtomicUsize::new(0);

fn raced(_wanted: usize) -> usize {
    RACED_CALLS.fetch_add(1, SeqCst);
    0
}

#[test]
fn adding_one_reclaimer_from_many_threads_at_once_registers_it_once() {
    if is_child() {
        for _ in 0..200 {
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        start.wait();
                        mayfail::add_reclaimer(raced).unwrap();
                    });
                }
            });
            assert!(mayfail::remove_reclaimer(raced));
            assert!(
                !mayfail::remove_reclaimer(raced),
                "a second copy was registered"
            );
        }
        // Removed means never called again.
        mayfail::set_retries(2);
        let pressure = Exhaustion::start();
        let p = alloc(64);
        pressure.end();
        assert!(p.is_null());
        assert_eq!(RACED_CALLS.load(SeqCst), 0);
        return;
    }
    run_child_with(
        "adding_one_reclaimer_from_many_threads_at_once_registers_it_once",
        &[],
    )
    .assert_success();
}

static STUCK_ARMED: AtomicBool = AtomicBool::new(false);
static STUCK_RELEASE: AtomicBool = AtomicBool::new(false);

/// Once armed, a reclaimer stuck as if waiting for a lock its own thread
/// holds, until the test lets it go.
fn stuck(_wanted: usize) -> usize {
    if !STUCK_ARMED.load(SeqCst) {
        return 0;
    }
    while !STUCK_RELEASE.load(SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    0
}

#[test]
fn the_watchdog_names_a_reclaimer_that_blocks() {
    if is_child() {
        mayfail::set_stall_ms(200);
        mayfail::set_retries(1);
        // Registering starts the watchdog thread: before memory runs out.
        mayfail::add_reclaimer(stuck).unwrap();
        let releaser = std::thread::spawn(|| {
            while !STUCK_ARMED.load(SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(common::deadline_secs(1));
            STUCK_RELEASE.store(true, SeqCst);
        });
        let pressure = Exhaustion::start();
        STUCK_ARMED.store(true, SeqCst);
        // Fails in the exhausted main arena; the reclaimer then blocks.
        let p = alloc(64);
        pressure.end();
        releaser.join().unwrap();
        // The retry after the release may succeed: the releaser's exit gave
        // its stack back. What matters is the watchdog's line.
        if !p.is_null() {
            free(p, 64);
        }
        return;
    }
    let run = run_child_with("the_watchdog_names_a_reclaimer_that_blocks", &[]);
    run.assert_success();
    let lines = run.mayfail_lines();
    let warning = lines
        .iter()
        .find(|l| l.contains("reclaimer #0"))
        .unwrap_or_else(|| panic!("no watchdog line: {}", run.stderr));
    assert!(warning.contains("has been running for"), "{warning}");
    assert!(warning.contains("(tid "), "{warning}");
    assert!(warning.contains("must not block"), "{warning}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("reclaimer #0")).count(),
        1,
        "reported once: {}",
        run.stderr
    );
}
