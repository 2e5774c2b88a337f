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

mod child;
mod replay;
mod report;
mod watch;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::Outcome;
use crate::configure;
use crate::scope::{self, Mode};
use child::{mayfail_is_global, warm_symbols};
use replay::Caller;
pub use report::{Point, Site, SweepReport};
use watch::{ChildSignal, Ended, MAX_ALLOCATIONS, Run};

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
    allow_no_allocation: bool,
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep::new()
    }
}

/// Runs [`Sweep::run`] with the default options: fails the operation's
/// first allocation, then its second, and so on, each in a child process,
/// and reports how each point ended.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// let report = mayfail::sweep(|| {
///     let mut names: Vec<String> = Vec::new();
///     names.try_reserve(4)?;
///     names.push(String::from("a")); // infallible: aborts when it fails
///     Ok::<_, std::collections::TryReserveError>(names.len())
/// });
/// assert_eq!(report.count(mayfail::Outcome::Handled), 1);
/// assert_eq!(report.count(mayfail::Outcome::Aborted), 1);
/// ```
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
            allow_no_allocation: false,
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
    ///
    /// The leak rule: when a failing point's run returns with blocks still
    /// live, the child runs the same point once more, tracking on; the point
    /// is `leaked` only if the live set grows again, by the bytes it reports.
    /// What the error path keeps once per thread or per process (a logger's
    /// buffer grown by its first warning, a "last error" slot replaced) is
    /// not a leak; nor is what it prints into the test harness's output
    /// capture, in which each child makes room (256 KiB) before the run.
    pub fn warm_up(mut self, warm_up: bool) -> Sweep {
        self.warm_up = warm_up;
        self
    }

    /// Names the sweep, for its report and its replay lines
    /// (`MAYFAIL_SWEEP_POINT=name:n`), when one test runs several sweeps, or
    /// when the sweep runs on a thread of its own (its replay line then
    /// reruns the whole process, and only the named sweep replays). Any text
    /// will do: the replay line quotes it for the shell, and the point's
    /// number is what follows the last `:`.
    pub fn name(mut self, name: &str) -> Sweep {
        self.name = Some(name.to_owned());
        self
    }

    /// Whether an operation that makes no allocation at all passes
    /// ([`SweepReport::is_handled`]); default: no. A sweep that finds
    /// nothing to fail usually means the allocations were optimised away,
    /// or happen on another thread, and tested nothing.
    pub fn allow_no_allocation(mut self, allow: bool) -> Sweep {
        self.allow_no_allocation = allow;
        self
    }

    /// Sweeps `f`: fails its 1st, 2nd, 3rd... allocation (on the thread that
    /// runs it), each in a child process, until a run makes fewer
    /// allocations than the point to fail. Requires `MayFail` as the global
    /// allocator, and a thread outside `nofail` scopes and reclaimers. A
    /// [`fail_nth`](crate::fail_nth) countdown the thread has armed is put
    /// aside meanwhile and restored after.
    ///
    /// With `MAYFAIL_SWEEP_POINT=n` (or `name:n` for a named sweep) in the
    /// environment, runs point `n` alone, in this process: the replay of a
    /// report line.
    pub fn run<R>(&self, f: impl Fn() -> R) -> SweepReport {
        crate::symbols::register_fork_handlers();
        // Before anything allocates: the caller's countdown must not fire
        // on the sweep's own allocations.
        let saved = configure::fail_nth_pending();
        if saved != 0 {
            configure::fail_nth(0);
        }
        let report = self.run_unarmed(&f);
        if saved != 0 {
            configure::fail_nth(saved);
        }
        report
    }

    fn run_unarmed<R>(&self, f: &impl Fn() -> R) -> SweepReport {
        let start = Instant::now();
        let mut report = SweepReport {
            name: self.name.clone(),
            allocations: 0,
            points: Vec::new(),
            sites: Vec::new(),
            baseline: None,
            elapsed: Duration::ZERO,
            replayed: None,
            varied: None,
            counted: 0,
            untested: Vec::new(),
            allow_no_allocation: self.allow_no_allocation,
        };
        if let Some(why) = refused_here() {
            report.baseline = Some(why.to_owned());
            report.elapsed = start.elapsed();
            return report;
        }
        if let Some(n) = self.replay_point() {
            return self.replay(n, f, report, start);
        }
        warm_symbols();
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
        let _waitable = ChildSignal::take();
        let caller = Caller::find();
        let baseline = self.run_children(f, &[0]).pop();
        match baseline {
            Some(Run {
                ended: Ended::Returned { allocations, .. },
                ..
            }) => {
                report.allocations = allocations;
                report.counted = allocations;
            }
            Some(run) => {
                report.baseline = Some(format!(
                    "the operation fails without any injected failure: {}",
                    run.describe()
                ));
            }
            None => report.baseline = Some("could not fork a child process".to_owned()),
        }
        if report.baseline.is_none() {
            self.sweep_points(f, &mut report);
            report.sites = self.group(&report.points, &caller);
        }
        report.elapsed = start.elapsed();
        report
    }

    /// Runs points 1, 2, 3... up to the counted allocations, in batches,
    /// going on while runs show more allocations than counted; notes runs
    /// whose count differs and points that did not fail in their own run.
    fn sweep_points<R>(&self, f: &impl Fn() -> R, report: &mut SweepReport) {
        /// Points forked per batch: bounds what the parent holds at once.
        const BATCH: u64 = 256;
        let counted = report.allocations;
        let mut names = BTreeMap::new();
        let mut not_fired = Vec::new();
        let mut next = 1;
        let mut last = counted;
        // The most allocations any run is known to have made.
        let mut most = counted;
        while next <= last {
            let end = last.min(next.saturating_add(BATCH - 1));
            let batch: Vec<u64> = (next..=end).collect();
            let runs = self.run_children(f, &batch);
            if runs.is_empty() {
                break; // no child could be forked
            }
            next = end + 1;
            for run in runs {
                if !run.fired {
                    // Nothing failed in this run: its count is the
                    // operation's, as the counting run's was.
                    if let Some(count) = run.allocations() {
                        if count != counted && report.varied.is_none() {
                            report.varied = Some((run.n, count));
                        }
                        most = most.max(count);
                        last = last.max(count.min(MAX_ALLOCATIONS));
                    }
                    not_fired.push(run.n);
                    continue;
                }
                most = most.max(run.n);
                if run.n == last && run.allocations().is_none() && last < MAX_ALLOCATIONS {
                    // It ended before saying how many it makes: there may be
                    // more.
                    last += 1;
                }
                report
                    .points
                    .push(run.into_point(&mut names, self.persistent));
            }
        }
        report.points.sort_by_key(|p| p.n);
        report.allocations = most;
        report.untested = not_fired.into_iter().filter(|&n| n <= most).collect();
        report.untested.sort_unstable();
    }
    fn replay_point(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let value = std::env::var_os("MAYFAIL_SWEEP_POINT")?;
        let bytes = value.as_bytes();
        // The number follows the last `:`: a name may contain colons.
        let (label, number) = match bytes.iter().rposition(|&b| b == b':') {
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
                crate::report::ignoring_env(
                    "MAYFAIL_SWEEP_POINT",
                    bytes,
                    format_args!("accepted N or name:N, N a whole number >= 1; sweeping as usual"),
                );
                None
            }
        }
    }

    fn replay<R>(
        &self,
        n: u64,
        f: &impl Fn() -> R,
        mut report: SweepReport,
        start: Instant,
    ) -> SweepReport {
        if self.warm_up {
            drop(f());
        }
        crate::record::forget();
        configure::set_persistent(self.persistent);
        configure::fail_nth(n);
        drop(f());
        configure::fail_nth(0);
        configure::set_persistent(false);
        report.elapsed = start.elapsed();
        report.replayed = Some(n);
        report
    }

    fn group(&self, points: &[Point], caller: &Caller) -> Vec<Site> {
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
                    replay: self.replay_line(n, caller),
                    points,
                }
            })
            .collect();
        sites.sort_by(|a, b| (a.worst, a.points[0].n).cmp(&(b.worst, b.points[0].n)));
        sites
    }

    /// The command that replays point `n` of this sweep alone: see
    /// [`replay::replay_line`].
    fn replay_line(&self, n: u64, caller: &Caller) -> String {
        let point = match &self.name {
            Some(name) => format!("{name}:{n}"),
            None => n.to_string(),
        };
        replay::replay_line(&point, caller)
    }
}

/// Why a sweep cannot start on this thread, if it cannot: inside a
/// `nofail` scope no allocation is ever failed (nor counted), and inside a
/// reclaimer the thread is in mayfail's own slow path, where nothing is
/// injected either.
fn refused_here() -> Option<&'static str> {
    if scope::in_reclaim() {
        return Some(
            "a sweep cannot run inside a reclaimer (or any part of mayfail's slow path): \
             nothing is injected there; run it from ordinary code",
        );
    }
    if scope::mode() == Mode::NoFail {
        return Some(
            "a sweep cannot run inside a nofail scope: nofail allocations are never \
             failed nor counted; start the sweep outside the scope",
        );
    }
    None
}
