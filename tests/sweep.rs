//! The sweep: one fixture per outcome, std's collections swept and asserted
//! with what they really do, several sweeps per test and tests sweeping in
//! parallel (libtest runs these tests on parallel threads by default).

use std::alloc::{Layout, System};
use std::collections::TryReserveError;
use std::time::Duration;

use mayfail::{MayFail, Outcome, Sweep, SweepReport, sweep};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

fn quick() -> Sweep {
    Sweep::new().timeout(Duration::from_secs(5))
}

/// The one site of a report whose worst outcome is `outcome`.
fn site_with(report: &SweepReport, outcome: Outcome) -> &mayfail::Site {
    report
        .sites()
        .iter()
        .find(|s| s.worst == outcome)
        .unwrap_or_else(|| panic!("no {outcome} site in\n{report}"))
}

// ---------------------------------------------------------------------------
// Fixtures.

/// Fallible all the way: every failure becomes an `Err`.
#[inline(never)]
fn build_index(words: &[&str]) -> Result<Vec<String>, TryReserveError> {
    let mut index = Vec::new();
    index.try_reserve(words.len())?;
    for w in words {
        let mut s = String::new();
        s.try_reserve(w.len())?;
        s.push_str(w);
        index.push(s);
    }
    Ok(index)
}

/// `Vec::push` cannot report a failure: std aborts.
#[inline(never)]
fn collect_ids(n: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(i);
    }
    ids
}

/// Writes through the pointer without checking it for null.
#[inline(never)]
fn unchecked_header() -> usize {
    let layout = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: deliberately not: the null check is missing, as in the bugs
    // the sweep is there to find. `layout` is freed with the same layout.
    unsafe {
        let p = std::alloc::alloc(layout);
        std::ptr::write_volatile(p.add(16), 0xab);
        std::alloc::dealloc(p, layout);
    }
    64
}

/// Turns the `Err` into a panic.
#[inline(never)]
fn reserve_or_panic() -> usize {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve(256).unwrap();
    v.capacity()
}

/// Forgets to free the first buffer when the second allocation fails.
#[inline(never)]
fn pair_of_buffers() -> Result<(), TryReserveError> {
    let mut first: Vec<u8> = Vec::new();
    first.try_reserve(512)?;
    let mut second: Vec<u8> = Vec::new();
    if let Err(e) = second.try_reserve(512) {
        std::mem::forget(first);
        return Err(e);
    }
    Ok(())
}

/// A journal record that must not fail, written after an optional scratch
/// buffer (the function degrades without it).
#[inline(never)]
fn commit_record() -> usize {
    let mut scratch: Vec<u8> = Vec::new();
    let with_scratch = scratch.try_reserve(128).is_ok();
    let journal = mayfail::nofail(|| Box::new([0u8; 64]));
    journal.len() + usize::from(with_scratch)
}

// ---------------------------------------------------------------------------
// One test per outcome.

#[test]
fn fallible_code_is_handled_at_every_point() {
    let report = quick().run(|| build_index(&["alpha", "beta", "gamma"]));
    report.assert_handled();
    assert_eq!(
        report.allocations(),
        4,
        "the index and three strings\n{report}"
    );
    assert_eq!(report.points().len(), 4);
    assert!(
        report
            .sites()
            .iter()
            .all(|s| s.site.contains("sweep::build_index")),
        "{report}"
    );
}

#[test]
fn vec_push_aborts_and_the_report_names_the_function() {
    let report = quick().run(|| collect_ids(100));
    assert!(!report.is_handled());
    assert_eq!(report.count(Outcome::Handled), 0, "{report}");
    assert_eq!(
        report.count(Outcome::Aborted),
        report.points().len(),
        "{report}"
    );
    let site = site_with(&report, Outcome::Aborted);
    assert!(
        site.site.starts_with("sweep::collect_ids (tests/sweep.rs:"),
        "{report}"
    );
    assert!(
        site.replay
            .starts_with("MAYFAIL_SWEEP_POINT=1 cargo test --test sweep -- --exact ")
    );
    let text = report.to_string();
    assert!(text.contains("aborted"), "{text}");
    let panic = std::panic::catch_unwind(|| report.assert_handled()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("sweep::collect_ids"), "{message}");
}

#[test]
fn an_unchecked_null_crashes() {
    let report = quick().run(unchecked_header);
    let site = site_with(&report, Outcome::Crashed);
    assert!(site.site.starts_with("sweep::unchecked_header"), "{report}");
    assert!(site.points[0].detail.contains("SIGSEGV"), "{report}");
}

#[test]
fn unwrap_on_the_error_panics() {
    let report = quick().run(reserve_or_panic);
    let site = site_with(&report, Outcome::Panicked);
    assert!(site.site.starts_with("sweep::reserve_or_panic"), "{report}");
    assert!(
        site.points[0]
            .detail
            .contains("called `Result::unwrap()` on an `Err` value")
    );
}

#[test]
fn a_leak_on_the_error_path_is_found() {
    let report = quick().run(pair_of_buffers);
    assert_eq!(report.points().len(), 2, "{report}");
    assert_eq!(report.points()[0].outcome, Outcome::Handled, "{report}");
    assert_eq!(report.points()[1].outcome, Outcome::Leaked, "{report}");
    assert!(
        report.points()[1].detail.contains("512 bytes in 1 blocks"),
        "{report}"
    );
}

#[test]
fn a_persistent_failure_inside_nofail_hangs_and_is_killed() {
    let report = Sweep::new()
        .timeout(Duration::from_millis(500))
        .persistent(true)
        .run(commit_record);
    // Point 1: the scratch buffer fails, and memory is gone for good: the
    // nofail journal record retries for ever. (nofail allocations are not
    // counted, so there is no point 2.)
    assert_eq!(report.points().len(), 1, "{report}");
    assert_eq!(report.points()[0].outcome, Outcome::Hung, "{report}");
    assert!(
        report.points()[0].site.starts_with("sweep::commit_record"),
        "{report}"
    );
    // Only the first allocation failing: the journal record is served.
    let transient = quick().run(commit_record);
    assert_eq!(transient.points().len(), 1, "{transient}");
    transient.assert_handled();
}

// ---------------------------------------------------------------------------
// std's collections, asserted with what they really do (other crates:
// checks/tests/real_crates.rs).

#[test]
fn std_collections_try_reserve_is_handled() {
    let report = quick().run(|| {
        let mut map: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        map.try_reserve(50)?;
        let mut deque: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
        deque.try_reserve(1000)?;
        let mut s = String::new();
        s.try_reserve(10)?;
        Ok::<_, TryReserveError>((map.capacity(), deque.capacity(), s.capacity()))
    });
    report.assert_handled();
    assert_eq!(report.allocations(), 3, "{report}");
}

// ---------------------------------------------------------------------------
// Several sweeps in one test, and the replay.

#[test]
fn several_named_sweeps_in_one_test() {
    let fine = Sweep::new().name("index").run(|| build_index(&["a", "b"]));
    let bad = Sweep::new().name("ids").run(|| collect_ids(10));
    fine.assert_handled();
    assert_eq!(fine.allocations(), 3);
    assert!(!bad.is_handled());
    let replay = &site_with(&bad, Outcome::Aborted).replay;
    assert!(replay.starts_with("MAYFAIL_SWEEP_POINT=ids:1 "), "{replay}");
    assert!(bad.to_string().contains("mayfail sweep `ids`"), "{bad}");
}

#[test]
fn replay_runs_the_point_in_process_and_aborts_with_the_report() {
    if std::env::var_os("MAYFAIL_SWEEP_POINT").is_some() {
        sweep(|| collect_ids(10));
        unreachable!("point 1 of collect_ids aborts");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "replay_runs_the_point_in_process_and_aborts_with_the_report",
            "--exact",
            "--nocapture",
        ])
        .env("MAYFAIL_SWEEP_POINT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(
        stderr.contains("mayfail: the process is aborting after an injected allocation failure")
    );
    assert!(stderr.contains("by fail-nth"), "{stderr}");
    let frames = stderr
        .split("backtrace of the failing allocation")
        .nth(1)
        .unwrap_or("");
    assert!(
        frames
            .trim_start()
            .lines()
            .nth(1)
            .unwrap_or("")
            .contains("sweep::collect_ids"),
        "{stderr}"
    );
}

#[test]
fn an_operation_that_fails_without_injection_is_reported_as_such() {
    let report = quick().run(|| panic!("broken before any failure"));
    let why = report.baseline_failure().expect("a baseline failure");
    assert!(why.contains("panicked: broken before any failure"), "{why}");
    assert!(!report.is_handled());
}

#[test]
fn an_operation_without_allocations_has_nothing_to_sweep() {
    let report = sweep(|| 2 + 2);
    assert_eq!(report.allocations(), 0);
    assert!(report.points().is_empty());
    report.assert_handled();
}

/// Prints a report with several outcomes (the README shows it) and checks
/// each site's verdict.
#[test]
fn a_mixed_operation_report() {
    #[inline(never)]
    fn load_config(text: &str) -> Result<Vec<(String, String)>, TryReserveError> {
        let mut pairs = Vec::new();
        pairs.try_reserve(4)?;
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let mut key = String::new();
            key.try_reserve(k.len())?;
            key.push_str(k);
            // Bug: the value is copied with an infallible allocation.
            pairs.push((key, v.to_owned()));
        }
        Ok(pairs)
    }
    let report = quick().run(|| load_config("name=mayfail\nretries=3\nsmall=32K"));
    println!("{report}");
    assert_eq!(report.points().len(), 7, "{report}");
    assert_eq!(report.count(Outcome::Aborted), 3, "{report}");
    assert_eq!(report.count(Outcome::Handled), 4, "{report}");
    assert!(
        site_with(&report, Outcome::Aborted)
            .site
            .contains("load_config"),
        "{report}"
    );
}
