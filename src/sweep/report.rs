//! What a sweep found: its points, grouped by call site, and the table it
//! prints. Plain data and formatting, in the parent process only.

use std::fmt;
use std::time::Duration;

use crate::Outcome;

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

/// The result of a sweep: see [`Sweep::run`](crate::Sweep::run). Its
/// `Display` is a table of the call sites, worst first, with a replay
/// command for each.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// let report = mayfail::sweep(|| {
///     let mut v: Vec<u64> = Vec::new();
///     v.try_reserve(16).map(|()| v.len())
/// });
/// assert!(report.is_handled(), "{report}");
/// assert_eq!(report.allocations(), 1);
/// for site in report.sites() {
///     println!("{}: {} ({} points)", site.worst, site.site, site.points.len());
/// }
/// ```
#[derive(Clone, Debug)]
pub struct SweepReport {
    pub(super) name: Option<String>,
    pub(super) allocations: u64,
    pub(super) points: Vec<Point>,
    pub(super) sites: Vec<Site>,
    pub(super) baseline: Option<String>,
    pub(super) elapsed: Duration,
    pub(super) replayed: Option<u64>,
    /// The first run whose allocation count differed from the counting
    /// run's: its point and its count.
    pub(super) varied: Option<(u64, u64)>,
    /// The counting run's allocations.
    pub(super) counted: u64,
    /// Points that did not fail in their own run (it made fewer
    /// allocations) although another run reached them.
    pub(super) untested: Vec<u64>,
    pub(super) allow_no_allocation: bool,
}

impl SweepReport {
    /// Allocations the operation made: the most any of its runs made (the
    /// counting run's unless the count changed during the sweep).
    pub fn allocations(&self) -> u64 {
        self.allocations
    }

    /// `Some((point, allocations))` when the operation did not allocate the
    /// same number of times in every run: the first point whose run made a
    /// different number of allocations than the counting run, and that
    /// number. See [`untested`](SweepReport::untested) for what it cost.
    pub fn allocations_varied(&self) -> Option<(u64, u64)> {
        self.varied
    }

    /// Points that were not tested: their own run made fewer allocations
    /// than the point, though another run made at least that many (the
    /// operation allocates a different number of times per run). Empty when
    /// every point up to [`allocations`](SweepReport::allocations) failed in
    /// its own run.
    pub fn untested(&self) -> &[u64] {
        &self.untested
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

    /// Whether every point was handled and the operation ran cleanly. An
    /// operation without any allocation is not, unless the sweep allowed it
    /// ([`Sweep::allow_no_allocation`](crate::Sweep::allow_no_allocation)):
    /// nothing was tested. A replayed point is.
    pub fn is_handled(&self) -> bool {
        self.baseline.is_none()
            && self.points.iter().all(|p| p.outcome == Outcome::Handled)
            && (!self.nothing_to_fail() || self.allow_no_allocation)
    }

    /// Whether the sweep found no allocation to fail.
    fn nothing_to_fail(&self) -> bool {
        self.replayed.is_none() && self.baseline.is_none() && self.allocations == 0
    }

    /// Panics with the report's table if any point was not handled (or
    /// there was no allocation to fail, unless allowed).
    #[track_caller]
    pub fn assert_handled(&self) {
        if self.is_handled() {
            return;
        }
        if self.baseline.is_none() && self.nothing_to_fail() {
            panic!("{self}");
        }
        panic!("not every allocation failure was handled:\n{self}");
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
        if self.nothing_to_fail() {
            return writeln!(
                f,
                "mayfail sweep{name}: no allocation to fail: the operation made no allocation \
                 on the sweeping thread (optimised away, or done on another thread?){}",
                if self.allow_no_allocation {
                    "; allowed"
                } else {
                    "; Sweep::allow_no_allocation(true) accepts this"
                }
            );
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
        if let Some((point, count)) = self.varied {
            write!(
                f,
                "  note: the operation allocated {} times in the counting run but {count} in \
                 point {point}'s run; ",
                self.counted
            )?;
            if self.untested.is_empty() {
                writeln!(
                    f,
                    "every point up to {} failed in its own run",
                    self.allocations
                )?;
            } else {
                writeln!(
                    f,
                    "points {} made fewer allocations in their own run and were not tested",
                    compress(self.untested.iter().copied())
                )?;
            }
        }
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
pub(super) fn compress(ns: impl Iterator<Item = u64>) -> String {
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
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_lists_are_compressed_into_ranges() {
        assert_eq!(compress([1, 2, 3, 5, 7, 8].into_iter()), "1-3,5,7-8");
        assert_eq!(compress([4].into_iter()), "4");
        assert_eq!(compress(std::iter::empty()), "");
    }
}
