//! Odd contexts for an allocator: reclaimers and a logger that allocate
//! while injection is on, a reclaimer that panics on several threads at
//! once, allocations in thread-local destructors at thread exit, `fork` from
//! a process whose other threads allocate and fail, and signal handlers that
//! must not notice mayfail at all.
//!
//! `tests/reclaimers.rs` covers allocating and panicking reclaimers under
//! real exhaustion on one thread; here the same reclaimers meet fault
//! injection (their allocations must never be injected) and concurrency.
//! Every test that configures injection runs its body in a child process.

mod common;

use std::alloc::System;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::{Exhaustion, alloc, free, is_child, run_child, run_child_with};
use mayfail::{MayFail, stats};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

/// Runs the body of test `name` in a child with `MAYFAIL_INJECT` unset.
fn child(name: &str) -> common::ChildRun {
    let run = run_child::<&str, &str>(name, &[("MAYFAIL_INJECT", None)]);
    run.assert_success();
    run
}

// ---------------------------------------------------------------------------
// A reclaimer that allocates, while every allocation of its thread is
// injected.

static ALLOCATING_CALLS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATING_SAW_RECLAIM: AtomicBool = AtomicBool::new(false);
static ALLOCATING_SERVED: AtomicUsize = AtomicUsize::new(0);

/// Runs inside the failing thread's `make_it_fail` scope with injection at
/// 100 %: its allocations, fallible and infallible, must all be served.
fn allocating_reclaimer(_wanted: usize) -> usize {
    ALLOCATING_CALLS.fetch_add(1, SeqCst);
    ALLOCATING_SAW_RECLAIM.store(mayfail::in_reclaim(), SeqCst);
    let mut scratch: Vec<u8> = Vec::new();
    let reserved = scratch.try_reserve(4096).is_ok();
    // Infallible: an injected failure here would abort the process.
    let boxed = Box::new([7u8; 256]);
    let text = format!("{}-{}", boxed[0], boxed.len());
    if reserved && text == "7-256" {
        ALLOCATING_SERVED.fetch_add(1, SeqCst);
    }
    0
}

#[test]
fn a_reclaimer_that_allocates_is_never_injected() {
    if is_child() {
        mayfail::set_retries(2);
        mayfail::configure_injection("times=-1,task-filter=Y,transient=Y").unwrap();
        mayfail::add_reclaimer(allocating_reclaimer).unwrap();
        let before = stats();
        let p = mayfail::make_it_fail(|| alloc(64));
        let d = stats().since(&before);
        mayfail::disable_injection();
        assert!(!p.is_null(), "the retry after the transient failure");
        free(p, 64);
        assert!(ALLOCATING_SAW_RECLAIM.load(SeqCst));
        assert_eq!(ALLOCATING_CALLS.load(SeqCst), 1);
        assert_eq!(
            ALLOCATING_SERVED.load(SeqCst),
            1,
            "the reclaimer's own allocations were served"
        );
        assert_eq!(
            (d.injected, d.retries, d.recovered, d.failed),
            (1, 1, 1, 0),
            "only the caller's allocation was injected: {d:?}"
        );
        return;
    }
    child("a_reclaimer_that_allocates_is_never_injected");
}

// ---------------------------------------------------------------------------
// env_logger on the slow path, on several fresh threads, under injection.

#[test]
fn env_logger_logs_final_failures_from_fresh_threads_under_injection() {
    if is_child() {
        env_logger::builder().is_test(false).init();
        mayfail::set_retries(0);
        mayfail::configure_injection("times=-1,task-filter=Y,transient=Y").unwrap();
        let start = Instant::now();
        let before = stats();
        let barrier = Barrier::new(4);
        let failures: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        // The thread's first log record is written from the
                        // slow path, inside make_it_fail: the logger's own
                        // allocations must not be injected.
                        mayfail::make_it_fail(|| {
                            (0..25)
                                .filter(|i| Vec::<u8>::new().try_reserve(64 + i).is_err())
                                .count()
                        })
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        let d = stats().since(&before);
        mayfail::disable_injection();
        assert_eq!(failures, 100);
        assert_eq!((d.injected, d.failed, d.retries), (100, 100, 0), "{d:?}");
        println!("ELAPSED_MS {}", start.elapsed().as_millis());
        return;
    }
    let run = run_child_with(
        "env_logger_logs_final_failures_from_fresh_threads_under_injection",
        &[("RUST_LOG", "warn")],
    );
    run.assert_success();
    let elapsed_ms: u64 = run
        .stdout
        .lines()
        .find_map(|l| l.split_once("ELAPSED_MS "))
        .and_then(|(_, n)| n.trim().parse().ok())
        .expect("the child's elapsed time");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("WARN  mayfail"))
        .collect();
    // At most one line per second across threads: 100 failures, one line
    // (one more for each second boundary the loop crossed).
    assert!(
        !warnings.is_empty() && warnings.len() as u64 <= 1 + elapsed_ms / 1000 + 1,
        "{} lines in {elapsed_ms} ms:\n{}",
        warnings.len(),
        run.stderr
    );
    assert!(
        warnings[0].contains("failed after 0 retries; the caller receives null"),
        "{}",
        warnings[0]
    );
}

// ---------------------------------------------------------------------------
// A reclaimer that panics on four threads at once.

const STORM: usize = 4;
static PANICKER_ENTERED: AtomicUsize = AtomicUsize::new(0);
static BYSTANDER_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Waits until every thread of the storm is inside it, then panics.
fn panicking_reclaimer(_wanted: usize) -> usize {
    PANICKER_ENTERED.fetch_add(1, SeqCst);
    let deadline = Instant::now() + common::deadline_secs(10);
    while PANICKER_ENTERED.load(SeqCst) < STORM && Instant::now() < deadline {
        std::thread::yield_now();
    }
    panic!("reclaimer bug");
}

fn bystander_reclaimer(_wanted: usize) -> usize {
    BYSTANDER_CALLS.fetch_add(1, SeqCst);
    0
}

#[test]
fn a_reclaimer_panicking_on_several_threads_at_once_is_removed_and_reported_once() {
    if is_child() {
        mayfail::set_retries(3);
        mayfail::configure_injection("times=-1,task-filter=Y,transient=Y").unwrap();
        mayfail::add_reclaimer(panicking_reclaimer).unwrap();
        mayfail::add_reclaimer(bystander_reclaimer).unwrap();
        let before = stats();
        let barrier = Barrier::new(STORM);
        let served: Vec<usize> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..STORM)
                .map(|_| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        mayfail::make_it_fail(|| alloc(64)) as usize
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let d = stats().since(&before);
        mayfail::disable_injection();
        for &p in &served {
            assert_ne!(p, 0, "each allocation recovered on its retry");
            free(p as *mut u8, 64);
        }
        assert_eq!(
            PANICKER_ENTERED.load(SeqCst),
            STORM,
            "all threads were in it at once"
        );
        assert_eq!(
            BYSTANDER_CALLS.load(SeqCst),
            STORM,
            "the other one kept running"
        );
        assert_eq!(
            (d.reclaimer_panics, d.injected, d.recovered, d.failed),
            (1, STORM as u64, STORM as u64, 0),
            "{d:?}"
        );
        assert!(!mayfail::remove_reclaimer(panicking_reclaimer), "removed");
        assert!(mayfail::remove_reclaimer(bystander_reclaimer), "kept");
        return;
    }
    let run =
        child("a_reclaimer_panicking_on_several_threads_at_once_is_removed_and_reported_once");
    // Counted in the text, not in lines: the panic hooks of the other
    // threads write at the same time and may cut mayfail's line in two.
    assert_eq!(
        run.stderr
            .matches("panicked; counted as 0 bytes freed and removed")
            .count(),
        1,
        "reported once:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("reclaimer bug").count(),
        STORM,
        "the panic hook ran on each thread:\n{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------
// Allocations inside thread-local destructors, at thread exit.

static EXIT_FIRST_FAILED: AtomicBool = AtomicBool::new(false);
static EXIT_INFALLIBLE_SERVED: AtomicBool = AtomicBool::new(false);
static EXIT_LATER_SERVED: AtomicBool = AtomicBool::new(false);
static EXIT_DROPS: AtomicUsize = AtomicUsize::new(0);

/// How the destructor makes its first allocation a candidate.
static EXIT_IN_MAKE_IT_FAIL: AtomicBool = AtomicBool::new(false);

struct OnExit;

impl Drop for OnExit {
    fn drop(&mut self) {
        let mut first: Vec<u8> = Vec::new();
        let failed = if EXIT_IN_MAKE_IT_FAIL.load(SeqCst) {
            mayfail::make_it_fail(|| first.try_reserve_exact(1000).is_err())
        } else {
            first.try_reserve_exact(1000).is_err()
        };
        EXIT_FIRST_FAILED.store(failed, SeqCst);
        let boxed = Box::new([3u8; 64]);
        EXIT_INFALLIBLE_SERVED.store(boxed[63] == 3, SeqCst);
        let mut later: Vec<u8> = Vec::new();
        EXIT_LATER_SERVED.store(later.try_reserve(1000).is_ok(), SeqCst);
        EXIT_DROPS.fetch_add(1, SeqCst);
    }
}

thread_local! {
    static ON_EXIT: OnExit = const { OnExit };
}

/// Runs a thread named `name` that registers `OnExit` and calls `armed`
/// last; returns what its destructor saw.
fn exiting_thread(name: &str, armed: impl FnOnce() + Send + 'static) -> (bool, bool, bool) {
    let drops = EXIT_DROPS.load(SeqCst);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            ON_EXIT.with(|_| ());
            armed();
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(EXIT_DROPS.load(SeqCst), drops + 1, "the destructor ran");
    (
        EXIT_FIRST_FAILED.load(SeqCst),
        EXIT_INFALLIBLE_SERVED.load(SeqCst),
        EXIT_LATER_SERVED.load(SeqCst),
    )
}

#[test]
fn allocations_in_thread_local_destructors_are_injected_as_anywhere_else() {
    if is_child() {
        // fail-nth armed as the thread's body ends: the destructor's first
        // allocation fails, once.
        let before = stats();
        let seen = exiting_thread("tls-nth", || mayfail::fail_nth(1));
        assert_eq!(seen, (true, true, true), "fail-nth in a destructor");
        assert_eq!(stats().since(&before).injected, 1);

        // No injection: the same destructor is served throughout.
        let seen = exiting_thread("tls-none", || {});
        assert_eq!(seen, (false, true, true));

        // Attributes: a make_it_fail scope entered inside the destructor.
        EXIT_IN_MAKE_IT_FAIL.store(true, SeqCst);
        mayfail::configure_injection("times=-1,task-filter=Y").unwrap();
        let before = stats();
        let seen = exiting_thread("tls-scope", || {});
        assert_eq!(seen, (true, true, true), "make_it_fail in a destructor");
        assert_eq!(stats().since(&before).injected, 1);
        EXIT_IN_MAKE_IT_FAIL.store(false, SeqCst);

        // Attributes: the thread filter and a size range reach the exiting
        // thread's 1000-byte allocations and nothing else.
        mayfail::configure_injection("times=1,thread=tls-filter,min-size=1000,max-size=1000")
            .unwrap();
        let before = stats();
        let seen = exiting_thread("tls-filter", || {});
        assert_eq!(seen, (true, true, true), "times=1: only the first one");
        assert_eq!(stats().since(&before).injected, 1);
        mayfail::disable_injection();
        return;
    }
    child("allocations_in_thread_local_destructors_are_injected_as_anywhere_else");
}

// ---------------------------------------------------------------------------
// fork from a multi-threaded process whose other threads allocate and fail.

static FORK_STOP: AtomicBool = AtomicBool::new(false);
static FORK_BUSY_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Exit codes of a forked child.
const FORK_OK: i32 = 0;
const FORK_NO_INJECTION: i32 = 10;
const FORK_UNEXPECTED_FAILURE: i32 = 11;
const FORK_BAD_COUNT: i32 = 12;
const FORK_FAIL_NTH: i32 = 13;
const FORK_PANICKED: i32 = 14;

/// The forked child: allocates, injects, exits with a code.
fn forked_child() -> i32 {
    let before = stats();
    // Candidates: 20 % of these fail, each capturing its backtrace.
    let failed = mayfail::make_it_fail(|| {
        (0..200)
            .filter(|i| Vec::<u8>::new().try_reserve(16 + i).is_err())
            .count()
    });
    // Not candidates: never injected.
    let mut kept: Vec<Box<[u8; 100]>> = Vec::new();
    for i in 0..100u8 {
        kept.push(Box::new([i; 100]));
    }
    let text = format!("{}", kept.len());
    let injected = stats().since(&before).injected;
    if failed == 0 {
        return FORK_NO_INJECTION;
    }
    if text != "100" || kept.iter().enumerate().any(|(i, b)| b[99] != i as u8) {
        return FORK_UNEXPECTED_FAILURE;
    }
    if injected != failed as u64 {
        return FORK_BAD_COUNT;
    }
    mayfail::fail_nth(1);
    let nth_failed = Vec::<u8>::new().try_reserve(8).is_err();
    if !nth_failed || mayfail::fail_nth_pending() != 0 {
        return FORK_FAIL_NTH;
    }
    FORK_OK
}

#[test]
fn fork_while_other_threads_allocate_and_fail_gives_a_working_child() {
    if is_child() {
        mayfail::configure_injection("probability=20,times=-1,task-filter=Y").unwrap();
        let busy: Vec<_> = (0..3)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut rounds = 0u64;
                    while !FORK_STOP.load(SeqCst) {
                        let failed = mayfail::make_it_fail(|| {
                            (0..50)
                                .filter(|i| {
                                    let mut v: Vec<u64> = Vec::new();
                                    v.try_reserve(1 + (i * 7 + t) % 500).is_err()
                                })
                                .count()
                        });
                        FORK_BUSY_FAILURES.fetch_add(failed as u64, SeqCst);
                        let keep = vec![rounds; 32];
                        rounds += keep.len() as u64 / 32;
                    }
                    rounds
                })
            })
            .collect();
        while FORK_BUSY_FAILURES.load(SeqCst) < 100 {
            std::thread::yield_now();
        }
        // Under valgrind every forked child is traced and starts valgrind's
        // machinery again (seconds each): fewer forks, same checks.
        let forks = if common::under_valgrind() { 6 } else { 40 };
        let mut statuses = Vec::new();
        for _ in 0..forks {
            // SAFETY: the child only allocates, reads atomics and calls
            // `_exit`: no lock another thread may have held is taken.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let code = std::panic::catch_unwind(forked_child).unwrap_or(FORK_PANICKED);
                // SAFETY: ends the child without running the parent's
                // atexit handlers or flushing its buffers.
                unsafe { libc::_exit(code) };
            }
            statuses.push(wait_with_timeout(pid, common::deadline_secs(10)));
        }
        FORK_STOP.store(true, SeqCst);
        for b in busy {
            assert!(b.join().unwrap() > 0);
        }
        mayfail::disable_injection();
        for (i, status) in statuses.iter().enumerate() {
            assert_eq!(
                *status,
                Some(FORK_OK),
                "child {i} (codes: 10 nothing injected, 11 a non-candidate failed, 12 \
                 miscounted, 13 fail-nth, 14 panicked; None: killed or hung): {statuses:?}"
            );
        }
        return;
    }
    child("fork_while_other_threads_allocate_and_fail_gives_a_working_child");
}

/// Waits for `pid`; its exit code, or `None` if it was killed by a signal
/// or had to be killed after `timeout` (a hang).
fn wait_with_timeout(pid: libc::pid_t, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is writable; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if Instant::now() > deadline {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// A signal handler that does not allocate is not disturbed.

static USR1: AtomicU64 = AtomicU64::new(0);
static USR2: AtomicU64 = AtomicU64::new(0);

/// Counts `SIGUSR1` (sent by another thread) and `SIGUSR2` (raised by the
/// thread itself) apart: two pending signals of one kind merge into one.
extern "C" fn count_usr1(sig: libc::c_int) {
    if sig == libc::SIGUSR2 {
        USR2.fetch_add(1, SeqCst);
    } else {
        USR1.fetch_add(1, SeqCst);
    }
}

/// `count_usr1` as `sigaction` holds it.
fn usr1_handler() -> usize {
    count_usr1 as extern "C" fn(libc::c_int) as usize
}

/// Installs `count_usr1` for `SIGUSR1` and `SIGUSR2`, without
/// `SA_RESTART`: interrupted system calls see `EINTR`.
fn install_usr1() {
    // SAFETY: an all-zero sigaction is valid; we set the handler and an
    // empty mask.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = usr1_handler();
        libc::sigemptyset(&mut action.sa_mask);
        for sig in [libc::SIGUSR1, libc::SIGUSR2] {
            assert_eq!(libc::sigaction(sig, &action, std::ptr::null_mut()), 0);
        }
    }
}

/// The handler currently installed for `sig`.
fn handler_of(sig: libc::c_int) -> usize {
    // SAFETY: querying only; `old` is writable.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old);
        old.sa_sigaction
    }
}

/// Sends `SIGUSR1` to `thread` and waits (up to 5 s) until the handler
/// counted it; returns whether it did.
fn send_usr1(thread: libc::pthread_t) -> bool {
    let before = USR1.load(SeqCst);
    // SAFETY: `thread` is alive: the caller stops sending before it ends.
    if unsafe { libc::pthread_kill(thread, libc::SIGUSR1) } != 0 {
        return false;
    }
    let deadline = Instant::now() + common::deadline_secs(5);
    while USR1.load(SeqCst) == before {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

static ALARMS: AtomicU64 = AtomicU64::new(0);

/// Allocates (and frees) a block, as a signal handler that ignores
/// async-signal safety might: it runs on the thread it interrupts, inside
/// that thread's `make_it_fail` scope, where `probability=100` injects its
/// allocation too, so it never enters malloc.
extern "C" fn allocating_alarm(_: libc::c_int) {
    ALARMS.fetch_add(1, SeqCst);
    let block = std::hint::black_box(alloc(std::hint::black_box(24)));
    if !block.is_null() {
        free(block, 24);
    }
}

#[test]
fn an_allocating_signal_handler_never_turns_an_injected_failure_into_a_block() {
    if common::under_valgrind() {
        // Valgrind delivers signals only at its own scheduling points, not
        // between two instructions: the window this test aims at is never
        // hit there, and a timer every 20 µs keeps the process busy.
        return;
    }
    if is_child() {
        // SAFETY: an all-zero sigaction is valid; handler and empty mask set.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = allocating_alarm as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGALRM, &action, std::ptr::null_mut()),
                0
            );
        }
        // Only this thread's allocations (the handler runs on it, inside
        // the same scope): the harness's other threads allocate infallibly.
        mayfail::configure_injection("probability=100,times=-1,task-filter=Y,report=N").unwrap();
        let every = libc::timeval {
            tv_sec: 0,
            tv_usec: 20,
        };
        let timer = libc::itimerval {
            it_interval: every,
            it_value: every,
        };
        // SAFETY: a valid timer; stopped below.
        unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
        // Every allocation fails on purpose; a signal whose handler
        // allocates, landing anywhere on the engaged path, must not turn an
        // injected failure into a block (by retrying it, or by leaving the
        // thread a pass).
        let start = Instant::now();
        let (mut tries, mut blocks) = (0u64, 0u64);
        let scope = mayfail::make_it_fail_guard();
        // At least 0.4 s and 200 signals, at most 10 s.
        while start.elapsed() < Duration::from_millis(400)
            || (ALARMS.load(SeqCst) < 200 && start.elapsed() < Duration::from_secs(10))
        {
            for _ in 0..1000 {
                let block = std::hint::black_box(alloc(std::hint::black_box(64)));
                tries += 1;
                if !block.is_null() {
                    blocks += 1;
                    free(block, 64);
                }
            }
        }
        drop(scope);
        // SAFETY: an all-zero itimerval is valid, and a zero timer stops it.
        unsafe {
            let stop: libc::itimerval = std::mem::zeroed();
            libc::setitimer(libc::ITIMER_REAL, &stop, std::ptr::null_mut());
        }
        mayfail::disable_injection();
        assert_eq!(
            blocks,
            0,
            "{blocks} of {tries} injected failures came back as blocks, {} signals",
            ALARMS.load(SeqCst)
        );
        return;
    }
    child("an_allocating_signal_handler_never_turns_an_injected_failure_into_a_block");
}

#[test]
fn a_counting_signal_handler_sees_every_signal_while_injection_runs() {
    if is_child() {
        install_usr1();
        mayfail::set_retries(2);
        mayfail::configure_injection("probability=10,times=-1,task-filter=Y,transient=Y").unwrap();
        // Injection installed mayfail's crash handlers, and left ours alone.
        assert_ne!(handler_of(libc::SIGABRT), libc::SIG_DFL);
        assert_ne!(handler_of(libc::SIGSEGV), libc::SIG_DFL);
        assert_eq!(handler_of(libc::SIGUSR1), usr1_handler());

        let worker_done = AtomicBool::new(false);
        let worker_id = AtomicUsize::new(0);
        let ready = Barrier::new(2);
        let finished = Barrier::new(2);
        let before = stats();
        let sent = AtomicU64::new(0);
        let ((nulls, raised), sent) = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                // SAFETY: pthread_self has no preconditions.
                worker_id.store(unsafe { libc::pthread_self() } as usize, SeqCst);
                ready.wait();
                let mut nulls = 0u64;
                let mut raised = 0u64;
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut i = 0usize;
                while i < 20_000 || (sent.load(SeqCst) < 200 && Instant::now() < deadline) {
                    i += 1;
                    if i.is_multiple_of(100) {
                        let seen = USR2.load(SeqCst);
                        // SAFETY: raise has no preconditions; the handler
                        // runs before it returns.
                        unsafe { libc::raise(libc::SIGUSR2) };
                        assert_eq!(USR2.load(SeqCst), seen + 1, "a raised signal was handled");
                        raised += 1;
                    }
                    let failed = mayfail::make_it_fail(|| {
                        let mut v: Vec<u8> = Vec::new();
                        v.try_reserve(1 + i % 3000).is_err()
                    });
                    nulls += u64::from(failed);
                }
                worker_done.store(true, SeqCst);
                // Alive until the sender stopped: every signal is handled.
                finished.wait();
                (nulls, raised)
            });
            let sender = s.spawn(|| {
                ready.wait();
                let target = worker_id.load(SeqCst) as libc::pthread_t;
                while !worker_done.load(SeqCst) {
                    assert!(
                        send_usr1(target),
                        "a signal sent was not handled within 5 s"
                    );
                    sent.fetch_add(1, SeqCst);
                }
                finished.wait();
                sent.load(SeqCst)
            });
            let sent = sender.join().unwrap();
            (worker.join().unwrap(), sent)
        });
        let d = stats().since(&before);
        mayfail::disable_injection();
        assert!(d.injected > 0 && sent > 0, "{d:?} {sent}");
        assert_eq!(
            d.injected,
            nulls + d.recovered,
            "every injected failure was seen or recovered: {d:?}"
        );
        assert_eq!(
            (USR1.load(SeqCst), USR2.load(SeqCst)),
            (sent, raised),
            "every signal was counted once"
        );
        assert_eq!(handler_of(libc::SIGUSR1), usr1_handler());
        println!(
            "SIGNALS raised {raised} sent {sent}; injected {}",
            d.injected
        );
        return;
    }
    child("a_counting_signal_handler_sees_every_signal_while_injection_runs");
}

static BACKOFF_CALLS: AtomicUsize = AtomicUsize::new(0);
static BACKOFF_DONE: AtomicBool = AtomicBool::new(false);
const BACKOFF_FREE_ON_CALL: usize = 40;

/// Frees nothing until its 40th call: the retries go through spinning,
/// yielding and sleeps of up to 10 ms.
fn late_reclaimer(wanted: usize) -> usize {
    if BACKOFF_CALLS.fetch_add(1, SeqCst) + 1 >= BACKOFF_FREE_ON_CALL {
        Exhaustion::release(wanted)
    } else {
        0
    }
}

#[test]
fn signals_during_backoff_sleeps_under_real_exhaustion_change_nothing() {
    if is_child() {
        install_usr1();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let start = Barrier::new(2);
        let sent = std::thread::scope(|s| {
            let sender = s.spawn(|| {
                start.wait();
                let mut sent = 0u64;
                while !BACKOFF_DONE.load(SeqCst) {
                    if BACKOFF_CALLS.load(SeqCst) > 0 {
                        assert!(send_usr1(me as libc::pthread_t), "a signal was not handled");
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_micros(300));
                }
                sent
            });
            mayfail::add_reclaimer(late_reclaimer).unwrap();
            let pressure = Exhaustion::start();
            start.wait();
            let before = stats();
            let p = alloc(64);
            let d = stats().since(&before);
            BACKOFF_DONE.store(true, SeqCst);
            pressure.end();
            assert!(!p.is_null());
            free(p, 64);
            assert_eq!(
                (d.retries, d.recovered, d.failed),
                (BACKOFF_FREE_ON_CALL as u64, 1, 0),
                "{d:?}"
            );
            sender.join().unwrap()
        });
        assert!(sent > 0, "signals arrived while the allocation retried");
        assert_eq!(USR1.load(SeqCst), sent);
        println!("SIGNALS during backoff: {sent}");
        return;
    }
    run_child_with(
        "signals_during_backoff_sleeps_under_real_exhaustion_change_nothing",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

// ---------------------------------------------------------------------------
// A crash handler installed after mayfail's, which hands unhandled signals on
// to the handler it replaced (as crash reporters and runtimes do).

static CHAIN_OLD: AtomicUsize = AtomicUsize::new(0);
static CHAIN_OLD_SIGINFO: AtomicBool = AtomicBool::new(false);
static CHAIN_ENTRIES: AtomicUsize = AtomicUsize::new(0);

/// Counts, then calls the handler it replaced. Far more entries than one
/// crash can cause mean the signal goes round in circles: it says so and
/// ends the process with 42 instead of spinning for ever.
extern "C" fn chaining_handler(
    sig: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    if CHAIN_ENTRIES.fetch_add(1, SeqCst) + 1 > 50 {
        let text = b"chaining handler: the same signal came back 50 times: a livelock\n";
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(2, text.as_ptr().cast(), text.len());
            libc::_exit(42);
        }
    }
    let old = CHAIN_OLD.load(SeqCst);
    if old == libc::SIG_DFL || old == libc::SIG_IGN {
        // SAFETY: puts the default action back; the fault happens again.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
        return;
    }
    if CHAIN_OLD_SIGINFO.load(SeqCst) {
        // SAFETY: `old` is the SA_SIGINFO handler this one replaced.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(old) };
        f(sig, info, context);
    } else {
        // SAFETY: `old` is the plain handler this one replaced.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(old) };
        f(sig);
    }
}

/// Installs `chaining_handler` for `sig`, remembering the handler it replaces.
fn install_chaining(sig: libc::c_int) {
    // SAFETY: an all-zero sigaction is valid; `old` is writable.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            chaining_handler;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(sig, &action, &mut old), 0);
        CHAIN_OLD.store(old.sa_sigaction, SeqCst);
        CHAIN_OLD_SIGINFO.store(old.sa_flags & libc::SA_SIGINFO != 0, SeqCst);
    }
}

/// The child: injection on (mayfail's handlers go in), a chaining handler on
/// top for `CHAIN_SIGNAL` (`SEGV` or `ABRT`), an injected failure if
/// `CHAIN_INJECT_AFTER=1`, then a null write or an abort.
#[test]
fn chained_crash_probe() {
    if !is_child() {
        return;
    }
    mayfail::configure_injection("task-filter=Y,times=-1").unwrap();
    let abort = std::env::var("CHAIN_SIGNAL").unwrap_or_default() == "ABRT";
    install_chaining(if abort { libc::SIGABRT } else { libc::SIGSEGV });
    if std::env::var("CHAIN_INJECT_AFTER").unwrap_or_default() == "1" {
        assert!(mayfail::make_it_fail(|| Vec::<u8>::new().try_reserve(8)).is_err());
    }
    if abort {
        std::process::abort();
    }
    let p = std::hint::black_box(std::ptr::null_mut::<u8>());
    // SAFETY: deliberately not: the crash under test.
    unsafe { std::ptr::write_volatile(p.add(8), 1) };
    unreachable!("writing through null faults");
}

/// A crash must still kill the process with its signal, however the
/// handlers were stacked: mayfail hands over to what it replaced, the
/// chaining handler to what it replaced. An injected failure after the
/// chaining handler went in must not make the two hand the fault to each
/// other for ever.
#[test]
fn a_crash_under_a_chaining_handler_installed_later_still_kills_the_process() {
    if is_child() {
        return;
    }
    let mut problems = Vec::new();
    for (name, signal) in [("SEGV", libc::SIGSEGV), ("ABRT", libc::SIGABRT)] {
        for inject_after in ["0", "1"] {
            let run = run_child(
                "chained_crash_probe",
                &[
                    ("MAYFAIL_INJECT", None),
                    ("CHAIN_SIGNAL", Some(name)),
                    ("CHAIN_INJECT_AFTER", Some(inject_after)),
                ],
            );
            if (run.signal, run.code) != (Some(signal), None) {
                problems.push(format!(
                    "SIG{name}, injected failure after the chaining handler: {inject_after}: \
                     signal {:?}, exit code {:?} (42: livelock), not death by SIG{name}\n{}",
                    run.signal,
                    run.code,
                    run.stderr.trim_end()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

// ---------------------------------------------------------------------------
// A program that handles SIGSEGV itself (a GC's or a JIT's probe of memory).

/// The page the probe faults on, below the first MiB, where a fault after
/// an injected failure is taken for an unchecked null.
static PROBE_PAGE: AtomicUsize = AtomicUsize::new(0);
/// Faults the program's own handler saw.
static PROBE_FAULTS: AtomicUsize = AtomicUsize::new(0);
/// Whether the program's handler gives up (resets the default action and
/// returns, as std's does for a fault outside a guard page).
static PROBE_GIVES_UP: AtomicBool = AtomicBool::new(false);

/// The program's handler: makes the probed page readable and returns, so
/// the read re-executes and succeeds; or gives up.
fn probe_fault(address: usize) {
    PROBE_FAULTS.fetch_add(1, SeqCst);
    let page = PROBE_PAGE.load(SeqCst);
    if PROBE_GIVES_UP.load(SeqCst) || !(page..page + 4096).contains(&address) {
        // SAFETY: an all-zero sigaction is the default action.
        unsafe {
            let default: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGSEGV, &default, std::ptr::null_mut());
        }
        return;
    }
    // SAFETY: the page is ours, mapped by `map_probe_page`.
    unsafe { libc::mprotect(page as *mut libc::c_void, 4096, libc::PROT_READ) };
}

extern "C" fn probe_action(_sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    probe_fault(unsafe { (*info).si_addr() } as usize);
}

extern "C" fn probe_handler(_sig: libc::c_int) {
    probe_fault(PROBE_PAGE.load(SeqCst));
}

/// Installs the program's SIGSEGV handler, with `SA_SIGINFO` or without.
fn install_probe_handler(siginfo: bool) {
    // SAFETY: an all-zero sigaction is valid; the handler is filled in.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        if siginfo {
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                probe_action;
            action.sa_sigaction = handler as usize;
            action.sa_flags = libc::SA_SIGINFO;
        } else {
            let handler: extern "C" fn(libc::c_int) = probe_handler;
            action.sa_sigaction = handler as usize;
        }
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut()),
            0
        );
    }
}

/// Maps an inaccessible page below the first MiB.
fn map_probe_page() -> usize {
    for at in (0x1_0000..0x10_0000).step_by(0x1_0000).rev() {
        // SAFETY: a fresh anonymous mapping where nothing is mapped (the
        // kernel refuses rather than replaces).
        let page = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if page as usize == at {
            return at;
        }
    }
    panic!("no page below the first MiB could be mapped");
}

/// Reads the probed page, protecting it again first, so that each probe
/// faults.
#[inline(never)]
fn probe() -> u8 {
    let page = PROBE_PAGE.load(SeqCst);
    // SAFETY: the page is ours.
    unsafe {
        libc::mprotect(page as *mut libc::c_void, 4096, libc::PROT_NONE);
        std::ptr::read_volatile(page as *const u8)
    }
}

/// The child: the program's handler goes in before injection starts
/// (`PROBE_ORDER=before`: mayfail's handler hands over to it) or after
/// (`after`: an injected failure puts mayfail's back in front), then an
/// injected failure, then three probes that fault.
#[test]
fn handled_fault_probe() {
    if !is_child() {
        return;
    }
    let siginfo = std::env::var("PROBE_SIGINFO").unwrap_or_default() == "1";
    let before = std::env::var("PROBE_ORDER").unwrap_or_default() == "before";
    PROBE_GIVES_UP.store(std::env::var("PROBE_GIVES_UP").is_ok(), SeqCst);
    PROBE_PAGE.store(map_probe_page(), SeqCst);
    if before {
        install_probe_handler(siginfo);
    }
    mayfail::configure_injection("task-filter=Y,times=-1").unwrap();
    if !before {
        install_probe_handler(siginfo);
    }
    assert!(mayfail::make_it_fail(|| Vec::<u8>::new().try_reserve(8)).is_err());
    let mut sum = 0u32;
    for _ in 0..3 {
        sum += u32::from(probe());
    }
    assert_eq!(sum, 0);
    assert_eq!(PROBE_FAULTS.load(SeqCst), 3);
    eprintln!("probed");
}

/// A fault the program's own handler recovers from is no crash: no report,
/// and the process lives on, whether that handler was installed before
/// mayfail's or after, with `SA_SIGINFO` or without. One that gives up still
/// kills the process with the signal, after mayfail's report.
#[test]
fn a_fault_the_program_handles_itself_is_no_crash_and_one_it_gives_up_on_is() {
    if is_child() {
        return;
    }
    let mut problems = Vec::new();
    for order in ["before", "after"] {
        for siginfo in ["0", "1"] {
            for gives_up in [false, true] {
                let mut env = vec![
                    ("MAYFAIL_INJECT", None),
                    ("PROBE_ORDER", Some(order)),
                    ("PROBE_SIGINFO", Some(siginfo)),
                ];
                if gives_up {
                    env.push(("PROBE_GIVES_UP", Some("1")));
                }
                let run = run_child("handled_fault_probe", &env);
                let reported = run.stderr.contains("mayfail: the process crashed");
                let fine = if gives_up {
                    run.signal == Some(libc::SIGSEGV) && reported
                } else {
                    run.code == Some(0) && !reported && run.stderr.contains("probed")
                };
                if !fine {
                    problems.push(format!(
                        "handler installed {order} mayfail's, SA_SIGINFO {siginfo}, gives up \
                         {gives_up}: signal {:?}, exit code {:?}, report printed {reported}\n{}",
                        run.signal,
                        run.code,
                        run.stderr.trim_end()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The second page a nested probe reads from inside the handler.
static NESTED_PAGE: AtomicUsize = AtomicUsize::new(0);
/// Faults the nested-probe handler saw, and how many times `SIGUSR2` (in its
/// `sa_mask`) was not blocked while it ran.
static NESTED_FAULTS: AtomicUsize = AtomicUsize::new(0);
static NESTED_MASK_MISSED: AtomicUsize = AtomicUsize::new(0);
/// Whether the nested-probe handler asks for `SA_RESETHAND` too.
static NESTED_RESETHAND: AtomicBool = AtomicBool::new(false);

/// A handler with `SA_NODEFER` that probes memory itself: a fault on the
/// probe page reads the nested page, which faults again inside the handler
/// (delivered only because `SIGSEGV` is not blocked), then both pages are
/// made readable. With `SA_RESETHAND` too, it installs itself again.
extern "C" fn nested_probe_action(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _: *mut libc::c_void,
) {
    NESTED_FAULTS.fetch_add(1, SeqCst);
    if NESTED_RESETHAND.load(SeqCst) {
        install_nested_probe_handler();
    }
    // SAFETY: an all-zero sigset is valid storage; pthread_sigmask fills it.
    let blocked_usr2 = unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        libc::sigismember(&mask, libc::SIGUSR2) == 1
    };
    if !blocked_usr2 {
        NESTED_MASK_MISSED.fetch_add(1, SeqCst);
    }
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let address = unsafe { (*info).si_addr() } as usize;
    let (probe, nested) = (PROBE_PAGE.load(SeqCst), NESTED_PAGE.load(SeqCst));
    // SAFETY: both pages are ours, mapped by the probe below.
    unsafe {
        if (nested..nested + 4096).contains(&address) {
            libc::mprotect(nested as *mut libc::c_void, 4096, libc::PROT_READ);
        } else if (probe..probe + 4096).contains(&address) {
            std::ptr::read_volatile(nested as *const u8);
            libc::mprotect(probe as *mut libc::c_void, 4096, libc::PROT_READ);
        } else {
            let default: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGSEGV, &default, std::ptr::null_mut());
        }
    }
}

/// Installs [`nested_probe_action`] for `SIGSEGV`, with `SA_NODEFER`,
/// `SIGUSR2` in its mask, and `SA_RESETHAND` if asked for.
fn install_nested_probe_handler() {
    // SAFETY: an all-zero sigaction is valid; the handler is filled in.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            nested_probe_action;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        if NESTED_RESETHAND.load(SeqCst) {
            action.sa_flags |= libc::SA_RESETHAND;
        }
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaddset(&mut action.sa_mask, libc::SIGUSR2);
        libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
    }
}

/// The child: the nested-probe handler goes in before injection starts or
/// after it, then an injected failure, then three probes, each faulting
/// twice (once in the handler).
#[test]
fn nested_fault_probe() {
    if !is_child() {
        return;
    }
    let before = std::env::var("PROBE_ORDER").unwrap_or_default() == "before";
    NESTED_RESETHAND.store(std::env::var_os("PROBE_RESETHAND").is_some(), SeqCst);
    PROBE_PAGE.store(map_probe_page(), SeqCst);
    // SAFETY: a fresh anonymous mapping.
    let nested = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(nested, libc::MAP_FAILED);
    NESTED_PAGE.store(nested as usize, SeqCst);
    if before {
        install_nested_probe_handler();
    }
    mayfail::configure_injection("task-filter=Y,times=-1").unwrap();
    if !before {
        install_nested_probe_handler();
    }
    assert!(mayfail::make_it_fail(|| Vec::<u8>::new().try_reserve(8)).is_err());
    for _ in 0..3 {
        // SAFETY: the page is ours; the probe protects it again.
        unsafe { libc::mprotect(nested, 4096, libc::PROT_NONE) };
        assert_eq!(probe(), 0);
    }
    assert_eq!(NESTED_FAULTS.load(SeqCst), 6);
    assert_eq!(NESTED_MASK_MISSED.load(SeqCst), 0);
    eprintln!("probed");
}

/// A handler that asks for `SA_NODEFER` runs with its signal unblocked, as
/// the kernel runs it, also when mayfail's handler (installed without it)
/// calls it: a fault inside it is delivered to it again rather than killing
/// the process, and a handler that jumps out leaves nothing blocked. Its
/// `sa_mask` is blocked meanwhile. With `SA_RESETHAND` as well.
#[test]
fn a_handler_with_sa_nodefer_handles_faults_inside_itself_after_an_injected_failure() {
    if is_child() {
        return;
    }
    let mut problems = Vec::new();
    for order in ["before", "after"] {
        for resethand in [false, true] {
            let mut env = vec![("MAYFAIL_INJECT", None), ("PROBE_ORDER", Some(order))];
            if resethand {
                env.push(("PROBE_RESETHAND", Some("1")));
            }
            let run = run_child("nested_fault_probe", &env);
            if run.code != Some(0) || !run.stderr.contains("probed") {
                problems.push(format!(
                    "handler installed {order} mayfail's, SA_RESETHAND {resethand}: signal \
                     {:?}, exit code {:?}\n{}",
                    run.signal,
                    run.code,
                    run.stderr.trim_end()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Aborts the program's own `SIGABRT` handler saw.
static ABORTS_SEEN: AtomicUsize = AtomicUsize::new(0);

extern "C" fn counting_abort_handler(_sig: libc::c_int) {
    ABORTS_SEEN.fetch_add(1, SeqCst);
}

/// The child: the program's counting `SIGABRT` handler, installed before
/// injection starts or after; an injected failure; then `raise(SIGABRT)`,
/// which the handler handles, or `abort()` (`PROBE_ABORT`), which goes on
/// to kill the process once the handler returns.
#[test]
fn handled_abort_probe() {
    if !is_child() {
        return;
    }
    let before = std::env::var("PROBE_ORDER").unwrap_or_default() == "before";
    let install = || {
        // SAFETY: an all-zero sigaction is valid; the handler is filled in.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let handler: extern "C" fn(libc::c_int) = counting_abort_handler;
            action.sa_sigaction = handler as usize;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut()),
                0
            );
        }
    };
    if before {
        install();
    }
    mayfail::configure_injection("task-filter=Y,times=-1").unwrap();
    if !before {
        install();
    }
    assert!(mayfail::make_it_fail(|| Vec::<u8>::new().try_reserve(8)).is_err());
    if std::env::var_os("PROBE_ABORT").is_some() {
        std::process::abort();
    }
    // SAFETY: raise has no preconditions; the handler above takes it.
    unsafe { libc::raise(libc::SIGABRT) };
    assert_eq!(ABORTS_SEEN.load(SeqCst), 1);
    eprintln!("raised");
}

/// A `SIGABRT` the program raises and handles itself is no abort: no
/// report, the process lives on. `abort()` under the same handler still
/// ends the process, after mayfail's report.
#[test]
fn an_abort_signal_the_program_handles_is_no_abort_and_abort_still_is() {
    if is_child() {
        return;
    }
    let mut problems = Vec::new();
    for order in ["before", "after"] {
        for aborts in [false, true] {
            let mut env = vec![("MAYFAIL_INJECT", None), ("PROBE_ORDER", Some(order))];
            if aborts {
                env.push(("PROBE_ABORT", Some("1")));
            }
            let run = run_child("handled_abort_probe", &env);
            let reported = run
                .stderr
                .contains("mayfail: the process is aborting after an injected allocation failure");
            let fine = if aborts {
                run.signal == Some(libc::SIGABRT) && reported
            } else {
                run.code == Some(0) && !reported && run.stderr.contains("raised")
            };
            if !fine {
                problems.push(format!(
                    "handler installed {order} mayfail's, abort() {aborts}: signal {:?}, exit \
                     code {:?}, report printed {reported}\n{}",
                    run.signal,
                    run.code,
                    run.stderr.trim_end()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
