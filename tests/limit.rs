//! The heap limit (`MAYFAIL_LIMIT`, `set_limit`, `MayFail::with_limit`) under
//! real allocation: the system allocator would serve every request below
//! (no address-space limit, no cgroup), so every null and every reclaimer
//! call seen here comes from the limit. Each test runs in a child process
//! with the variables it names; the in-place lanes (mayfail linked into this
//! executable) and the out-of-line path (injection on, never firing) are
//! both run.

mod common;

use std::alloc::System;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::{ChildRun, MemoryCgroup, is_child, run_child_in, run_child_with};
use mayfail::{Limit, MayFail, stats};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

const MIB: usize = 1 << 20;
/// What the threads may hold above the bytes live (see `set_limit`).
const SLACK_PER_THREAD: usize = 128 << 10;

/// The ways a child runs: the in-place lanes, and the out-of-line path
/// (injection on, never firing outside a `make_it_fail` scope).
fn both_paths(name: &str, env: &[(&str, &str)]) -> Vec<ChildRun> {
    let mut runs = Vec::new();
    runs.push(run_child_with(name, env));
    if cfg!(feature = "inject") {
        let mut env = env.to_vec();
        env.push(("MAYFAIL_INJECT", "task-filter=Y"));
        runs.push(run_child_with(name, &env));
    }
    for run in &runs {
        run.assert_success();
    }
    runs
}

/// Keeps 16 KiB blocks until `try_reserve` fails; returns them.
fn fill_until_refused(kept: &mut Vec<Vec<u8>>) {
    loop {
        let mut block: Vec<u8> = Vec::new();
        if block.try_reserve_exact(16 << 10).is_err() {
            return;
        }
        block.resize(16 << 10, 1);
        kept.push(block);
        assert!(kept.len() < 1 << 20, "the limit never refused");
    }
}

#[test]
fn child_refuses_past_the_limit() {
    if !is_child() {
        return;
    }
    assert_eq!(mayfail::limit(), Some(64 * MIB));
    let before = stats();
    let mut kept = Vec::with_capacity(8192);
    fill_until_refused(&mut kept);
    let held = kept.len() * (16 << 10);
    let s = stats();
    assert!(held <= 64 * MIB, "held {held} bytes past a 64 MiB limit");
    assert!(
        held >= 64 * MIB - 4 * MIB,
        "refused early: {held} bytes held"
    );
    assert!(s.limit_hits > before.limit_hits, "{s:?}");
    assert_eq!(s.limit, Some(64 * MIB as u64));
    assert!(
        s.heap_bytes as usize >= held && s.heap_peak as usize <= 64 * MIB,
        "{s:?}"
    );
    // Freed bytes come off the count: half the blocks fit again.
    let half = kept.len() / 2;
    kept.truncate(half);
    let mut again = Vec::new();
    fill_until_refused(&mut again);
    let again_held = again.len() * (16 << 10);
    assert!(
        again_held + SLACK_PER_THREAD >= half * (16 << 10),
        "after freeing {} bytes only {again_held} fit again",
        half * (16 << 10)
    );
    println!("LIMIT-OK held={held}");
}

#[test]
fn a_byte_limit_refuses_what_would_pass_it_and_frees_count() {
    if is_child() {
        return;
    }
    for run in both_paths(
        "child_refuses_past_the_limit",
        &[("MAYFAIL_LIMIT", "64M"), ("MAYFAIL_RETRIES", "0")],
    ) {
        assert!(run.stdout.contains("LIMIT-OK"), "{}", run.stdout);
        assert!(run.mayfail_lines().is_empty(), "{}", run.stderr);
    }
}

/// The service's cache: 16 KiB responses, oldest first.
static CACHE: Mutex<VecDeque<Vec<u8>>> = Mutex::new(VecDeque::new());
static WANTED: AtomicUsize = AtomicUsize::new(0);

/// Drops the oldest half of the cache (`try_lock`: the failing thread may
/// hold the lock).
fn drop_oldest_half(wanted: usize) -> usize {
    WANTED.fetch_max(wanted, SeqCst);
    let Ok(mut cache) = CACHE.try_lock() else {
        return 0;
    };
    let n = cache.len() / 2;
    let freed: usize = cache.drain(..n).map(|b| b.capacity()).sum();
    freed
}

#[test]
fn child_serves_a_cache_larger_than_the_limit() {
    if !is_child() {
        return;
    }
    mayfail::add_reclaimer(drop_oldest_half).unwrap();
    let before = stats();
    // 1 GiB of responses through a 64 MiB limit.
    for i in 0..65536usize {
        let response = vec![(i % 251) as u8; 16 << 10];
        CACHE.lock().unwrap().push_back(response);
    }
    let s = stats().since(&before);
    let cached = CACHE.lock().unwrap().len();
    assert!(cached > 0 && cached * (16 << 10) <= 64 * MIB);
    assert!(
        s.limit_hits > 0 && s.reclaim_passes > 0 && s.reclaimed_bytes > 0,
        "{s:?}"
    );
    assert_eq!(s.failed, 0, "{s:?}");
    assert!(s.heap_peak as usize <= 64 * MIB, "{s:?}");
    // The reclaimer is told how many bytes are over: never more than one
    // response and the threads' slack.
    let wanted = WANTED.load(SeqCst);
    assert!(
        wanted > 0 && wanted <= (16 << 10) + SLACK_PER_THREAD,
        "{wanted}"
    );
    println!(
        "SERVED hits={} passes={} peak={}",
        s.limit_hits, s.reclaim_passes, s.heap_peak
    );
}

#[test]
fn the_reclaimers_run_on_a_limit_hit_and_every_request_is_served() {
    if is_child() {
        return;
    }
    // The background reclaimer off: every reclaim here follows a hit.
    for run in both_paths(
        "child_serves_a_cache_larger_than_the_limit",
        &[
            ("MAYFAIL_LIMIT", "64M"),
            ("MAYFAIL_LIMIT_SOFT", "0%"),
            ("MAYFAIL_PRESSURE", "off"),
        ],
    ) {
        assert!(run.stdout.contains("SERVED"), "{}", run.stdout);
    }
}

#[test]
fn child_large_requests() {
    if !is_child() {
        return;
    }
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    fn give_back_one(_wanted: usize) -> usize {
        CALLS.fetch_add(1, SeqCst);
        let Ok(mut spare) = SPARE.try_lock() else {
            return 0;
        };
        spare.pop().map_or(0, |b| b.capacity())
    }
    mayfail::set_limit(Limit::Bytes(16 * MIB));
    mayfail::add_reclaimer(give_back_one).unwrap();
    // 12 MiB held in 1 MiB blocks the reclaimer gives back one per call.
    for _ in 0..12 {
        SPARE.lock().unwrap().push(vec![1u8; MIB]);
    }
    // 8 MiB: above the small limit, over the heap limit by about 4 MiB.
    let mut big: Vec<u8> = Vec::new();
    assert!(big.try_reserve_exact(8 * MIB).is_ok());
    let calls = CALLS.swap(0, SeqCst);
    assert!((4..=6).contains(&calls), "{calls} reclaimer calls");
    drop(big);
    // Fill to the limit, then a large request the reclaimer cannot help:
    // one round that frees nothing, then the failure.
    SPARE.lock().unwrap().clear();
    let mut held = Vec::new();
    fill_until_refused(&mut held);
    CALLS.store(0, SeqCst);
    let mut big: Vec<u8> = Vec::new();
    assert!(big.try_reserve_exact(MIB).is_err());
    assert_eq!(CALLS.load(SeqCst), 1);
    // Larger than the limit itself: fails at once, no reclaim.
    drop(held);
    CALLS.store(0, SeqCst);
    assert!(big.try_reserve_exact(32 * MIB).is_err());
    assert_eq!(CALLS.load(SeqCst), 0);
    // nofail may pass the limit, and is counted.
    let before = stats();
    let mut held = Vec::new();
    fill_until_refused(&mut held);
    let extra = mayfail::nofail(|| vec![0u8; 4 * MIB]);
    let s = stats().since(&before);
    assert!(s.limit_exceeded >= 1, "{s:?}");
    assert!(s.heap_bytes as usize > 16 * MIB, "{s:?}");
    drop(extra);
    println!("LARGE-OK");
}

#[test]
fn large_requests_get_reclaim_rounds_while_reclaim_makes_progress() {
    if is_child() {
        return;
    }
    for run in both_paths(
        "child_large_requests",
        &[
            ("MAYFAIL_RETRIES", "0"),
            ("MAYFAIL_LIMIT_SOFT", "0%"),
            ("MAYFAIL_PRESSURE", "off"),
        ],
    ) {
        assert!(run.stdout.contains("LARGE-OK"), "{}", run.stdout);
    }
}

#[test]
fn child_threads_hand_their_share_back() {
    if !is_child() {
        return;
    }
    mayfail::set_limit(Limit::Bytes(256 * MIB));
    let before = stats().heap_bytes;
    // 64 threads, each allocating and freeing 100 KiB in small blocks:
    // each leaves with credit and unfolded frees, which its exit hands back.
    for _ in 0..8 {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    let blocks: Vec<Vec<u8>> = (0..100).map(|_| vec![0u8; 1000]).collect();
                    drop(blocks);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    let after = stats().heap_bytes;
    // Without the hand-back each thread would leave up to 128 KiB behind:
    // 8 MiB in all.
    assert!(
        after <= before + 2 * SLACK_PER_THREAD as u64,
        "the count grew from {before} to {after}"
    );
    println!("THREADS-OK");
}

#[test]
fn exiting_threads_hand_their_share_back() {
    if is_child() {
        return;
    }
    for run in both_paths("child_threads_hand_their_share_back", &[]) {
        assert!(run.stdout.contains("THREADS-OK"), "{}", run.stdout);
    }
}

#[test]
fn child_free_only_threads_hand_their_share_back() {
    if !is_child() {
        return;
    }
    mayfail::set_limit(Limit::Bytes(256 * MIB));
    let before = stats().heap_bytes;
    // 200 threads that only free what this thread allocated, in 1000-byte
    // blocks: half free 120 KB each (their frees fold into credit), half
    // 30 KB (their frees stay unfolded). Each exit hands that share back.
    for round in 0..25 {
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let n = if (round + i) % 2 == 0 { 120 } else { 30 };
                let blocks: Vec<Vec<u8>> = (0..n).map(|_| vec![0u8; 1000]).collect();
                std::thread::spawn(move || drop(blocks))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    let after = stats().heap_bytes;
    // Without the hand-back the count would grow by the 15 MB freed.
    assert!(
        after <= before + 2 * SLACK_PER_THREAD as u64,
        "the count grew from {before} to {after} with nothing more live"
    );
    println!("FREE-ONLY-OK count from {before} to {after}");
}

#[test]
fn threads_that_only_free_hand_their_share_back() {
    if is_child() {
        return;
    }
    for run in both_paths("child_free_only_threads_hand_their_share_back", &[]) {
        assert!(run.stdout.contains("FREE-ONLY-OK"), "{}", run.stdout);
    }
}

#[test]
fn child_frees_from_before_the_count() {
    if !is_child() {
        return;
    }
    // 64 MiB allocated before the count starts, in one block and in 16 KiB
    // blocks, half of each freed whole, half shrunk by reallocs.
    let big = vec![1u8; 32 * MIB];
    let mut shrunk = vec![1u8; 16 * MIB];
    let small: Vec<Vec<u8>> = (0..1024).map(|_| vec![1u8; 16 << 10]).collect();
    mayfail::set_limit(Limit::Bytes(32 * MIB));
    drop(big);
    drop(small);
    shrunk.truncate(4096);
    shrunk.shrink_to_fit();
    let s = stats();
    assert!(s.heap_bytes < 1 << 62, "the count went negative: {s:?}");
    let mut kept = Vec::with_capacity(8192);
    fill_until_refused(&mut kept);
    let held = kept.len() * (16 << 10);
    let counted = stats().heap_bytes as usize;
    drop(kept);
    assert!(
        held <= 32 * MIB,
        "held {held} bytes under a 32 MiB limit after freeing 64 MiB from before the count"
    );
    assert!(counted >= held, "{held} bytes held, {counted} counted");
    println!("BEFORE-COUNT-OK held={held}");
}

#[test]
fn frees_of_blocks_from_before_the_count_leave_the_limit_holding() {
    if is_child() {
        return;
    }
    for run in both_paths(
        "child_frees_from_before_the_count",
        &[("MAYFAIL_RETRIES", "0")],
    ) {
        assert!(run.stdout.contains("BEFORE-COUNT-OK"), "{}", run.stdout);
    }
}

#[test]
fn child_reallocs_are_counted() {
    if !is_child() {
        return;
    }
    mayfail::set_limit(Limit::Bytes(8 * MIB));
    let mut v: Vec<u8> = Vec::new();
    // Growing by reallocs: refused once the growth would pass the limit.
    let mut grew = 0usize;
    loop {
        let want = (v.capacity() * 2).max(4096);
        if v.try_reserve_exact(want - v.len()).is_err() {
            break;
        }
        v.resize(want, 0);
        grew += 1;
        assert!(grew < 64);
    }
    assert!(
        v.capacity() <= 8 * MIB && v.capacity() >= 2 * MIB,
        "{}",
        v.capacity()
    );
    // Shrinking gives bytes back: a second vector of that size fits now.
    v.truncate(4096);
    v.shrink_to_fit();
    let mut w: Vec<u8> = Vec::new();
    assert!(w.try_reserve_exact(4 * MIB).is_ok());
    println!("REALLOC-OK");
}

#[test]
fn reallocs_charge_their_growth_and_give_back_their_shrinkage() {
    if is_child() {
        return;
    }
    for run in both_paths("child_reallocs_are_counted", &[("MAYFAIL_RETRIES", "0")]) {
        assert!(run.stdout.contains("REALLOC-OK"), "{}", run.stdout);
    }
}

#[test]
fn child_stalls_at_the_limit() {
    if !is_child() {
        return;
    }
    mayfail::set_limit(Limit::Bytes(8 * MIB));
    let mut held = Vec::new();
    fill_until_refused(&mut held);
    let held = Mutex::new(held);
    std::thread::scope(|s| {
        // Another thread frees after 300 ms; this one retries meanwhile.
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            held.lock().unwrap().clear();
        });
        mayfail::set_retries(mayfail::RETRY_FOREVER);
        let block = vec![0u8; 16 << 10];
        drop(block);
    });
    assert!(stats().stalls >= 1);
    println!("STALL-OK");
}

#[test]
fn the_stall_warning_names_the_limit() {
    if is_child() {
        return;
    }
    let run = run_child_with(
        "child_stalls_at_the_limit",
        &[("MAYFAIL_RETRIES", "0"), ("MAYFAIL_STALL_MS", "100")],
    );
    run.assert_success();
    let lines = run.mayfail_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("stalled") && l.contains("heap limit of 8388608 bytes")),
        "{}",
        run.stderr
    );
}

#[test]
fn child_limit_in_force() {
    if is_child() {
        println!("LIMIT {:?}", mayfail::limit());
    }
}

#[test]
fn the_variable_takes_every_documented_form_and_refuses_the_rest() {
    if is_child() {
        return;
    }
    let ram = {
        // SAFETY: an all-zero sysinfo is valid for the call to fill.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is writable.
        assert_eq!(unsafe { libc::sysinfo(&mut info) }, 0);
        info.totalram as usize * info.mem_unit as usize
    };
    let in_force = |value: &str| {
        let run = run_child_with("child_limit_in_force", &[("MAYFAIL_LIMIT", value)]);
        run.assert_success();
        (
            run.stdout
                .lines()
                .find_map(|l| l.split_once("LIMIT ").map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("{value}: {run:?}"))
                .to_owned(),
            run.mayfail_lines().join("\n"),
        )
    };
    assert_eq!(in_force("512M"), ("Some(536870912)".into(), String::new()));
    assert_eq!(in_force("8388608"), ("Some(8388608)".into(), String::new()));
    assert_eq!(in_force("none"), ("None".into(), String::new()));
    let (pct, _) = in_force("50%");
    let pct: usize = pct
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    // Half of the cgroup's limit or of RAM: never more than half of RAM.
    assert!(pct <= ram / 2 + 1 && pct > 0, "{pct} of {ram}");
    for bad in ["0", "lots", "150%", "1.5G"] {
        let (limit, lines) = in_force(bad);
        assert_eq!(limit, "None", "{bad}");
        assert!(
            lines.contains("MAYFAIL_LIMIT") && lines.contains(bad) && lines.contains("512M"),
            "{bad}: {lines}"
        );
    }
}

/// A memory cgroup for a test, or `None` with the reason printed.
fn cgroup(name: &str, limit: Option<u64>, parent: Option<&MemoryCgroup>) -> Option<MemoryCgroup> {
    match MemoryCgroup::create(name, limit, parent) {
        Ok(cgroup) => Some(cgroup),
        Err(why) => {
            println!("skipped: no memory cgroup ({why})");
            None
        }
    }
}

/// The limit a child sees in `cgroup` with these variables.
fn limit_seen(cgroup: Option<&MemoryCgroup>, env: &[(&str, &str)]) -> Option<u64> {
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|&(k, v)| (k, Some(v))).collect();
    let run = run_child_in("child_limit_in_force", &env, cgroup);
    run.assert_success();
    assert!(run.mayfail_lines().is_empty(), "{}", run.stderr);
    let shown = run
        .stdout
        .lines()
        .find_map(|l| l.split_once("LIMIT ").map(|(_, rest)| rest.to_owned()))
        .unwrap();
    shown
        .strip_prefix("Some(")
        .map(|n| n.trim_end_matches(')').parse().unwrap())
}

/// The default headroom under a limit of `base` bytes.
fn default_headroom(base: u64) -> u64 {
    (base / 100 * 10).max(16 << 20)
}

#[test]
fn the_cgroup_limit_is_read_less_the_headroom() {
    if is_child() {
        return;
    }
    let Some(limited) = cgroup("mayfail-limit", Some(256 << 20), None) else {
        return;
    };
    let base = 256u64 << 20;
    let cg = Some(&limited);
    assert_eq!(
        limit_seen(cg, &[("MAYFAIL_LIMIT", "cgroup")]),
        Some(base - default_headroom(base))
    );
    assert_eq!(
        limit_seen(
            cg,
            &[
                ("MAYFAIL_LIMIT", "cgroup"),
                ("MAYFAIL_LIMIT_HEADROOM", "64M")
            ]
        ),
        Some(base - (64 << 20))
    );
    assert_eq!(
        limit_seen(
            cg,
            &[
                ("MAYFAIL_LIMIT", "cgroup"),
                ("MAYFAIL_LIMIT_HEADROOM", "20%")
            ]
        ),
        Some(base - base / 100 * 20)
    );
    assert_eq!(
        limit_seen(cg, &[("MAYFAIL_LIMIT", "50%")]),
        Some(base / 100 * 50)
    );
    // A cgroup without a limit of its own under one with: the ancestor's.
    let Some(inner) = cgroup("inner", None, Some(&limited)) else {
        return;
    };
    assert_eq!(
        limit_seen(Some(&inner), &[("MAYFAIL_LIMIT", "cgroup")]),
        Some(base - default_headroom(base))
    );
    drop(inner);
    // Without a cgroup limit: the machine's RAM less the headroom.
    let Some(unlimited) = cgroup("mayfail-unlimited", None, None) else {
        return;
    };
    // SAFETY: an all-zero sysinfo is valid for the call to fill.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is writable.
    assert_eq!(unsafe { libc::sysinfo(&mut info) }, 0);
    let ram = info.totalram as u64 * info.mem_unit as u64;
    assert_eq!(
        limit_seen(Some(&unlimited), &[("MAYFAIL_LIMIT", "cgroup")]),
        Some(ram - default_headroom(ram))
    );
}

#[test]
fn child_follows_a_changed_cgroup_limit() {
    if !is_child() {
        return;
    }
    let dir = std::env::var("MAYFAIL_TEST_CGROUP").unwrap();
    let file = std::env::var("MAYFAIL_TEST_CGROUP_FILE").unwrap();
    let before = mayfail::limit().unwrap();
    let mut held = Vec::new();
    fill_until_refused(&mut held);
    // The container's limit is raised; the next hit, a second after the
    // last reading, reads it again.
    std::fs::write(
        std::path::Path::new(&dir).join(file),
        (512u64 << 20).to_string(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let mut more: Vec<u8> = Vec::new();
    assert!(more.try_reserve_exact(1 << 20).is_ok());
    let after = mayfail::limit().unwrap();
    assert!(after > before, "{before} -> {after}");
    println!("FOLLOWED {before} {after}");
}

#[test]
fn a_changed_cgroup_limit_is_read_again_on_the_next_hit() {
    if is_child() {
        return;
    }
    let Some(limited) = cgroup("mayfail-change", Some(128 << 20), None) else {
        return;
    };
    let file = if limited.version == 2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let dir = limited.dir.to_str().unwrap();
    let env = [
        ("MAYFAIL_LIMIT", Some("cgroup")),
        ("MAYFAIL_RETRIES", Some("0")),
        ("MAYFAIL_TEST_CGROUP", Some(dir)),
        ("MAYFAIL_TEST_CGROUP_FILE", Some(file)),
    ];
    let run = run_child_in("child_follows_a_changed_cgroup_limit", &env, Some(&limited));
    run.assert_success();
    assert!(run.stdout.contains("FOLLOWED"), "{}", run.stdout);
}

/// The thread the reclaimer last ran on.
static RECLAIMED_ON: AtomicU64 = AtomicU64::new(0);

fn drop_oldest_half_noting_the_thread(wanted: usize) -> usize {
    // SAFETY: gettid has no preconditions.
    RECLAIMED_ON.store(unsafe { libc::gettid() } as u64, SeqCst);
    drop_oldest_half(wanted)
}

/// Waits up to 5 s for `done`.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn child_soft_mark() {
    if !is_child() {
        return;
    }
    mayfail::add_reclaimer(drop_oldest_half_noting_the_thread).unwrap();
    let before = stats();
    // 36 MiB of responses under a 64 MiB limit whose soft mark is 50 %.
    for i in 0..(36 * MIB / (16 << 10)) {
        CACHE.lock().unwrap().push_back(vec![i as u8; 16 << 10]);
    }
    assert!(
        wait_for(|| stats().soft_reclaims > before.soft_reclaims),
        "no reclaim above the soft mark: {:?}",
        stats()
    );
    let s = stats().since(&before);
    assert_eq!((s.limit_hits, s.failed), (0, 0), "{s:?}");
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() } as u64;
    let on = RECLAIMED_ON.load(SeqCst);
    assert!(
        on != 0 && on != me,
        "the reclaimer ran on the allocating thread"
    );
    println!("SOFT-OK {s:?}");
}

#[test]
fn above_the_soft_mark_the_reclaimers_run_in_the_background_before_anything_fails() {
    if is_child() {
        return;
    }
    let run = run_child_with(
        "child_soft_mark",
        &[
            ("MAYFAIL_LIMIT", "64M"),
            ("MAYFAIL_LIMIT_SOFT", "50%"),
            ("MAYFAIL_RETRIES", "0"),
            ("MAYFAIL_PRESSURE", "off"),
        ],
    );
    run.assert_success();
    assert!(run.stdout.contains("SOFT-OK"), "{}", run.stdout);
    // Off: no background reclaim.
    let run = run_child_with(
        "child_soft_mark",
        &[
            ("MAYFAIL_LIMIT", "64M"),
            ("MAYFAIL_LIMIT_SOFT", "0%"),
            ("MAYFAIL_PRESSURE", "off"),
        ],
    );
    assert_ne!(run.code, Some(0), "{}", run.stdout);
    assert!(
        run.stderr.contains("no reclaim above the soft mark"),
        "{}",
        run.stderr
    );
}

fn pressure_text(total_us: u64) -> String {
    format!(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total={total_us}\n\
         full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
}

/// Writes a pressure file as the kernel shows one: whole at every read (a
/// temporary file renamed over it), so that a read never lands between the
/// truncation and the write and finds no total.
fn write_pressure(file: impl AsRef<std::path::Path>, total_us: u64) {
    let file = file.as_ref();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, pressure_text(total_us)).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[test]
fn child_pressure() {
    if !is_child() {
        return;
    }
    let file = std::env::var("MAYFAIL_PRESSURE_FILE").unwrap();
    mayfail::add_reclaimer(drop_oldest_half_noting_the_thread).unwrap();
    for i in 0..64 {
        CACHE.lock().unwrap().push_back(vec![i as u8; 16 << 10]);
    }
    // Stalls below the trigger's 150 ms within a window: nothing.
    std::thread::sleep(Duration::from_millis(700));
    write_pressure(&file, 1_000 + 100_000);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(stats().pressure_reclaims, 0, "{:?}", stats());
    // 400 ms stalled: one pass.
    write_pressure(&file, 1_000 + 100_000 + 400_000);
    assert!(wait_for(|| stats().pressure_reclaims > 0), "{:?}", stats());
    assert!(CACHE.lock().unwrap().len() <= 32);
    println!("PRESSURE-OK");
}

#[test]
fn memory_pressure_runs_the_reclaimers_in_the_background() {
    if is_child() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mayfail-psi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("memory.pressure");
    write_pressure(&file, 1_000);
    let file = file.to_str().unwrap();
    let run = run_child_with(
        "child_pressure",
        &[
            ("MAYFAIL_PRESSURE_FILE", file),
            ("MAYFAIL_PRESSURE", "some 150000 500000"),
        ],
    );
    run.assert_success();
    assert!(run.stdout.contains("PRESSURE-OK"), "{}", run.stdout);
    // Off, the same stall does nothing.
    write_pressure(file, 1_000);
    let run = run_child_with(
        "child_pressure",
        &[("MAYFAIL_PRESSURE_FILE", file), ("MAYFAIL_PRESSURE", "off")],
    );
    assert_ne!(run.code, Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_kernel_pressure_trigger_is_set_where_the_kernel_takes_one() {
    if is_child() {
        return;
    }
    // Whether this kernel takes triggers on /proc/pressure/memory: then the
    // background reclaimer holds one open (its descriptor shows it).
    let takes = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/pressure/memory")
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"some 150000 1000000"))
        .is_ok();
    let run = run_child_with("child_holds_a_trigger", &[]);
    run.assert_success();
    assert_eq!(run.stdout.contains("TRIGGER-HELD"), takes, "{}", run.stdout);
    println!("kernel triggers: {takes}");
}

#[test]
fn child_holds_a_trigger() {
    if !is_child() {
        return;
    }
    mayfail::add_reclaimer(drop_oldest_half).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let held = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().contains("pressure/memory"))
        });
    if held {
        println!("TRIGGER-HELD");
    }
}

/// Blocks or unblocks SIGTERM in the calling thread.
fn mask_sigterm(how: libc::c_int) {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        assert_eq!(libc::pthread_sigmask(how, &set, std::ptr::null_mut()), 0);
    }
}

/// In a forked process (this thread alone): starts mayfail's background
/// threads with SIGTERM open, then blocks it, as a program that waits for
/// it in one thread does, and sends it to the process twice: left pending
/// while no thread of the program takes it, then taken by `sigwait`.
/// Returns the exit code.
fn sigterm_waiter() -> i32 {
    mayfail::add_reclaimer(drop_oldest_half).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    mask_sigterm(libc::SIG_BLOCK);
    // SAFETY: kill and getpid have no memory preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: the set is initialised before use; `pending` is writable.
    let pending = unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut pending);
        libc::sigismember(&pending, libc::SIGTERM) == 1
    };
    if !pending {
        return 3;
    }
    let waiter = std::thread::spawn(|| {
        // SAFETY: the set is initialised before use; `sig` is writable.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            let mut sig = 0;
            // The pending one, then the second.
            for _ in 0..2 {
                if libc::sigwait(&set, &mut sig) != 0 || sig != libc::SIGTERM {
                    return false;
                }
            }
            true
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: as above.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    if waiter.join().unwrap() { 0 } else { 4 }
}

#[test]
fn child_sigterm_waiter() {
    if !is_child() {
        return;
    }
    // SAFETY: the forked process runs `sigterm_waiter` on this thread
    // alone and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = sigterm_waiter();
        // SAFETY: ends the forked process without running the parent's
        // exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the program waiting for SIGTERM did not get it: {}",
        if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exit code {}", libc::WEXITSTATUS(status))
        }
    );
    println!("SIGNALS-OK");
}

#[test]
fn mayfail_s_background_threads_take_no_signal_meant_for_the_program() {
    if is_child() {
        return;
    }
    let run = run_child_with("child_sigterm_waiter", &[]);
    run.assert_success();
    assert!(run.stdout.contains("SIGNALS-OK"), "{}", run.stdout);
}

/// A reclaimer that uses 512 KiB of stack (a deep parse, a large buffer)
/// before it drops the oldest half of the cache.
#[inline(never)]
fn reclaim_on_a_deep_stack(wanted: usize) -> usize {
    let mut scratch = [0u8; 512 << 10];
    std::hint::black_box(&mut scratch);
    RECLAIMED_ON.store(u64::from(scratch[wanted % scratch.len()]) + 1, SeqCst);
    drop_oldest_half(wanted)
}

#[test]
fn child_deep_stack_reclaimer() {
    if !is_child() {
        return;
    }
    mayfail::add_reclaimer(reclaim_on_a_deep_stack).unwrap();
    let before = stats();
    for i in 0..(36 * MIB / (16 << 10)) {
        CACHE.lock().unwrap().push_back(vec![i as u8; 16 << 10]);
    }
    assert!(
        wait_for(|| stats().soft_reclaims > before.soft_reclaims && RECLAIMED_ON.load(SeqCst) != 0),
        "no reclaim above the soft mark: {:?}",
        stats()
    );
    println!("DEEP-STACK-OK");
}

#[test]
fn the_background_reclaimer_has_a_full_stack() {
    if is_child() {
        return;
    }
    let run = run_child_with(
        "child_deep_stack_reclaimer",
        &[
            ("MAYFAIL_LIMIT", "64M"),
            ("MAYFAIL_LIMIT_SOFT", "50%"),
            ("MAYFAIL_RETRIES", "0"),
            ("MAYFAIL_PRESSURE", "off"),
        ],
    );
    run.assert_success();
    assert!(run.stdout.contains("DEEP-STACK-OK"), "{}", run.stdout);
}

/// A reclaimer that finds nothing to free: the count stays above the soft
/// mark.
fn frees_nothing(_wanted: usize) -> usize {
    0
}

/// In a forked process: its count (the parent's) is above the soft mark;
/// its next `add_reclaimer` starts a background reclaimer of its own, which
/// its allocations wake. Returns the exit code.
fn forked_soft_mark() -> i32 {
    let before = stats().soft_reclaims;
    mayfail::add_reclaimer(frees_nothing).unwrap();
    for _ in 0..500 {
        // Past the thread's credit: each takes from the shared total.
        drop(std::hint::black_box(vec![1u8; MIB]));
        if stats().soft_reclaims > before {
            return 0;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    3
}

#[test]
fn child_forks_above_the_soft_mark() {
    if !is_child() {
        return;
    }
    mayfail::add_reclaimer(frees_nothing).unwrap();
    // 36 MiB kept under a 64 MiB limit whose soft mark is 50 %: one pass,
    // which frees nothing; the count stays above the mark.
    for i in 0..(36 * MIB / (16 << 10)) {
        CACHE.lock().unwrap().push_back(vec![i as u8; 16 << 10]);
    }
    assert!(wait_for(|| stats().soft_reclaims > 0), "{:?}", stats());
    std::thread::sleep(Duration::from_millis(200));
    let passes = stats().soft_reclaims;
    // SAFETY: the forked process runs `forked_soft_mark` on this thread
    // alone and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = forked_soft_mark();
        // SAFETY: ends the forked process without running the parent's
        // exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is writable.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    std::thread::sleep(Duration::from_millis(200));
    let woken = stats().soft_reclaims - passes;
    // Room for a failure's backtrace.
    CACHE.lock().unwrap().clear();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child got no background reclaim of its own (status {status:#x}); \
         the parent's thread ran {woken} passes meanwhile"
    );
    assert_eq!(
        woken, 0,
        "the forked child's allocations woke the parent's reclaimer"
    );
    println!("FORK-OK");
}

#[test]
fn a_forked_child_wakes_a_background_reclaimer_of_its_own_not_its_parent_s() {
    if is_child() {
        return;
    }
    let run = run_child_with(
        "child_forks_above_the_soft_mark",
        &[
            ("MAYFAIL_LIMIT", "64M"),
            ("MAYFAIL_LIMIT_SOFT", "50%"),
            ("MAYFAIL_PRESSURE", "off"),
        ],
    );
    run.assert_success();
    assert!(run.stdout.contains("FORK-OK"), "{}", run.stdout);
}
