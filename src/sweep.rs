//! The systematic sweep: fail an operation's 1st, 2nd, 3rd... allocation,
//! each run in a child process, and say what happened at each call site.
//!
//! The parent (any thread, a test's for instance) counts the operation's
//! allocations in a first child, then forks one child per allocation point,
//! `jobs` at a time. A child runs the operation once to warm caches up, arms
//! its own thread's fail-nth countdown, tracks the blocks the operation
//! allocates, runs it again and reports over a pipe: where the injected
//! failure hit (the call site, resolved in the child when the failure
//! happens, so it survives an abort) and how the operation ended. The parent
//! reads the exit status: an abort is an infallible path, a fault a likely
//! unchecked null, a run past the timeout is killed as hung.
//!
//! Forking keeps every run isolated (an abort kills a child, not the test)
//! and cheap (no exec, no test-harness start-up; the symbol cache the parent
//! warmed is inherited). The price of `fork` in a multi-threaded process: a
//! lock another thread held at that moment stays held in the child, and a run
//! that blocks on it is reported as hung. Nothing in the sweep itself runs in
//! the allocator except [`on_injected`], which writes one line to the pipe.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::sys;
use crate::text::{ShellWord, StackBuf};
use crate::{configure, crash, inject, record, symbols, track};

/// In a sweep's child: the pipe to the parent (`-1` elsewhere).
static CHILD_FD: AtomicI32 = AtomicI32::new(-1);

/// How many user frames name a call site.
const SITE_FRAMES: usize = 2;

/// How one allocation point ended, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Killed by `SIGSEGV`, `SIGBUS` or another fault (or it exited on its
    /// own): likely a null used without a check, a memory-safety bug.
    Crashed,
    /// The process aborted: the failure reached an infallible allocation
    /// (`handle_alloc_error`).
    Aborted,
    /// The run exceeded the timeout and was killed.
    Hung,
    /// The operation panicked (an `unwrap` on the error, an assertion).
    Panicked,
    /// The operation returned, but blocks it allocated stayed allocated.
    Leaked,
    /// The operation returned normally, nothing leaked.
    Handled,
}

impl Outcome {
    /// Every outcome, worst first.
    pub const ALL: [Outcome; 6] = [
        Outcome::Crashed,
        Outcome::Aborted,
        Outcome::Hung,
        Outcome::Panicked,
        Outcome::Leaked,
        Outcome::Handled,
    ];

    /// The outcome's name, as the report prints it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Crashed => "crashed",
            Outcome::Aborted => "aborted",
            Outcome::Hung => "hung",
            Outcome::Panicked => "panicked",
            Outcome::Leaked => "leaked",
            Outcome::Handled => "handled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One allocation point of the sweep: the operation run with its `n`-th
/// allocation failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// Which allocation of the operation failed (1-based).
    pub n: u64,
    /// How the run ended.
    pub outcome: Outcome,
    /// The call site of the failed allocation: its first frames outside
    /// std, alloc and mayfail.
    pub site: String,
    /// What failed (`alloc of 64 bytes (align 8)`), and for a panic its
    /// message, for a leak the bytes left, for a crash the signal.
    pub detail: String,
}

/// The points that failed at one call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The call site, as in [`Point::site`].
    pub site: String,
    /// The worst outcome among its points.
    pub worst: Outcome,
    /// The points, in order.
    pub points: Vec<Point>,
    /// A command that reproduces the worst point alone, in-process (so that
    /// an abort shows mayfail's report with the full backtrace).
    pub replay: String,
}

impl Site {
    /// How many of its points ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.points.iter().filter(|p| p.outcome == outcome).count()
    }
}

/// The result of a sweep: see [`Sweep::run`].
#[derive(Clone, Debug)]
pub struct SweepReport {
    name: Option<String>,
    allocations: u64,
    points: Vec<Point>,
    sites: Vec<Site>,
    baseline: Option<String>,
    elapsed: Duration,
    replayed: Option<u64>,
}

impl SweepReport {
    /// Allocations the operation made when nothing failed (its last run's
    /// count if it changed during the sweep).
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// Every point, in order.
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The points grouped by call site, worst first.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// How many points ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.points.iter().filter(|p| p.outcome == outcome).count()
    }

    /// Why the sweep could not run, if the operation failed without any
    /// injected failure (or could not be run in a child).
    pub fn baseline_failure(&self) -> Option<&str> {
        self.baseline.as_deref()
    }

    /// How long the sweep took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Whether every point was handled and the operation ran cleanly.
    pub fn is_handled(&self) -> bool {
        self.baseline.is_none() && self.points.iter().all(|p| p.outcome == Outcome::Handled)
    }

    /// Panics with the report's table if any point was not handled.
    #[track_caller]
    pub fn assert_handled(&self) {
        if !self.is_handled() {
            panic!("not every allocation failure was handled:\n{self}");
        }
    }
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .name
            .as_deref()
            .map(|n| format!(" `{n}`"))
            .unwrap_or_default();
        if let Some(n) = self.replayed {
            return writeln!(
                f,
                "mayfail sweep{name}: replayed point {n} in-process: handled"
            );
        }
        if let Some(why) = &self.baseline {
            return writeln!(f, "mayfail sweep{name}: could not sweep: {why}");
        }
        let points = self.points.len().max(1) as f64;
        writeln!(
            f,
            "mayfail sweep{name}: {} allocations failed one at a time, {} call sites, {:.2} s \
             ({:.1} ms per point)",
            self.points.len(),
            self.sites.len(),
            self.elapsed.as_secs_f64(),
            self.elapsed.as_secs_f64() * 1000.0 / points,
        )?;
        let counts: Vec<String> = Outcome::ALL
            .iter()
            .map(|&o| (o, self.count(o)))
            .filter(|&(_, c)| c > 0)
            .map(|(o, c)| format!("{c} {o}"))
            .collect();
        writeln!(f, "  outcomes: {}", counts.join(", "))?;
        writeln!(
            f,
            "  {:<9} {:>6}  {:<14} call site",
            "worst", "points", "which"
        )?;
        for site in &self.sites {
            let which = compress(site.points.iter().map(|p| p.n));
            let which = if which.len() > 14 {
                format!("{}...", &which[..11])
            } else {
                which
            };
            writeln!(
                f,
                "  {:<9} {:>6}  {:<14} {}",
                site.worst.name(),
                site.points.len(),
                which,
                site.site
            )?;
            if site.worst != Outcome::Handled {
                let worst = site.points.iter().find(|p| p.outcome == site.worst);
                if let Some(p) = worst {
                    writeln!(f, "  {:<9} {:>6}  {:<14}   {}", "", "", "", p.detail)?;
                }
                writeln!(
                    f,
                    "  {:<9} {:>6}  {:<14}   replay: {}",
                    "", "", "", site.replay
                )?;
            }
        }
        Ok(())
    }
}

/// `1-3,7,9-10`
fn compress(ns: impl Iterator<Item = u64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for n in ns {
        run = match run {
            Some((a, b)) if n == b + 1 => Some((a, n)),
            Some((a, b)) => {
                out.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((n, n))
            }
            None => Some((n, n)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    out.join(",")
}

/// A sweep's options. [`sweep`] is `Sweep::new().run(f)`.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// use std::time::Duration;
///
/// fn parse_header(input: &[u8]) -> Result<Vec<u8>, std::collections::TryReserveError> {
///     let mut out = Vec::new();
///     out.try_reserve(input.len())?;
///     out.extend_from_slice(input);
///     Ok(out)
/// }
///
/// let report = mayfail::Sweep::new()
///     .timeout(Duration::from_secs(5))
///     .run(|| parse_header(b"GET / HTTP/1.1"));
/// report.assert_handled();
/// ```
#[derive(Clone, Debug)]
pub struct Sweep {
    timeout: Duration,
    jobs: usize,
    persistent: bool,
    warm_up: bool,
    name: Option<String>,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep::new()
    }
}

/// Runs [`Sweep::run`] with the default options.
pub fn sweep<R>(f: impl Fn() -> R) -> SweepReport {
    Sweep::new().run(f)
}

impl Sweep {
    /// Default options: 10 s per run, as many children at once as CPUs,
    /// transient (only the n-th allocation fails), warm-up on.
    pub fn new() -> Sweep {
        Sweep {
            timeout: Duration::from_secs(10),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            persistent: false,
            warm_up: true,
            name: None,
        }
    }

    /// How long one run may take before it is killed and reported as hung.
    pub fn timeout(mut self, timeout: Duration) -> Sweep {
        self.timeout = timeout;
        self
    }

    /// How many children run at once (at least 1).
    pub fn jobs(mut self, jobs: usize) -> Sweep {
        self.jobs = jobs.max(1);
        self
    }

    /// SQLite's persistent mode: the n-th and every later allocation fail,
    /// as if memory ran out for good at that point. Every attempt fails, so
    /// an allocation in a `nofail` scope retries for ever (and is reported
    /// as hung). Default: only the n-th fails.
    pub fn persistent(mut self, persistent: bool) -> Sweep {
        self.persistent = persistent;
        self
    }

    /// Whether each child runs the operation once, without failures, before
    /// the measured run (default: yes). The warm-up fills lazy statics and
    /// caches, so that what they keep is not reported as leaked and the
    /// allocation numbering is that of a warm operation. An operation that
    /// keeps memory on purpose on every call (a growing cache) is reported
    /// as leaked: sweep a fresh value each time, or clear the cache in `f`.
    pub fn warm_up(mut self, warm_up: bool) -> Sweep {
        self.warm_up = warm_up;
        self
    }

    /// Names the sweep, for its report and its replay lines
    /// (`MAYFAIL_SWEEP_POINT=name:n`), when one test runs several sweeps.
    pub fn name(mut self, name: &str) -> Sweep {
        self.name = Some(name.to_owned());
        self
    }

    /// Sweeps `f`: fails its 1st, 2nd, 3rd... allocation (on the thread that
    /// runs it), each in a child process, until a run makes fewer
    /// allocations than the point to fail. Requires `MayFail` as the global
    /// allocator.
    ///
    /// With `MAYFAIL_SWEEP_POINT=n` (or `name:n` for a named sweep) in the
    /// environment, runs point `n` alone, in this process: the replay of a
    /// report line.
    pub fn run<R>(&self, f: impl Fn() -> R) -> SweepReport {
        let start = Instant::now();
        if let Some(n) = self.replay_point() {
            return self.replay(n, &f, start);
        }
        warm_symbols();
        let mut report = SweepReport {
            name: self.name.clone(),
            allocations: 0,
            points: Vec::new(),
            sites: Vec::new(),
            baseline: None,
            elapsed: Duration::ZERO,
            replayed: None,
        };
        if !mayfail_is_global() {
            report.baseline = Some(
                "MayFail is not this program's global allocator: declare \
                 `#[global_allocator] static GLOBAL: mayfail::MayFail<std::alloc::System> = \
                 mayfail::MayFail::system();` in the test or binary crate"
                    .to_owned(),
            );
            report.elapsed = start.elapsed();
            return report;
        }
        let baseline = self.run_children(&f, &[0]).pop();
        match baseline {
            Some(Run {
                ended: Ended::Returned { count, .. },
                ..
            }) => report.allocations = count,
            Some(run) => {
                report.baseline = Some(format!(
                    "the operation fails without any injected failure: {}",
                    run.describe()
                ));
            }
            None => report.baseline = Some("could not fork a child process".to_owned()),
        }
        if report.baseline.is_none() {
            let mut names = BTreeMap::new();
            let mut next = 1;
            let mut last = report.allocations;
            while next <= last {
                let batch: Vec<u64> = (next..=last).collect();
                let runs = self.run_children(&f, &batch);
                next = last + 1;
                let mut reached_end = false;
                for run in runs {
                    if !run.fired {
                        reached_end = true;
                        continue;
                    }
                    if run.n == last && !reached_end {
                        // The operation allocated more than counted: go on.
                        last += 1;
                    }
                    report.points.push(run.into_point(&mut names));
                }
                if reached_end {
                    break;
                }
            }
            report.points.sort_by_key(|p| p.n);
            report.allocations = report.allocations.max(report.points.len() as u64);
            report.sites = self.group(&report.points);
        }
        report.elapsed = start.elapsed();
        report
    }

    fn replay_point(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let value = std::env::var_os("MAYFAIL_SWEEP_POINT")?;
        let bytes = value.as_bytes();
        let (label, number) = match bytes.iter().position(|&b| b == b':') {
            Some(colon) => (Some(&bytes[..colon]), &bytes[colon + 1..]),
            None => (None, bytes),
        };
        // A point meant for another sweep of the same test is not ours.
        let ours = match (&self.name, label) {
            (Some(name), Some(label)) => name.as_bytes() == label,
            (None, None) => true,
            _ => false,
        };
        if !ours {
            return None;
        }
        match crate::text::parse_u64(number.trim_ascii()).filter(|&n| n >= 1) {
            Some(n) => Some(n),
            None => {
                let mut line = String::new();
                let _ = write!(
                    line,
                    "mayfail: ignoring MAYFAIL_SWEEP_POINT=\"{}\"",
                    crate::text::Shown(bytes)
                );
                if bytes.len() > crate::text::Shown::MAX {
                    let _ = write!(line, " ({} bytes)", bytes.len());
                }
                line.push_str(": accepted N or name:N, N a whole number >= 1; sweeping as usual\n");
                crate::sys::write_stderr(line.as_bytes());
                None
            }
        }
    }

    fn replay<R>(&self, n: u64, f: &impl Fn() -> R, start: Instant) -> SweepReport {
        if self.warm_up {
            drop(f());
        }
        configure::set_persistent(self.persistent);
        configure::fail_nth(n);
        drop(f());
        configure::fail_nth(0);
        configure::set_persistent(false);
        SweepReport {
            name: self.name.clone(),
            allocations: 0,
            points: Vec::new(),
            sites: Vec::new(),
            baseline: None,
            elapsed: start.elapsed(),
            replayed: Some(n),
        }
    }

    fn group(&self, points: &[Point]) -> Vec<Site> {
        let mut by_site: BTreeMap<&str, Vec<Point>> = BTreeMap::new();
        for p in points {
            by_site.entry(p.site.as_str()).or_default().push(p.clone());
        }
        let mut sites: Vec<Site> = by_site
            .into_iter()
            .map(|(site, points)| {
                let worst = points
                    .iter()
                    .map(|p| p.outcome)
                    .min()
                    .unwrap_or(Outcome::Handled);
                let n = points
                    .iter()
                    .find(|p| p.outcome == worst)
                    .map_or(0, |p| p.n);
                Site {
                    site: site.to_owned(),
                    worst,
                    replay: self.replay_line(n),
                    points,
                }
            })
            .collect();
        sites.sort_by(|a, b| (a.worst, a.points[0].n).cmp(&(b.worst, b.points[0].n)));
        sites
    }

    /// `MAYFAIL_SWEEP_POINT=n cargo test --test file -- --exact name`, or the
    /// command line outside a test.
    fn replay_line(&self, n: u64) -> String {
        let point = match &self.name {
            Some(name) => format!("{name}:{n}"),
            None => n.to_string(),
        };
        let thread = std::thread::current();
        let test = thread.name().filter(|&name| name != "main");
        let exe = std::env::current_exe().ok();
        let stem = exe
            .as_deref()
            .and_then(|p| p.file_stem())
            .and_then(|s| s.to_str())
            .map(|s| s.rsplit_once('-').map_or(s, |(stem, _)| stem).to_owned());
        match (test, stem) {
            (Some(test), Some(stem)) => {
                let package = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
                let target = if stem == package.replace('-', "_") {
                    "--lib".to_owned()
                } else {
                    format!("--test {stem}")
                };
                format!(
                    "MAYFAIL_SWEEP_POINT={} cargo test {target} -- --exact {}",
                    ShellWord(point.as_bytes()),
                    ShellWord(test.as_bytes())
                )
            }
            _ => {
                use std::os::unix::ffi::OsStrExt;
                let args: Vec<String> = std::env::args_os()
                    .map(|arg| ShellWord(arg.as_bytes()).to_string())
                    .collect();
                format!(
                    "MAYFAIL_SWEEP_POINT={} {}",
                    ShellWord(point.as_bytes()),
                    args.join(" ")
                )
            }
        }
    }

    /// Runs one child per point (`0` = count only), `jobs` at a time. A run
    /// that hangs is tried once more alone: a fork can inherit a lock that
    /// another thread held at that moment, which hangs the child for a
    /// reason that has nothing to do with the operation.
    fn run_children<R>(&self, f: &impl Fn() -> R, points: &[u64]) -> Vec<Run> {
        let mut runs = self.run_batch(f, points);
        let hung: Vec<u64> = runs
            .iter()
            .filter(|r| matches!(r.ended, Ended::TimedOut))
            .map(|r| r.n)
            .collect();
        if !hung.is_empty() {
            let again = self.run_batch(f, &hung);
            for run in again {
                if let Some(slot) = runs.iter_mut().find(|r| r.n == run.n) {
                    *slot = run;
                }
            }
        }
        runs
    }

    fn run_batch<R>(&self, f: &impl Fn() -> R, points: &[u64]) -> Vec<Run> {
        let mut pending = points.iter().copied();
        let mut running: Vec<Child> = Vec::new();
        let mut done: Vec<Run> = Vec::new();
        loop {
            while running.len() < self.jobs {
                let Some(n) = pending.next() else { break };
                match self.fork_child(f, n) {
                    Some(child) => running.push(child),
                    None => return done,
                }
            }
            if running.is_empty() {
                break;
            }
            poll_children(&mut running);
            let mut i = 0;
            while i < running.len() {
                if let Some(run) = running[i].try_finish(self.timeout) {
                    done.push(run);
                    running.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
        done.sort_by_key(|r| r.n);
        done
    }

    fn fork_child<R>(&self, f: &impl Fn() -> R, n: u64) -> Option<Child> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        let [read, write] = fds;
        // SAFETY: fork has no preconditions; the child only runs `child_main`
        // and exits without returning.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            // SAFETY: both descriptors are open.
            unsafe {
                libc::close(read);
                libc::close(write);
            }
            return None;
        }
        if pid == 0 {
            // SAFETY: `read` is open in the child too.
            unsafe { libc::close(read) };
            self.child_main(f, n, write);
        }
        // SAFETY: `write` is the child's end; `read` becomes non-blocking.
        unsafe {
            libc::close(write);
            libc::fcntl(read, libc::F_SETFL, libc::O_NONBLOCK);
        }
        Some(Child {
            n,
            pid,
            fd: read,
            output: Vec::new(),
            started: Instant::now(),
            status: None,
        })
    }

    /// In the child: run the operation and report; never returns.
    fn child_main<R>(&self, f: &impl Fn() -> R, n: u64, fd: i32) -> ! {
        // Quiet: the parent reads the pipe, not the child's output.
        // SAFETY: plain descriptor operations on descriptors we own.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if null >= 0 {
                libc::dup2(null, 1);
                libc::dup2(null, 2);
                libc::close(null);
            }
        }
        CHILD_FD.store(fd, Relaxed);
        // The parent reports; the site walk of a surrounding `mayfail sites`
        // does not fail this child's allocations.
        crash::silence();
        inject::set_stack_filter(None);
        inject::observe(on_injected);
        if self.warm_up {
            match catch_unwind(AssertUnwindSafe(|| drop(f()))) {
                Ok(()) => {}
                Err(payload) => {
                    send(fd, &format!("PANICKED\t0\t{}\n", panic_message(&*payload)));
                    exit_child(0);
                }
            }
        }
        let tracking = track::start();
        configure::set_persistent(self.persistent);
        let armed = if n == 0 { u64::MAX } else { n };
        configure::fail_nth(armed);
        let result = catch_unwind(AssertUnwindSafe(|| drop(f())));
        let left = configure::fail_nth_pending();
        configure::fail_nth(0);
        // Memory comes back for the report (persistent mode).
        configure::set_persistent(false);
        let leaked = if tracking { track::stop() } else { None };
        let fired = n != 0 && left == 0;
        let message = match result {
            Ok(()) => {
                let (bytes, blocks) = leaked.unwrap_or((0, 0));
                let count = if n == 0 { u64::MAX - left } else { 0 };
                format!("RETURNED\t{}\t{bytes}\t{blocks}\t{count}\n", fired as u8)
            }
            Err(payload) => format!("PANICKED\t{}\t{}\n", fired as u8, panic_message(&*payload)),
        };
        send(fd, &message);
        exit_child(0)
    }
}

fn exit_child(code: i32) -> ! {
    // SAFETY: _exit ends the child without running the parent's atexit
    // handlers or flushing its buffers twice.
    unsafe { libc::_exit(code) }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    text.replace(['\n', '\t'], " ")
}

fn send(fd: i32, text: &str) {
    sys::write_fd(fd, text.as_bytes());
}

/// Observes every injected failure in a sweep's child: tells the parent
/// where. Runs inside the allocator.
fn on_injected(_verbose: u8) {
    let fd = CHILD_FD.load(Relaxed);
    if fd < 0 {
        return;
    }
    // Raw addresses only: the parent, whose symbol cache persists across
    // children, turns them into names.
    let mut line = StackBuf::<2048>::new();
    let _ = line.write_str("SITE\t");
    record::write_frames(&mut line);
    let _ = line.write_str("\tFAILED\t");
    record::write_failure(&mut line);
    crate::sys::write_fd(fd, line.finish_line());
}

/// Whether allocations of this thread go through `MayFail`: a fail-nth
/// countdown of 1 must fail the next one.
fn mayfail_is_global() -> bool {
    configure::fail_nth(1);
    let mut probe: Vec<u8> = Vec::new();
    let failed = probe.try_reserve(1).is_err();
    configure::fail_nth(0);
    failed
}

/// Resolves one symbol, so that the symbol cache is loaded before children
/// are forked (they inherit it).
fn warm_symbols() {
    let here = warm_symbols as *const () as *mut core::ffi::c_void;
    backtrace::resolve(here, |_| {});
}

/// A forked child being watched.
struct Child {
    n: u64,
    pid: libc::pid_t,
    fd: i32,
    output: Vec<u8>,
    started: Instant,
    status: Option<i32>,
}

/// How a child ended.
#[derive(Debug)]
enum Ended {
    Returned {
        leaked: u64,
        blocks: u64,
        count: u64,
    },
    Panicked(String),
    Signal(i32),
    Exited(i32),
    TimedOut,
}

/// A finished child.
struct Run {
    n: u64,
    fired: bool,
    ended: Ended,
    /// The raw stack of the injected failure.
    site: Option<Vec<usize>>,
    failed: String,
}

impl Run {
    fn describe(&self) -> String {
        match &self.ended {
            Ended::Returned { leaked, blocks, .. } => {
                format!("returned, {leaked} bytes in {blocks} blocks left allocated")
            }
            Ended::Panicked(message) => format!("panicked: {message}"),
            Ended::Signal(sig) => format!("killed by signal {sig} ({})", sys::signal_name(*sig)),
            Ended::Exited(code) => format!("exited with code {code}"),
            Ended::TimedOut => "did not finish before the timeout".to_owned(),
        }
    }

    fn into_point(self, sites: &mut BTreeMap<Vec<usize>, String>) -> Point {
        let (outcome, detail) = match &self.ended {
            Ended::Returned { leaked: 0, .. } => (Outcome::Handled, String::new()),
            Ended::Returned { .. } => (Outcome::Leaked, self.describe()),
            Ended::Panicked(_) => (Outcome::Panicked, self.describe()),
            Ended::Signal(sig) if *sig == libc::SIGABRT => (Outcome::Aborted, self.describe()),
            Ended::Signal(_) | Ended::Exited(_) => (Outcome::Crashed, self.describe()),
            Ended::TimedOut => (Outcome::Hung, self.describe()),
        };
        let detail = if detail.is_empty() {
            self.failed.clone()
        } else {
            format!("{}: {detail}", self.failed)
        };
        Point {
            n: self.n,
            outcome,
            site: match self.site {
                Some(frames) => sites
                    .entry(frames)
                    .or_insert_with_key(|frames| symbols::site_of(frames, SITE_FRAMES))
                    .clone(),
                None => "<unknown call site>".to_owned(),
            },
            detail,
        }
    }
}

/// Waits up to 10 ms for output from any child.
fn poll_children(children: &mut [Child]) {
    let mut fds: Vec<libc::pollfd> = children
        .iter()
        .filter(|c| c.fd >= 0)
        .map(|c| libc::pollfd {
            fd: c.fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
        return;
    }
    // SAFETY: `fds` is a valid array of that length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
}

impl Child {
    /// Reads what is available; reaps the child once its pipe is closed.
    fn try_finish(&mut self, timeout: Duration) -> Option<Run> {
        self.read_available();
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: `pid` is our child; WNOHANG does not block.
            let reaped = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if reaped == self.pid {
                self.status = Some(status);
            }
        }
        if let Some(status) = self.status {
            self.read_available();
            self.close();
            return Some(self.finish(Some(status)));
        }
        if self.started.elapsed() > timeout {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
            self.read_available();
            self.close();
            return Some(self.finish(None));
        }
        None
    }

    fn read_available(&mut self) {
        if self.fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into `buf`; the descriptor is non-blocking.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            self.output.extend_from_slice(&buf[..n as usize]);
        }
    }

    fn close(&mut self) {
        if self.fd >= 0 {
            // SAFETY: the descriptor is open and ours.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
    }

    fn finish(&self, status: Option<i32>) -> Run {
        let text = String::from_utf8_lossy(&self.output);
        let mut site = None;
        let mut failed = String::new();
        let mut ended = None;
        let mut fired = false;
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["SITE", frames, "FAILED", what] => {
                    fired = true;
                    if site.is_none() {
                        let frames: Vec<usize> = frames
                            .split(',')
                            .filter_map(|ip| usize::from_str_radix(ip, 16).ok())
                            .collect();
                        site = Some(frames);
                        failed = (*what).to_owned();
                    }
                }
                ["RETURNED", was_fired, bytes, blocks, count] => {
                    fired |= *was_fired == "1";
                    ended = Some(Ended::Returned {
                        leaked: bytes.parse().unwrap_or(0),
                        blocks: blocks.parse().unwrap_or(0),
                        count: count.parse().unwrap_or(0),
                    });
                }
                ["PANICKED", was_fired, message] => {
                    fired |= *was_fired == "1";
                    ended = Some(Ended::Panicked((*message).to_owned()));
                }
                _ => {}
            }
        }
        let ended = match (ended, status) {
            (Some(ended), _) => ended,
            (None, None) => Ended::TimedOut,
            (None, Some(status)) if libc::WIFSIGNALED(status) => {
                Ended::Signal(libc::WTERMSIG(status))
            }
            (None, Some(status)) => Ended::Exited(libc::WEXITSTATUS(status)),
        };
        Run {
            n: self.n,
            fired: fired && self.n != 0,
            ended,
            site,
            failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_lists_are_compressed_into_ranges() {
        assert_eq!(compress([1, 2, 3, 5, 7, 8].into_iter()), "1-3,5,7-8");
        assert_eq!(compress([4].into_iter()), "4");
        assert_eq!(compress(std::iter::empty()), "");
    }

    #[test]
    fn outcomes_sort_worst_first() {
        let mut all = Outcome::ALL;
        all.reverse();
        all.sort();
        assert_eq!(all, Outcome::ALL);
    }
}
