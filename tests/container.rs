//! The heap limit where production runs: in a real memory cgroup, where a
//! small `malloc` never returns null and the kernel's OOM killer ends a
//! process that takes more than the cgroup allows. The service of the
//! `cache_service` example (1 GiB of 16 KiB responses through a 256 MiB
//! cgroup, a reclaimer that drops the oldest half of its cache) is killed
//! under `System` and under `MayFail` without a limit, and serves every
//! request under `MayFail` with `MAYFAIL_LIMIT=cgroup`; outside any cgroup,
//! with a limit in bytes. Needs root to make the cgroup: elsewhere the
//! cgroup test prints "skipped: no memory cgroup" and passes.

mod common;

#[allow(dead_code)]
#[path = "../examples/cache_service/service.rs"]
mod service;

use std::alloc::System;

use common::{ChildRun, MemoryCgroup, is_child, run_child_in};
use mayfail::MayFail;
use service::{Heap, report, serve};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

const REQUESTS: u64 = 65536;
const CGROUP_LIMIT: u64 = 256 << 20;

#[test]
fn child_service() {
    if !is_child() {
        return;
    }
    let heap = match std::env::var("MAYFAIL_TEST_HEAP").as_deref() {
        Ok("system") => Heap::System,
        _ => Heap::Global,
    };
    let served = serve(REQUESTS, heap);
    println!("FIGURES {}", report(served));
}

/// The service's figures, by name.
fn figure(run: &ChildRun, name: &str) -> u64 {
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.split_once("FIGURES ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no figures: {run:?}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn service(heap: &str, limit: Option<&str>, cgroup: Option<&MemoryCgroup>) -> ChildRun {
    let env = [("MAYFAIL_TEST_HEAP", Some(heap)), ("MAYFAIL_LIMIT", limit)];
    run_child_in("child_service", &env, cgroup)
}

/// How a run ended, as a shell shows it (137 for SIGKILL).
fn exit_status(run: &ChildRun) -> i32 {
    run.code.unwrap_or_else(|| 128 + run.signal.unwrap_or(0))
}

fn served_so_far(run: &ChildRun) -> u64 {
    run.stdout
        .lines()
        .filter_map(|l| {
            l.rsplit_once("served ")
                .and_then(|(_, n)| n.trim().parse().ok())
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn in_a_memory_cgroup_system_is_oom_killed_and_mayfail_serves_every_request() {
    if is_child() {
        return;
    }
    let cgroup = match MemoryCgroup::create("mayfail-service", Some(CGROUP_LIMIT), None) {
        Ok(cgroup) => cgroup,
        Err(why) => {
            println!("skipped: no memory cgroup ({why})");
            return;
        }
    };
    // System: every malloc succeeds; the OOM killer ends the process.
    let kills = cgroup.oom_kills();
    let system = service("system", None, Some(&cgroup));
    assert_eq!(exit_status(&system), 137, "{system:?}");
    assert!(cgroup.oom_kills() > kills, "no OOM kill recorded");
    println!(
        "System: exit {}, served about {} of {REQUESTS}",
        exit_status(&system),
        served_so_far(&system)
    );
    // MayFail without a limit: the same, the reclaimer never runs.
    let unlimited = service("global", None, Some(&cgroup));
    assert_eq!(exit_status(&unlimited), 137, "{unlimited:?}");
    println!(
        "MayFail without a limit: exit {}, served about {} of {REQUESTS}",
        exit_status(&unlimited),
        served_so_far(&unlimited)
    );
    // MayFail with the cgroup's limit: every request served.
    let kills = cgroup.oom_kills();
    let limited = service("global", Some("cgroup"), Some(&cgroup));
    limited.assert_success();
    assert_eq!(cgroup.oom_kills(), kills, "{limited:?}");
    assert_eq!(figure(&limited, "served"), REQUESTS);
    assert_eq!(figure(&limited, "failed"), 0);
    let limit = figure(&limited, "limit");
    assert!(limit < CGROUP_LIMIT && limit > CGROUP_LIMIT / 2, "{limit}");
    // The reclaimer ran before an allocation failed: in the background
    // above the soft mark, or on a limit hit.
    assert!(figure(&limited, "limit_hits") + figure(&limited, "soft_reclaims") > 0);
    assert!(figure(&limited, "reclaim_passes") > 0);
    assert!(figure(&limited, "reclaimer_runs") > 0);
    assert!(figure(&limited, "heap_peak") <= limit);
    assert!(figure(&limited, "peak_rss") <= CGROUP_LIMIT);
    println!(
        "MayFail, MAYFAIL_LIMIT=cgroup: exit 0, {}",
        limited
            .stdout
            .lines()
            .find(|l| l.contains("FIGURES"))
            .unwrap()
    );
}

#[test]
fn outside_any_cgroup_a_limit_in_bytes_serves_every_request() {
    if is_child() {
        return;
    }
    let run = service("global", Some("256M"), None);
    run.assert_success();
    assert_eq!(figure(&run, "served"), REQUESTS);
    assert_eq!(figure(&run, "limit"), 256 << 20);
    assert!(figure(&run, "reclaim_passes") > 0);
    assert!(figure(&run, "heap_peak") <= 256 << 20);
    // What the process really took from the machine, not only the count.
    assert!(figure(&run, "peak_rss") <= 320 << 20, "{run:?}");
    println!(
        "{}",
        run.stdout.lines().find(|l| l.contains("FIGURES")).unwrap()
    );
}
