//! Several threads out of memory at once, for real: a child process caps its
//! address space (`RLIMIT_AS`), every worker thread fills its own glibc arena
//! (each thread allocates from an arena of its own, which the limit alone
//! does not empty), then all of them allocate at the same moment, with one
//! reclaimer registered. The knob decides: `-1` keeps every thread retrying
//! until memory comes back, then all recover; `0` fails all of them at once;
//! `N` gives each thread exactly `N` retries (counted per thread by the
//! reclaimer), or lets each recover within them.
//!
//! While memory is exhausted, the workers and the coordinating thread touch
//! no thread-local with a destructor and do not allocate (glibc cannot
//! register a thread-local destructor without memory): results go through
//! atomics, assertions wait until the limit is lifted. No worker exits before
//! all have their answer: an exiting thread frees memory the others would
//! get. Each test runs in a child process and takes about 0.1 s.

mod common;

use std::alloc::System;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{Exhaustion, alloc, free, is_child, run_child_with};
use mayfail::pressure::Ballast;
use mayfail::{MayFail, stats};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

const THREADS: usize = 4;
const SIZE: usize = 64;
const NEVER: u64 = u64::MAX;

/// Each worker's own ballast: the blocks that fill its arena.
static BALLASTS: [Mutex<Option<Ballast>>; THREADS] = [const { Mutex::new(None) }; THREADS];
/// Reclaimer calls per worker: one per retry.
static CALLS: [AtomicU64; THREADS] = [const { AtomicU64::new(0) }; THREADS];
/// What each worker's allocation returned (0: null).
static RESULT: [AtomicUsize; THREADS] = [const { AtomicUsize::new(0) }; THREADS];
static FINISHED: AtomicUsize = AtomicUsize::new(0);
/// Until this is set, the reclaimer frees nothing.
static MEMORY_BACK: AtomicBool = AtomicBool::new(false);
/// The reclaimer frees from a worker's own ballast from this call on.
static FREE_FROM_CALL: AtomicU64 = AtomicU64::new(NEVER);

thread_local! {
    /// The worker's index; a `const` thread-local without destructor.
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The one reclaimer: counts its calls per worker and, once memory is
/// "back", gives back blocks of the calling worker's own arena.
fn reclaimer(wanted: usize) -> usize {
    let i = INDEX.with(Cell::get);
    if i >= THREADS {
        return 0;
    }
    let call = CALLS[i].fetch_add(1, SeqCst) + 1;
    if !MEMORY_BACK.load(SeqCst) || call < FREE_FROM_CALL.load(SeqCst) {
        return 0;
    }
    match BALLASTS[i].try_lock() {
        Ok(mut ballast) => ballast.as_mut().map_or(0, |b| b.release(wanted)),
        Err(_) => 0,
    }
}

/// What one storm did: per worker, the retries and whether it got memory;
/// the counters it moved; and whether every worker was seen retrying at
/// the same time before memory came back (for `-1`).
struct Storm {
    calls: [u64; THREADS],
    served: [bool; THREADS],
    delta: mayfail::Stats,
    all_stuck_at_once: bool,
    finished_early: usize,
    rescued: bool,
}

/// Runs the storm: `THREADS` workers out of memory at once. With
/// `wait_until_all_stuck`, memory comes back only once every worker has
/// retried at least 3 times while none has finished.
fn storm(wait_until_all_stuck: bool) -> Storm {
    mayfail::add_reclaimer(reclaimer).unwrap();
    let settled = Barrier::new(THREADS + 1);
    let exhausted = Barrier::new(THREADS + 1);
    let filled = Barrier::new(THREADS + 1);
    let go = Barrier::new(THREADS + 1);
    let done = Barrier::new(THREADS);
    let mut stuck = false;
    let mut finished_early = 0;
    let mut rescued = false;
    let mut before = stats();
    std::thread::scope(|s| {
        for i in 0..THREADS {
            let (settled, exhausted, filled, go, done) =
                (&settled, &exhausted, &filled, &go, &done);
            s.spawn(move || {
                INDEX.with(|c| c.set(i));
                // Bind this thread to its arena while memory is plentiful.
                free(alloc(SIZE), SIZE);
                settled.wait();
                exhausted.wait();
                let mut ballast = Ballast::new();
                ballast.fill().expect("fill this thread's arena");
                *BALLASTS[i].lock().unwrap() = Some(ballast);
                filled.wait();
                go.wait();
                let p = alloc(SIZE);
                RESULT[i].store(p as usize, SeqCst);
                FINISHED.fetch_add(1, SeqCst);
                // A thread that exits frees memory (glibc's per-thread cache,
                // std's thread data) that the others would then get: stay
                // until every worker has its answer.
                done.wait();
            });
        }
        settled.wait();
        // The workers sleep in the barrier: exhaust memory, then let them
        // fill their arenas.
        let pressure = Exhaustion::start();
        exhausted.wait();
        filled.wait();
        // Filling counted failures of its own: count from here.
        before = stats();
        go.wait();
        if wait_until_all_stuck {
            let deadline = Instant::now() + common::deadline_secs(20);
            while Instant::now() < deadline {
                if CALLS.iter().all(|c| c.load(SeqCst) >= 3) {
                    stuck = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            finished_early = FINISHED.load(SeqCst);
            MEMORY_BACK.store(true, SeqCst);
            // No thread may starve while memory is there again.
            let deadline = Instant::now() + common::deadline_secs(20);
            while FINISHED.load(SeqCst) < THREADS && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if FINISHED.load(SeqCst) < THREADS {
                // Let the test end and report instead of hanging.
                rescued = true;
                mayfail::set_retries(0);
            }
        }
        while FINISHED.load(SeqCst) < THREADS {
            std::thread::sleep(Duration::from_millis(1));
        }
        pressure.end();
        // The workers still hold their ballasts: give them back.
        for b in &BALLASTS {
            if let Some(mut ballast) = b.lock().unwrap().take() {
                ballast.release_all();
            }
        }
    });
    let delta = stats().since(&before);
    let mut served = [false; THREADS];
    for (i, r) in RESULT.iter().enumerate() {
        let p = r.load(SeqCst);
        served[i] = p != 0;
        if p != 0 {
            free(p as *mut u8, SIZE);
        }
    }
    Storm {
        calls: CALLS.each_ref().map(|c| c.load(SeqCst)),
        served,
        delta,
        all_stuck_at_once: stuck,
        finished_early,
        rescued,
    }
}

#[test]
fn forever_keeps_every_thread_retrying_until_memory_comes_back_then_all_recover() {
    if is_child() {
        FREE_FROM_CALL.store(1, SeqCst);
        let s = storm(true);
        assert!(
            s.all_stuck_at_once,
            "every thread retried at least 3 times at once: {:?}",
            s.calls
        );
        assert_eq!(
            s.finished_early, 0,
            "no thread gave up or got memory before it came back: {:?}",
            s.calls
        );
        assert!(!s.rescued, "a thread starved: {:?} {:?}", s.calls, s.served);
        assert_eq!(s.served, [true; THREADS], "all recover: {:?}", s.calls);
        assert!(s.calls.iter().all(|&c| c >= 3), "{:?}", s.calls);
        assert_eq!(
            s.delta.retries,
            s.calls.iter().sum::<u64>(),
            "{:?}",
            s.delta
        );
        assert_eq!((s.delta.recovered, s.delta.failed), (4, 0), "{:?}", s.delta);
        println!("retries per thread with -1: {:?}", s.calls);
        return;
    }
    run_child_with(
        "forever_keeps_every_thread_retrying_until_memory_comes_back_then_all_recover",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

#[test]
fn zero_fails_every_thread_at_once_without_reclaim() {
    if is_child() {
        MEMORY_BACK.store(true, SeqCst);
        FREE_FROM_CALL.store(1, SeqCst);
        let s = storm(false);
        assert_eq!(s.served, [false; THREADS]);
        assert_eq!(s.calls, [0; THREADS], "no reclaimer runs with 0");
        assert_eq!(
            (s.delta.retries, s.delta.failed, s.delta.reclaimer_calls),
            (0, 4, 0),
            "{:?}",
            s.delta
        );
        return;
    }
    run_child_with(
        "zero_fails_every_thread_at_once_without_reclaim",
        &[("MAYFAIL_RETRIES", "0")],
    )
    .assert_success();
}

#[test]
fn n_gives_each_thread_exactly_n_retries_when_nothing_is_freed() {
    if is_child() {
        let s = storm(false);
        assert_eq!(s.served, [false; THREADS]);
        assert_eq!(s.calls, [3; THREADS], "3 retries per thread");
        assert_eq!(
            (s.delta.retries, s.delta.recovered, s.delta.failed),
            (12, 0, 4),
            "{:?}",
            s.delta
        );
        return;
    }
    run_child_with(
        "n_gives_each_thread_exactly_n_retries_when_nothing_is_freed",
        &[("MAYFAIL_RETRIES", "3")],
    )
    .assert_success();
}

#[test]
fn n_lets_each_thread_recover_within_its_own_budget() {
    if is_child() {
        MEMORY_BACK.store(true, SeqCst);
        FREE_FROM_CALL.store(2, SeqCst);
        let s = storm(false);
        assert_eq!(s.served, [true; THREADS], "{:?}", s.calls);
        assert_eq!(
            s.calls, [2; THREADS],
            "each thread recovers on the retry after its reclaimer freed its own memory"
        );
        assert_eq!(
            (s.delta.retries, s.delta.recovered, s.delta.failed),
            (8, 4, 0),
            "{:?}",
            s.delta
        );
        return;
    }
    run_child_with(
        "n_lets_each_thread_recover_within_its_own_budget",
        &[("MAYFAIL_RETRIES", "3")],
    )
    .assert_success();
}
