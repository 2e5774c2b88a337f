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
            .starts_with("MAYFAIL_SWEEP_POINT=1 cargo test -p mayfail --test sweep -- --exact ")
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
    assert!(!report.is_handled(), "nothing was tested\n{report}");
    let text = report.to_string();
    assert!(text.contains("no allocation to fail"), "{text}");
    assert!(!text.contains("per point"), "{text}");
    let panic = std::panic::catch_unwind(|| report.assert_handled()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("no allocation to fail"), "{message}");
    let allowed = Sweep::new().allow_no_allocation(true).run(|| 2 + 2);
    allowed.assert_handled();
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

// ---------------------------------------------------------------------------
// What the parent must survive, and what it must not believe.

/// Runs the test `name` of this binary again, alone, in a child process.
fn rerun(name: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("MAYFAIL_SWEEP_TEST_CHILD", "1")
        .env_remove("MAYFAIL_SWEEP_POINT")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn in_rerun() -> bool {
    std::env::var_os("MAYFAIL_SWEEP_TEST_CHILD").is_some()
}

/// Asserts that a rerun passed, showing its output otherwise.
fn assert_rerun_passed(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn an_operation_that_arms_fail_nth_itself_is_reported_not_a_panic() {
    let report = quick().run(|| {
        mayfail::fail_nth(1);
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve(8).map(|()| v.len())
    });
    mayfail::fail_nth(0);
    let why = report.baseline_failure().expect("a baseline failure");
    assert!(why.contains("arms fail_nth itself"), "{why}");
    assert!(!report.is_handled());
}

#[test]
fn a_sweep_inside_a_swept_operation_does_not_panic_the_parent() {
    let report = quick().jobs(1).run(|| {
        let inner = quick().jobs(1).run(|| build_index(&["a"]));
        inner.is_handled()
    });
    // The inner sweep puts the outer countdown aside: nothing of the
    // operation is left to fail, and nothing absurd is reported.
    assert!(report.points().len() <= 4, "{report}");
    assert!(report.allocations() <= 4, "{report}");
}

#[test]
fn a_leak_the_table_cannot_track_is_untracked_never_handled() {
    // More live blocks than the leak table holds (1.5 Mi), in a nofail
    // scope so that they are not points, then a leak on the error path.
    // Slow (about a second per run in a debug build): a generous timeout.
    let report = Sweep::new()
        .timeout(Duration::from_secs(120))
        .jobs(1)
        .run(|| {
            mayfail::nofail(|| {
                let blocks: Vec<Box<u8>> = (0..1_600_000).map(|_| Box::new(1u8)).collect();
                drop(blocks);
            });
            pair_of_buffers()
        });
    assert_eq!(report.points().len(), 2, "{report}");
    for p in report.points() {
        assert_eq!(p.outcome, Outcome::Untracked, "{report}");
        assert!(p.detail.contains("leaks unknown"), "{report}");
    }
    assert!(!report.is_handled());
    assert!(report.to_string().contains("2 untracked"), "{report}");
}

#[test]
fn an_ignored_sigchld_still_tells_an_abort_from_a_hang() {
    if !in_rerun() {
        assert_rerun_passed(&rerun(
            "an_ignored_sigchld_still_tells_an_abort_from_a_hang",
            &[],
        ));
        return;
    }
    // SAFETY: sets a standard disposition for a signal.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let started = std::time::Instant::now();
    let report = Sweep::new()
        .timeout(Duration::from_secs(3))
        .run(|| collect_ids(3));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "no point should wait for the timeout\n{report}"
    );
    assert!(!report.points().is_empty(), "{report}");
    assert_eq!(
        report.count(Outcome::Aborted),
        report.points().len(),
        "{report}"
    );
    // SAFETY: reads the disposition back without changing it.
    let now = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old);
        old.sa_sigaction
    };
    assert_eq!(now, libc::SIG_IGN, "the sweep puts SIGCHLD back");
}

/// Allocates in a process the operation forked.
#[inline(never)]
fn in_the_grandchild() -> bool {
    let mut v: Vec<u8> = Vec::new();
    v.try_reserve(32).is_ok()
}

/// Forks between its two allocations; the forked process allocates and
/// returns from the operation, as a fork without exec does.
#[inline(never)]
fn forks_midway() -> Result<usize, TryReserveError> {
    let mut first: Vec<u8> = Vec::new();
    first.try_reserve(16)?;
    // SAFETY: the forked process only allocates and returns; the parent
    // waits for it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        in_the_grandchild();
        return Ok(0);
    }
    // SAFETY: `pid` is the process just forked.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let mut second: Vec<u8> = Vec::new();
    second.try_reserve(16)?;
    Ok(first.capacity() + second.capacity())
}

#[test]
fn a_process_the_operation_forks_does_not_speak_for_the_point() {
    let report = quick().run(forks_midway);
    assert_eq!(report.points().len(), 2, "{report}");
    report.assert_handled();
    assert!(
        report
            .points()
            .iter()
            .all(|p| p.site.starts_with("sweep::forks_midway")),
        "{report}"
    );
}

#[test]
fn a_sweep_inside_nofail_says_so() {
    let report = mayfail::nofail(|| quick().run(|| build_index(&["a"])));
    let why = report.baseline_failure().expect("a refusal");
    assert!(why.contains("inside a nofail scope"), "{why}");
    assert!(!why.contains("global allocator"), "{why}");
}

static FROM_RECLAIMER: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn sweeping_reclaimer(_wanted: usize) -> usize {
    let report = quick().run(|| build_index(&["a"]));
    *FROM_RECLAIMER.lock().unwrap() = report.baseline_failure().map(str::to_owned);
    0
}

#[test]
fn a_sweep_inside_a_reclaimer_says_so() {
    if !in_rerun() {
        assert_rerun_passed(&rerun("a_sweep_inside_a_reclaimer_says_so", &[]));
        return;
    }
    mayfail::add_reclaimer(sweeping_reclaimer).unwrap();
    mayfail::configure_injection("probability=100,times=1,transient=Y").unwrap();
    let mut v: Vec<u8> = Vec::new();
    let grown = v.try_reserve(100);
    mayfail::disable_injection();
    assert!(grown.is_ok(), "the retry after the reclaimer succeeds");
    let why = FROM_RECLAIMER.lock().unwrap().clone();
    let why = why.expect("the reclaimer ran a sweep that refused");
    assert!(why.contains("inside a reclaimer"), "{why}");
}

#[test]
fn an_operation_that_exits_the_process_is_failed_not_crashed() {
    let report = quick().run(|| {
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve(64).is_err() {
            std::process::exit(3);
        }
        v.capacity()
    });
    assert_eq!(report.points().len(), 1, "{report}");
    let p = &report.points()[0];
    assert_eq!(p.outcome, Outcome::Failed, "{report}");
    assert!(
        p.detail.contains("exited the process with status 3"),
        "{report}"
    );
}

#[test]
fn a_countdown_armed_before_the_sweep_waits_until_after_it() {
    let options = quick(); // (reading the CPU count allocates)
    mayfail::fail_nth(2);
    let report = options.run(|| build_index(&["a"]));
    let pending = mayfail::fail_nth_pending();
    let mut first: Vec<u8> = Vec::new();
    let first_ok = first.try_reserve(1).is_ok();
    let mut second: Vec<u8> = Vec::new();
    let second_ok = second.try_reserve(1).is_ok();
    mayfail::fail_nth(0);
    assert_eq!(pending, 2);
    assert!(first_ok && !second_ok, "the caller's 2nd allocation fails");
    report.assert_handled();
    assert_eq!(report.allocations(), 2, "{report}");
}

/// A counter shared by every process of a sweep (an anonymous shared
/// mapping survives fork).
fn shared_counter() -> &'static std::sync::atomic::AtomicU64 {
    // SAFETY: a fresh anonymous shared mapping of one page, zeroed, aligned
    // for an AtomicU64; never unmapped.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        &*p.cast::<std::sync::atomic::AtomicU64>()
    }
}

#[test]
fn an_operation_that_allocates_differently_per_run_says_so() {
    let calls = shared_counter();
    // Calls 0 and 1 are the counting child's (warm-up, run), 2 and 3 point
    // 1's, 4 and 5 point 2's: from call 4 on the operation allocates once.
    let report = quick().jobs(1).run(|| {
        let k = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut a: Vec<u8> = Vec::new();
        a.try_reserve(8)?;
        if k < 4 {
            let mut b: Vec<u8> = Vec::new();
            b.try_reserve(8)?;
        }
        Ok::<_, TryReserveError>(())
    });
    assert_eq!(report.allocations_varied(), Some((2, 1)), "{report}");
    assert_eq!(report.untested(), &[2], "{report}");
    let text = report.to_string();
    assert!(
        text.contains("allocated 2 times in the counting run but 1 in point 2's run"),
        "{text}"
    );
    assert!(text.contains("points 2 made fewer allocations"), "{text}");
}

#[test]
fn rust_backtrace_does_not_reach_the_children() {
    if !in_rerun() {
        let out = rerun(
            "rust_backtrace_does_not_reach_the_children",
            &[("RUST_BACKTRACE", "1")],
        );
        assert_rerun_passed(&out);
        return;
    }
    let path = std::env::temp_dir().join(format!("mayfail-stderr-{}", std::process::id()));
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: opens a file for appending; every child inherits it.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND,
            0o600,
        )
    };
    assert!(fd >= 0);
    let report = quick().run(|| {
        // Inside the child: its stderr goes to the file.
        // SAFETY: duplicates an open descriptor onto stderr.
        unsafe { libc::dup2(fd, 2) };
        collect_ids(100)
    });
    let stderr = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(report.count(Outcome::Aborted) >= 2, "{report}");
    assert!(stderr.contains("memory allocation of"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

// ---------------------------------------------------------------------------
// Replay lines, through a real shell.

/// A fresh empty directory.
fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mayfail-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    dir
}

/// Runs `line` with `bash -c` in `dir`, with a `cargo` on PATH that records
/// the point and its arguments in `dir/argv`, then runs this test binary
/// with the test arguments (those after `--`).
fn run_replay_line(dir: &std::path::Path, line: &str) -> (Vec<String>, String) {
    use std::os::unix::fs::PermissionsExt;
    let stub = dir.join("bin/cargo");
    std::fs::write(
        &stub,
        "#!/bin/sh\n\
         printf '%s\\n' \"$MAYFAIL_SWEEP_POINT\" \"$@\" > \"$ARGV_FILE\"\n\
         while [ \"$1\" != -- ]; do shift; done; shift\n\
         exec \"$TEST_EXE\" \"$@\" --nocapture --test-threads=1\n",
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", line])
        .current_dir(dir)
        .env("PATH", path)
        .env("ARGV_FILE", dir.join("argv"))
        .env("TEST_EXE", std::env::current_exe().unwrap())
        .env("MAYFAIL_SWEEP_TEST_CHILD", "1")
        .env_remove("MAYFAIL_SWEEP_POINT")
        .output()
        .unwrap();
    let argv = std::fs::read_to_string(dir.join("argv"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    (argv, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn replay_lines_survive_the_shell() {
    const NAMES: [&str; 2] = ["x; touch F; echo", "a:b"];
    if std::env::var_os("MAYFAIL_SWEEP_POINT").is_some() {
        for name in NAMES {
            let report = quick().name(name).run(|| build_index(&["alpha"]));
            println!("{report}");
        }
        return;
    }
    for (i, name) in NAMES.iter().enumerate() {
        let report = quick().name(name).run(|| build_index(&["alpha"]));
        let site = report
            .sites()
            .iter()
            .find(|s| s.points[0].n == 2)
            .unwrap_or_else(|| panic!("no site for point 2\n{report}"));
        let dir = temp_dir(&format!("replay-{i}"));
        let (argv, stdout) = run_replay_line(&dir, &site.replay);
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        assert_eq!(entries, ["argv", "bin"], "{}", site.replay);
        assert_eq!(
            argv,
            [
                format!("{name}:2").as_str(),
                "test",
                "-p",
                "mayfail",
                "--test",
                "sweep",
                "--",
                "--exact",
                "replay_lines_survive_the_shell"
            ],
            "{}",
            site.replay
        );
        assert!(
            stdout.contains(&format!(
                "mayfail sweep `{name}`: replayed point 2 in-process"
            )),
            "{}\n{stdout}",
            site.replay
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_sweep_on_a_worker_thread_replays_through_the_command_line() {
    if !in_rerun() {
        let out = rerun(
            "a_sweep_on_a_worker_thread_replays_through_the_command_line",
            &[],
        );
        let stdout = assert_rerun_passed(&out);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("REPLAY\t").map(|(_, line)| line))
            .unwrap_or_else(|| panic!("no replay line in\n{stdout}"));
        assert!(!line.contains("--exact worker"), "{line}");
        let dir = temp_dir("worker");
        let (argv, stdout) = run_replay_line(&dir, line);
        assert!(argv.is_empty(), "cargo is not involved: {argv:?}");
        assert!(
            stdout.contains("mayfail sweep `w`: replayed point 2 in-process"),
            "{line}\n{stdout}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let report = std::thread::Builder::new()
        .name("worker".to_owned())
        .spawn(|| quick().name("w").run(|| build_index(&["alpha"])))
        .unwrap()
        .join()
        .unwrap();
    if std::env::var_os("MAYFAIL_SWEEP_POINT").is_some() {
        println!("{report}");
        return;
    }
    let site = report.sites().iter().find(|s| s.points[0].n == 2).unwrap();
    println!("REPLAY\t{}", site.replay);
}

// ---------------------------------------------------------------------------
// What the report blames.

/// The line of this file holding `marker` (a fixture's own comment).
fn line_of(marker: &str) -> usize {
    include_str!("sweep.rs")
        .lines()
        .position(|l| l.contains(marker) && !l.contains("line_of("))
        .expect("marker in this file")
        + 1
}

/// A handled `try_reserve`, whose error path then allocates infallibly.
#[inline(never)]
fn reserve_then_describe() -> Result<usize, String> {
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve(512).is_err() {
        // MARK: the error message
        return Err(String::from("reserve allocation failed"));
    }
    Ok(v.capacity())
}

#[test]
fn a_persistent_abort_is_blamed_on_the_allocation_that_reached_the_infallible_path() {
    let report = quick().persistent(true).run(reserve_then_describe);
    let point = &report.points()[0];
    assert_eq!(point.outcome, Outcome::Aborted, "{report}");
    let message = line_of("MARK: the error message") + 1;
    assert!(
        point.site.starts_with(&format!(
            "sweep::reserve_then_describe (tests/sweep.rs:{message})"
        )),
        "{report}"
    );
    let reserve = line_of("MARK: the error message") - 1;
    assert!(
        point.detail.contains(&format!(
            "failed first, at sweep::reserve_then_describe (tests/sweep.rs:{reserve})"
        )),
        "{report}"
    );
}

#[test]
fn std_impls_on_primitive_types_are_not_call_sites() {
    let report = quick().run(|| {
        let a = "abc".to_string(); // MARK: str to_string
        let b = 42u32.to_string(); // MARK: u32 to_string
        let c: Vec<u8> = vec![7u8; 16]; // MARK: from_elem
        let c = std::hint::black_box(c);
        a.len() + b.len() + c.len()
    });
    assert_eq!(report.sites().len(), 3, "{report}");
    for marker in [
        "MARK: str to_string",
        "MARK: u32 to_string",
        "MARK: from_elem",
    ] {
        let line = format!("(tests/sweep.rs:{})", line_of(marker));
        assert!(
            report
                .sites()
                .iter()
                .any(|s| s.site.starts_with("sweep::") && s.site.contains(&line)),
            "{line}\n{report}"
        );
    }
}

#[test]
fn a_replayed_point_that_aborts_replays_with_its_point() {
    if std::env::var_os("MAYFAIL_SWEEP_POINT").is_some() {
        Sweep::new().name("ids").run(|| collect_ids(10));
        unreachable!("point 1 of collect_ids aborts");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_replayed_point_that_aborts_replays_with_its_point",
            "--exact",
            "--nocapture",
        ])
        .env("MAYFAIL_SWEEP_POINT", "ids:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let replay = stderr
        .lines()
        .find(|l| l.starts_with("mayfail:   replay: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        replay.starts_with("mayfail:   replay: MAYFAIL_SWEEP_POINT=ids:1 "),
        "{replay}"
    );
    assert!(
        !replay.contains("sets up this injection itself"),
        "{replay}"
    );
}

#[test]
fn a_crash_report_names_the_thread_in_full() {
    if std::env::var_os("MAYFAIL_SWEEP_POINT").is_some() {
        std::thread::Builder::new()
            .name("a-thread-name-longer-than-fifteen-bytes".to_owned())
            .spawn(|| {
                sweep(|| collect_ids(10));
            })
            .unwrap()
            .join()
            .unwrap();
        unreachable!("point 1 of collect_ids aborts");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["a_crash_report_names_the_thread_in_full", "--exact"])
        .env("MAYFAIL_SWEEP_POINT", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("on thread 'a-thread-name-longer-than-fifteen-bytes' (tid"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// Output on the error path, under libtest's output capture.

/// A logger that prints each record with `eprintln!`, as a test's logger
/// does so that the harness captures it.
struct PrintingLogger;

impl log::Log for PrintingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        eprintln!("[{}] {}", record.level(), record.args());
    }

    fn flush(&self) {}
}

/// Reserves a buffer; on failure, says so in the way `how` names, with a
/// line long enough to grow any buffer it lands in, and returns the error.
#[inline(never)]
fn reserve_or_say(how: &str) -> Result<usize, TryReserveError> {
    let mut buffer: Vec<u8> = Vec::new();
    if let Err(e) = buffer.try_reserve(64) {
        let line = "could not reserve the buffer; carrying on without it, as a well-behaved \
                    caller does after a failed allocation";
        match how {
            "println" => println!("{line}: {e}"),
            "eprintln" => eprintln!("{line}: {e}"),
            "log" => log::warn!("{line}: {e}"),
            "write" => {
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{line}: {e}");
            }
            "println and leak" => {
                println!("{line}: {e}");
                std::mem::forget(vec![0u8; 100]);
            }
            _ => unreachable!("{how}"),
        }
        return Err(e);
    }
    Ok(buffer.capacity())
}

const SAYING: [&str; 4] = ["println", "eprintln", "log", "write"];

/// In a rerun under the harness's capture: each way of printing on the
/// error path, swept.
#[test]
fn printing_on_the_error_path_swept() {
    if !in_rerun() {
        return;
    }
    let _ = log::set_logger(&PrintingLogger);
    log::set_max_level(log::LevelFilter::Warn);
    for how in SAYING {
        // Twice: the first run's prints may start the buffers.
        for _ in 0..2 {
            let report = quick().name(how).run(|| reserve_or_say(how));
            assert_eq!(report.allocations(), 1, "{how}: {report}");
            assert!(report.is_handled(), "{how}: {report}");
        }
    }
    // A leak on the same path is still one.
    let how = "println and leak";
    let report = quick().name(how).run(|| reserve_or_say(how));
    assert_eq!(report.count(Outcome::Leaked), 1, "{report}");
    assert!(
        report.points()[0].detail.contains("100 bytes in 1 blocks"),
        "{report}"
    );
}

/// What the harness captures (libtest's buffer of a test's output, which
/// grows on every print) or std buffers (stdout's line writer) is neither
/// the operation's nor a leak of it: under the default capture (no
/// `--nocapture`) an error path that prints, logs or writes to stdout is
/// handled, as it is with `--nocapture`.
#[test]
fn output_on_the_error_path_is_no_leak_under_the_harness_capture() {
    if in_rerun() {
        return;
    }
    for capture in [true, false] {
        let mut args = vec![
            "printing_on_the_error_path_swept",
            "--exact",
            "--test-threads=1",
        ];
        if !capture {
            args.push("--nocapture");
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(&args)
            .env("MAYFAIL_SWEEP_TEST_CHILD", "1")
            .env_remove("MAYFAIL_SWEEP_POINT")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_rerun_passed(&out);
    }
}

// ---------------------------------------------------------------------------
// Replay lines that cargo runs: the package and the target holding the test.

/// The files of a workspace of two packages; `app` has a sweep that aborts
/// in each kind of target: its library, a binary of the same name, an
/// integration test with a dash in its name (through a helper of the
/// library), an example, a bench and doctests: two whose fences are on the
/// same line of two files, and one on a method.
const REPLAY_FIXTURE: [(&str, &str); 11] = [
    (
        "Cargo.toml",
        "[workspace]\nmembers = [\"app\", \"other\"]\nresolver = \"3\"\n",
    ),
    (
        "other/Cargo.toml",
        "[package]\nname = \"other\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
    ),
    ("other/src/lib.rs", "//! Nothing to test.\n"),
    (
        "app/Cargo.toml",
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [dependencies]\nmayfail = { path = \"MAYFAIL_DIR\" }\n",
    ),
    (
        "app/src/lib.rs",
        "//! A crate whose `collect` cannot report a failure.\n\
         //!\n\
         //! ```\n\
         //! mayfail::sweep(|| app::collect(10)).assert_handled();\n\
         //! ```\n\n\
         pub mod more;\n\n\
         #[global_allocator]\n\
         static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();\n\n\
         /// Sweeps `collect`, for a test elsewhere.\n\
         pub fn sweep_collect() {\n    mayfail::sweep(|| collect(10)).assert_handled();\n}\n\n\
         /// `Vec::push`: std aborts when it cannot allocate.\n\
         pub fn collect(n: u32) -> Vec<u32> {\n    let mut ids = Vec::new();\n    \
         for i in 0..n {\n        ids.push(i);\n    }\n    ids\n}\n\n\
         #[cfg(test)]\nmod tests {\n    #[test]\n    fn lib_sweep() {\n        \
         mayfail::sweep(|| super::collect(10)).assert_handled();\n    }\n}\n",
    ),
    (
        "app/src/main.rs",
        "use app::collect;\n\nfn main() {\n    println!(\"{}\", collect(3).len());\n}\n\n\
         #[cfg(test)]\nmod tests {\n    #[test]\n    fn bin_sweep() {\n        \
         mayfail::sweep(|| super::collect(10)).assert_handled();\n    }\n}\n",
    ),
    (
        "app/tests/sweep-it.rs",
        "#[test]\nfn it_sweep() {\n    app::sweep_collect();\n}\n",
    ),
    (
        "app/examples/ex.rs",
        "fn main() {}\n\n#[test]\nfn example_sweep() {\n    \
         mayfail::sweep(|| app::collect(10)).assert_handled();\n}\n",
    ),
    (
        "app/benches/speed.rs",
        "#[test]\nfn bench_sweep() {\n    mayfail::sweep(|| app::collect(10)).assert_handled();\n}\n",
    ),
    (
        "app/src/more.rs",
        "//! More of the same.\n\
         //!\n\
         //! ```\n\
         //! mayfail::sweep(|| app::collect(10)).assert_handled();\n\
         //! ```\n\n\
         /// A holder.\n\
         pub struct Holder;\n\n\
         impl Holder {\n    \
         /// Sweeps again.\n    \
         ///\n    \
         /// ```\n    \
         /// mayfail::sweep(|| app::collect(10)).assert_handled();\n    \
         /// ```\n    \
         pub fn again() {}\n\
         }\n",
    ),
    ("app/README.md", "A fixture.\n"),
];

/// Runs `cargo` with `args` (or `bash -c line`) in the replay fixture, its
/// target directory kept across runs.
fn in_replay_fixture(dir: &std::path::Path, command: &mut std::process::Command) -> String {
    let out = command
        .current_dir(dir)
        .env(
            "CARGO_TARGET_DIR",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-fixture-target"),
        )
        .env("CARGO_NET_OFFLINE", "true")
        .env("CARGO", env!("CARGO"))
        .env_remove("MAYFAIL_SWEEP_POINT")
        .env_remove("MAYFAIL_INJECT")
        .env_remove("MAYFAIL_SWEEP_TEST_CHILD")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Each failing sweep's replay line names its package and the target that
/// holds its test, so that, run with `bash -c` in the workspace, it runs
/// that test alone and it aborts at the same point again, with the crash
/// report.
#[test]
fn replay_lines_name_the_package_and_the_target_that_hold_the_test() {
    if in_rerun() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-fixture");
    let _ = std::fs::remove_dir_all(&dir);
    for (path, text) in REPLAY_FIXTURE {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            path,
            text.replace("MAYFAIL_DIR", env!("CARGO_MANIFEST_DIR")),
        )
        .unwrap();
    }
    let cargo = || {
        let mut command = std::process::Command::new(env!("CARGO"));
        command.args(["test", "--workspace", "--no-fail-fast"]);
        command
    };
    let mut output = in_replay_fixture(&dir, cargo().arg("--all-targets"));
    output += &in_replay_fixture(&dir, cargo().arg("--doc"));
    let lines: Vec<&str> = output
        .lines()
        .filter_map(|l| l.split_once("replay: MAYFAIL_SWEEP_POINT=").map(|(_, l)| l))
        .collect();
    let replay =
        |line: &str| in_replay_fixture(&dir, std::process::Command::new("bash").args(["-c", line]));
    let aborted = |replayed: &str| {
        replayed.contains("running 1 test")
            && replayed
                .contains("mayfail: the process is aborting after an injected allocation failure")
            && replayed.contains("app::collect")
    };
    for (target, test) in [
        ("--lib", "tests::lib_sweep"),
        ("--bin app", "tests::bin_sweep"),
        ("--test sweep-it", "it_sweep"),
        ("--example ex", "example_sweep"),
        ("--bench speed", "bench_sweep"),
    ] {
        let line = lines
            .iter()
            .find(|l| format!("{l} ").contains(&format!(" -p app {target} ")))
            .map(|l| format!("MAYFAIL_SWEEP_POINT={l}"))
            .unwrap_or_else(|| panic!("no replay line with {target}:\n{output}"));
        let replayed = replay(&line);
        assert!(
            aborted(&replayed) && replayed.contains(test),
            "{line}\n{replayed}"
        );
    }
    // Each doctest's line runs that doctest alone, though two have their
    // fences on the same line of two files.
    let mut doctests = Vec::new();
    for line in lines.iter().filter(|l| l.contains(" -p app --doc")) {
        let line = format!("MAYFAIL_SWEEP_POINT={line}");
        let replayed = replay(&line);
        assert!(aborted(&replayed), "{line}\n{replayed}");
        let ran = replayed
            .lines()
            .find_map(|l| l.strip_prefix("test app/")?.split_once(" ... "))
            .map(|(name, _)| name.to_owned());
        doctests.extend(ran);
    }
    doctests.sort();
    assert_eq!(
        doctests,
        [
            "src/lib.rs - (line 3)",
            "src/more.rs - more (line 3)",
            "src/more.rs - more::Holder::again (line 13)",
        ],
        "{output}"
    );
}

// ---------------------------------------------------------------------------
// An operation that takes its inherited descriptors for its own.

/// Makes every inherited descriptor but `own` (and stdin, stdout, stderr)
/// refer to `own` (`dup2`), or closes them, as a program that cleans up its
/// descriptors does; then writes one line to `own` and builds an index.
fn take_descriptors(own: i32, close: bool) -> Result<Vec<String>, TryReserveError> {
    for fd in 3..4096 {
        // SAFETY: F_GETFD only asks whether the number is open.
        if fd == own || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            continue;
        }
        // SAFETY: the child's own descriptors, taken on purpose.
        unsafe {
            if close {
                libc::close(fd);
            } else {
                libc::dup2(own, fd);
            }
        }
    }
    // SAFETY: `own` is open; the buffer is valid.
    unsafe { libc::write(own, b"own\n".as_ptr().cast(), 4) };
    build_index(&["alpha", "beta", "gamma"])
}

/// A sweep's child talks to its parent through a pipe: an operation that
/// `dup2`s its own file over its inherited descriptors gets only its own
/// lines in its file, one that closes them all still lets the child report,
/// and the report is the same as without either.
#[test]
fn an_operation_that_takes_its_inherited_descriptors_keeps_its_file_and_the_report() {
    for close in [false, true] {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("own-descriptors-{close}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let own = std::os::fd::AsRawFd::as_raw_fd(&file);
        let report = quick().run(|| take_descriptors(own, close));
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(
            !written.is_empty() && written.lines().all(|l| l == "own"),
            "close {close}: {written:?}"
        );
        report.assert_handled();
        assert_eq!(report.allocations(), 4, "close {close}\n{report}");
        assert_eq!(report.points().len(), 4, "close {close}\n{report}");
        drop(file);
        let _ = std::fs::remove_file(&path);
    }
}
