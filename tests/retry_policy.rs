//! The retry policy under real memory exhaustion.
//!
//! Each test runs its body in a child process (the test binary re-run with
//! `--exact`), which caps its address space with `RLIMIT_AS`, fills it with a
//! ballast and then allocates: the nulls come from the system allocator, not
//! from a stub. Counters are compared as deltas around the operation.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::{Exhaustion, alloc, free, is_child, run_child, run_child_with};
use mayfail::{MayFail, Stats, stats};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

static CALLS: AtomicUsize = AtomicUsize::new(0);
static FREE_ON_CALL: AtomicUsize = AtomicUsize::new(usize::MAX);

/// A reclaimer that frees nothing until its `FREE_ON_CALL`-th call, then
/// gives back ballast.
fn late_reclaimer(wanted: usize) -> usize {
    let call = CALLS.fetch_add(1, SeqCst) + 1;
    if call >= FREE_ON_CALL.load(SeqCst) {
        Exhaustion::release(wanted)
    } else {
        0
    }
}

fn free_on_call(n: usize) {
    CALLS.store(0, SeqCst);
    FREE_ON_CALL.store(n, SeqCst);
    mayfail::add_reclaimer(late_reclaimer).unwrap();
}

/// Runs `op` under exhaustion and returns what it returned and the counters
/// it moved.
fn exhausted<R>(op: impl FnOnce() -> R) -> (R, Stats) {
    let pressure = Exhaustion::start();
    let before = stats();
    let r = op();
    let delta = stats().since(&before);
    pressure.end();
    (r, delta)
}

#[test]
fn forever_recovers_through_a_reclaimer() {
    if is_child() {
        free_on_call(5);
        let (p, d) = exhausted(|| alloc(64));
        assert!(
            !p.is_null(),
            "the allocation must succeed once memory is reclaimed"
        );
        free(p, 64);
        assert_eq!((d.retries, d.recovered, d.failed), (5, 1, 0), "{d:?}");
        assert_eq!(d.reclaimer_calls, 5);
        assert!(d.reclaimed_bytes >= 64);
        return;
    }
    run_child_with(
        "forever_recovers_through_a_reclaimer",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
    // Forever is also what happens with no variable at all.
    run_child::<&str, &str>("forever_recovers_through_a_reclaimer", &[]).assert_success();
}

#[test]
fn zero_fails_at_once_without_reclaim() {
    if is_child() {
        free_on_call(1);
        let (p, d) = exhausted(|| alloc(64));
        assert!(p.is_null());
        assert_eq!((d.retries, d.recovered, d.failed), (0, 0, 1), "{d:?}");
        assert_eq!(CALLS.load(SeqCst), 0, "no reclaimer may run with retries 0");
        let (r, _) = exhausted(|| Vec::<u8>::new().try_reserve(4096).is_err());
        assert!(r, "try_reserve sees a clean Err");
        return;
    }
    run_child_with(
        "zero_fails_at_once_without_reclaim",
        &[("MAYFAIL_RETRIES", "0")],
    )
    .assert_success();
}

#[test]
fn n_gives_up_after_exactly_n_retries() {
    if is_child() {
        free_on_call(usize::MAX);
        let (p, d) = exhausted(|| alloc(64));
        assert!(p.is_null());
        assert_eq!((d.retries, d.recovered, d.failed), (3, 0, 1), "{d:?}");
        assert_eq!(d.reclaimer_calls, 3);
        return;
    }
    run_child_with(
        "n_gives_up_after_exactly_n_retries",
        &[("MAYFAIL_RETRIES", "3")],
    )
    .assert_success();
}

#[test]
fn n_recovers_when_memory_comes_back_within_n() {
    if is_child() {
        free_on_call(2);
        let (p, d) = exhausted(|| alloc(64));
        assert!(!p.is_null());
        free(p, 64);
        assert_eq!((d.retries, d.recovered, d.failed), (2, 1, 0), "{d:?}");
        return;
    }
    run_child_with(
        "n_recovers_when_memory_comes_back_within_n",
        &[("MAYFAIL_RETRIES", "3")],
    )
    .assert_success();
}

#[test]
fn the_setter_overrides_the_environment() {
    if is_child() {
        assert_eq!(mayfail::retries(), 0);
        mayfail::set_retries(2);
        assert_eq!(mayfail::retries(), 2);
        free_on_call(usize::MAX);
        let (p, d) = exhausted(|| alloc(64));
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed), (2, 1), "{d:?}");
        return;
    }
    run_child_with(
        "the_setter_overrides_the_environment",
        &[("MAYFAIL_RETRIES", "0")],
    )
    .assert_success();
}

#[test]
fn nofail_overrides_zero_for_small_and_large() {
    if is_child() {
        free_on_call(3);
        let (p, d) = exhausted(|| mayfail::nofail(|| alloc(64)));
        assert!(!p.is_null());
        free(p, 64);
        assert_eq!((d.retries, d.recovered, d.failed), (3, 1, 0), "{d:?}");

        free_on_call(2);
        let (p, d) = exhausted(|| mayfail::nofail(|| alloc(256 << 10)));
        assert!(
            !p.is_null(),
            "a large allocation inside nofail is retried too"
        );
        free(p, 256 << 10);
        assert!(d.retries >= 2 && d.recovered == 1 && d.failed == 0, "{d:?}");
        return;
    }
    run_child_with(
        "nofail_overrides_zero_for_small_and_large",
        &[("MAYFAIL_RETRIES", "0")],
    )
    .assert_success();
}

#[test]
fn noretry_overrides_forever() {
    if is_child() {
        free_on_call(1);
        let (p, d) = exhausted(|| mayfail::noretry(|| alloc(64)));
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed, d.reclaimer_calls), (0, 1, 0), "{d:?}");
        // Innermost wins: nofail inside noretry retries.
        let (p, d) = exhausted(|| mayfail::noretry(|| mayfail::nofail(|| alloc(64))));
        assert!(!p.is_null());
        free(p, 64);
        assert_eq!((d.retries, d.recovered), (1, 1), "{d:?}");
        return;
    }
    run_child_with("noretry_overrides_forever", &[("MAYFAIL_RETRIES", "-1")]).assert_success();
}

#[test]
fn large_allocations_are_not_retried() {
    if is_child() {
        free_on_call(1);
        let (p, d) = exhausted(|| alloc(64 << 10));
        assert!(p.is_null(), "64 KiB is above the 32 KiB small limit");
        assert_eq!((d.retries, d.failed, d.reclaimer_calls), (0, 1, 0), "{d:?}");
        // Raising the small limit makes the same request small.
        mayfail::set_small_limit(128 << 10);
        let (p, d) = exhausted(|| alloc(64 << 10));
        assert!(!p.is_null());
        free(p, 64 << 10);
        assert_eq!((d.retries, d.recovered), (1, 1), "{d:?}");
        return;
    }
    run_child_with(
        "large_allocations_are_not_retried",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

#[test]
fn the_small_limit_comes_from_the_environment() {
    if is_child() {
        assert_eq!(mayfail::small_limit(), 1024);
        free_on_call(1);
        let (p, d) = exhausted(|| alloc(2048));
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed), (0, 1), "{d:?}");
        return;
    }
    run_child_with(
        "the_small_limit_comes_from_the_environment",
        &[("MAYFAIL_SMALL", "1K")],
    )
    .assert_success();
}

#[test]
fn a_failed_realloc_keeps_the_block_and_a_retried_one_keeps_the_contents() {
    if is_child() {
        let layout = Layout::from_size_align(1024, 8).unwrap();
        // SAFETY: non-zero size.
        let block = unsafe { std::alloc::alloc(layout) };
        assert!(!block.is_null());
        // SAFETY: `block` is 1024 writable bytes.
        unsafe { std::ptr::write_bytes(block, 0x5a, 1024) };

        free_on_call(usize::MAX);
        // SAFETY: `block` is live with `layout`.
        let (p, d) = exhausted(|| unsafe { std::alloc::realloc(block, layout, 8192) });
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed), (3, 1), "{d:?}");
        // SAFETY: a failed realloc leaves the block live and untouched.
        let old = unsafe { std::slice::from_raw_parts(block, 1024) };
        assert!(old.iter().all(|&b| b == 0x5a), "the old block was changed");

        free_on_call(2);
        // SAFETY: `block` is still live with `layout`.
        let (p, d) = exhausted(|| unsafe { std::alloc::realloc(block, layout, 8192) });
        assert!(!p.is_null());
        assert_eq!((d.retries, d.recovered), (2, 1), "{d:?}");
        // SAFETY: `p` is the grown block of 8192 bytes, its first 1024 copied.
        let grown = unsafe { std::slice::from_raw_parts(p, 1024) };
        assert!(
            grown.iter().all(|&b| b == 0x5a),
            "realloc lost the contents"
        );
        // SAFETY: `p` is live with size 8192, align 8.
        unsafe { std::alloc::dealloc(p, Layout::from_size_align(8192, 8).unwrap()) };
        return;
    }
    run_child_with(
        "a_failed_realloc_keeps_the_block_and_a_retried_one_keeps_the_contents",
        &[("MAYFAIL_RETRIES", "3")],
    )
    .assert_success();
}

const DIRTY: usize = 64;
static DIRTY_BLOCKS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// Frees blocks that were filled with 0xab, so that memory handed out again
/// is dirty unless the allocator zeroes it.
fn dirty_reclaimer(_wanted: usize) -> usize {
    let call = CALLS.fetch_add(1, SeqCst) + 1;
    if call < 2 {
        return 0;
    }
    let Ok(mut blocks) = DIRTY_BLOCKS.try_lock() else {
        return 0;
    };
    let n = blocks.len();
    for addr in blocks.drain(..) {
        // SAFETY: allocated in the test body with this layout, `System` directly.
        unsafe { System.dealloc(addr as *mut u8, Layout::from_size_align(4096, 8).unwrap()) };
    }
    n * 4096
}

#[test]
fn alloc_zeroed_is_retried_as_alloc_zeroed() {
    if is_child() {
        DIRTY_BLOCKS.lock().unwrap().reserve(DIRTY);
        let pressure = Exhaustion::start();
        // Take the dirty blocks out of the last free memory: the ballast
        // gives back 64 KiB, which becomes the dirty blocks.
        Exhaustion::release(DIRTY * 4096);
        for _ in 0..DIRTY {
            // SAFETY: non-zero size.
            let b = unsafe { System.alloc(Layout::from_size_align(4096, 8).unwrap()) };
            if b.is_null() {
                break;
            }
            // SAFETY: `b` is 4096 writable bytes.
            unsafe { std::ptr::write_bytes(b, 0xab, 4096) };
            DIRTY_BLOCKS.lock().unwrap().push(b as usize);
        }
        Exhaustion::fill();
        CALLS.store(0, SeqCst);
        mayfail::add_reclaimer(dirty_reclaimer).unwrap();
        let layout = Layout::from_size_align(4096, 8).unwrap();
        let before = stats();
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let d = stats().since(&before);
        assert!(!p.is_null());
        // SAFETY: 4096 readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p, 4096) };
        assert!(
            bytes.iter().all(|&b| b == 0),
            "alloc_zeroed returned dirty memory"
        );
        // SAFETY: live with `layout`.
        unsafe { std::alloc::dealloc(p, layout) };
        pressure.end();
        assert_eq!((d.retries, d.recovered), (2, 1), "{d:?}");
        return;
    }
    run_child_with(
        "alloc_zeroed_is_retried_as_alloc_zeroed",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

/// Frees nothing until `STALL_DEADLINE`, then gives back ballast.
fn slow_reclaimer(wanted: usize) -> usize {
    if STALL_DEADLINE.get().is_some_and(|d| Instant::now() >= *d) {
        Exhaustion::release(wanted)
    } else {
        0
    }
}

static STALL_DEADLINE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

#[test]
fn a_stall_is_reported_once() {
    if is_child() {
        let pressure = Exhaustion::start();
        STALL_DEADLINE
            .set(Instant::now() + Duration::from_millis(400))
            .unwrap();
        mayfail::add_reclaimer(slow_reclaimer).unwrap();
        let before = stats();
        let p = alloc(64);
        let d = stats().since(&before);
        pressure.end();
        assert!(!p.is_null());
        free(p, 64);
        assert_eq!((d.stalls, d.recovered, d.failed), (1, 1, 0), "{d:?}");
        return;
    }
    let run = run_child_with(
        "a_stall_is_reported_once",
        &[("MAYFAIL_RETRIES", "-1"), ("MAYFAIL_STALL_MS", "50")],
    );
    run.assert_success();
    let stalls: Vec<&str> = run
        .mayfail_lines()
        .into_iter()
        .filter(|l| l.contains("stalled"))
        .collect();
    assert_eq!(stalls.len(), 1, "{}", run.stderr);
    assert!(
        stalls[0].contains("allocation of 64 bytes"),
        "{}",
        stalls[0]
    );
    assert!(stalls[0].contains("MAYFAIL_RETRIES"), "{}", stalls[0]);
}

#[test]
fn a_request_larger_than_the_address_space_fails_at_once_even_in_nofail() {
    if is_child() {
        let limit = mayfail::pressure::limit_address_space(64 << 20).unwrap();
        free_on_call(1);
        let before = stats();
        let p = mayfail::nofail(|| alloc(1 << 30));
        let d = stats().since(&before);
        drop(limit);
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed, d.reclaimer_calls), (0, 1, 0), "{d:?}");
        return;
    }
    run_child_with(
        "a_request_larger_than_the_address_space_fails_at_once_even_in_nofail",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

#[test]
fn a_final_failure_is_logged_once_per_second_even_from_a_fresh_thread() {
    if is_child() {
        env_logger::builder().is_test(false).init();
        free_on_call(usize::MAX);
        // A thread that has never logged: its first log record needs memory
        // (env_logger's buffer, a thread-local destructor registered with
        // glibc), which only the emergency reserve can provide.
        // glibc gives each thread an arena of its own: the worker exhausts it.
        let worker = std::thread::spawn(|| {
            let pressure = Exhaustion::start();
            let before = stats();
            let first = alloc(64);
            // Logging gave the reserve back to the allocator: take it again.
            // (glibc may still coalesce small free chunks, so a few of the
            // following can succeed; none of the failures may be logged.)
            let first_delta = stats().since(&before);
            Exhaustion::fill();
            let before = stats();
            let more: [usize; 8] = std::array::from_fn(|i| alloc(128 * (i + 1)) as usize);
            let more_delta = stats().since(&before);
            pressure.end();
            (first as usize, more, (first_delta, more_delta))
        });
        let (first, more, (first_delta, more_delta)) = worker.join().unwrap();
        assert_eq!(first, 0);
        let failed_more = more.iter().filter(|&&p| p == 0).count() as u64;
        assert!(
            failed_more >= 4,
            "the ballast took the spent reserve: {more:?}"
        );
        assert_eq!(
            (first_delta.retries, first_delta.failed),
            (0, 1),
            "{first_delta:?}"
        );
        assert_eq!(
            (more_delta.retries, more_delta.failed),
            (0, failed_more),
            "{more_delta:?}"
        );
        for (i, p) in more.into_iter().enumerate() {
            if p != 0 {
                free(p as *mut u8, 128 * (i + 1));
            }
        }
        return;
    }
    let run = run_child_with(
        "a_final_failure_is_logged_once_per_second_even_from_a_fresh_thread",
        &[("MAYFAIL_RETRIES", "0"), ("RUST_LOG", "warn")],
    );
    run.assert_success();
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("WARN  mayfail"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "the ballast's failures are nowarn: {}",
        run.stderr
    );
    assert!(
        warnings[0].contains("allocation of 64 bytes (align 8) failed after 0 retries"),
        "{}",
        warnings[0]
    );
}

/// Allocates `size` bytes aligned to `align` through the global allocator.
fn alloc_aligned(size: usize, align: usize) -> *mut u8 {
    // SAFETY: a non-zero size and a power-of-two alignment.
    unsafe { std::alloc::alloc(Layout::from_size_align(size, align).unwrap()) }
}

#[test]
fn a_small_size_with_a_huge_alignment_is_neither_small_nor_curable() {
    if is_child() {
        free_on_call(1);
        // 8 bytes aligned to 1 TiB: no memory ever freed makes room for it.
        let before = stats();
        let p = alloc_aligned(8, 1 << 40);
        let d = stats().since(&before);
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed, d.reclaimer_calls), (0, 1, 0), "{d:?}");
        // Even nofail gives up at once on a footprint larger than the machine.
        let before = stats();
        let p = mayfail::nofail(|| alloc_aligned(8, 1 << 40));
        let d = stats().since(&before);
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed), (0, 1), "{d:?}");
        // 4 KiB aligned to 2 MiB under exhaustion: a large request, not
        // retried (its footprint is 2 MiB + 4 KiB - 1).
        let (p, d) = exhausted(|| alloc_aligned(4096, 2 << 20));
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed, d.reclaimer_calls), (0, 1, 0), "{d:?}");
        return;
    }
    run_child_with(
        "a_small_size_with_a_huge_alignment_is_neither_small_nor_curable",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

#[test]
fn a_nofail_larger_than_ram_and_swap_fails_at_once() {
    if is_child() {
        // SAFETY: an all-zero sysinfo is valid; sysinfo fills it.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is writable.
        assert_eq!(unsafe { libc::sysinfo(&mut info) }, 0);
        let machine = (info.totalram + info.totalswap) as usize * info.mem_unit as usize;
        free_on_call(1);
        let before = stats();
        let p = mayfail::nofail(|| alloc(machine.saturating_mul(2)));
        let d = stats().since(&before);
        assert!(p.is_null());
        assert_eq!((d.retries, d.failed, d.reclaimer_calls), (0, 1, 0), "{d:?}");
        return;
    }
    run_child_with(
        "a_nofail_larger_than_ram_and_swap_fails_at_once",
        &[("MAYFAIL_RETRIES", "-1")],
    )
    .assert_success();
}

/// An inner allocator for a second `MayFail`: it fails its first `NULLS`
/// calls, then serves from the system allocator, and notices a free of a
/// block it never handed out.
struct Picky;

const NULLS: usize = 50;
static PICKY_CALLS: AtomicUsize = AtomicUsize::new(0);
static PICKY_LIVE: AtomicUsize = AtomicUsize::new(0);
static PICKY_FOREIGN_FREES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every block comes from `System` with the caller's layout and goes
// back to it; a block `System` did not hand out through `Picky` is counted
// and not freed.
unsafe impl GlobalAlloc for Picky {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if PICKY_CALLS.fetch_add(1, SeqCst) < NULLS {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract.
        let p = unsafe { System.alloc(layout) };
        PICKY_LIVE.store(p as usize, SeqCst);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if PICKY_LIVE
            .compare_exchange(ptr as usize, 0, SeqCst, SeqCst)
            .is_err()
        {
            PICKY_FOREIGN_FREES.fetch_add(1, SeqCst);
            return;
        }
        // SAFETY: `ptr` came from `System.alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Built with 2 retries, while the global allocator retries for ever.
static LOCAL: MayFail<Picky> = MayFail::new(Picky).with_retries(2);

#[test]
fn two_instances_keep_their_own_defaults_and_reserves() {
    if is_child() {
        env_logger::builder().is_test(false).init();
        free_on_call(usize::MAX);
        let layout = Layout::from_size_align(64, 8).unwrap();
        let before = stats();
        // SAFETY: a non-zero size.
        let p = unsafe { LOCAL.alloc(layout) };
        let d = stats().since(&before);
        assert!(
            p.is_null(),
            "the local allocator gives up after its 2 retries"
        );
        assert_eq!(PICKY_CALLS.load(SeqCst), 3, "one call and 2 retries");
        assert_eq!((d.retries, d.failed), (2, 1), "{d:?}");
        // Its final failure was logged without handing the global
        // allocator's reserve to `Picky`.
        assert_eq!(PICKY_FOREIGN_FREES.load(SeqCst), 0);
        // The global allocator still retries for ever and recovers.
        CALLS.store(0, SeqCst);
        FREE_ON_CALL.store(3, SeqCst);
        let (p, d) = exhausted(|| alloc(64));
        assert!(!p.is_null());
        free(p, 64);
        assert_eq!((d.retries, d.recovered), (3, 1), "{d:?}");
        return;
    }
    let run = run_child_with(
        "two_instances_keep_their_own_defaults_and_reserves",
        &[("RUST_LOG", "warn")],
    );
    run.assert_success();
    assert!(
        run.stderr.contains("failed after 2 retries"),
        "the local failure is logged: {}",
        run.stderr
    );
}
