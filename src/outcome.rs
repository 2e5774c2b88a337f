//! How one failed allocation point ended, worst first: the one vocabulary of
//! the sweep's report and the runner's state file.
//!
//! A leaf with no dependency in the crate; nothing here runs inside the
//! allocator.

use core::fmt;
use core::str::FromStr;

/// How a run with one injected allocation failure ended, worst first.
///
/// [`Sweep`](crate::Sweep) reports `Crashed`, `Aborted`, `Hung`, `Panicked`,
/// `Failed` (the operation exited the process), `Unknown` (the child's
/// status or report was lost or made no sense), `Leaked`, `Untracked` and
/// `Handled` for the points of one operation; the runner
/// (`cargo mayfail sites`) reports `Crashed`, `Aborted`, `Hung`, `Failed`,
/// `Unknown` and `Handled` for the sites of a whole program. More variants
/// may come, hence `#[non_exhaustive]`.
///
/// ```
/// use mayfail::Outcome;
///
/// assert!(Outcome::Crashed < Outcome::Handled); // worst first
/// assert_eq!("aborted".parse::<Outcome>(), Ok(Outcome::Aborted));
/// assert_eq!(Outcome::Leaked.to_string(), "leaked");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Killed by `SIGSEGV`, `SIGBUS` or another fault: likely a null used
    /// without a check, a memory-safety bug.
    Crashed,
    /// The process aborted: the failure reached an infallible allocation
    /// (`handle_alloc_error`).
    Aborted,
    /// The run exceeded the timeout and was killed.
    Hung,
    /// The operation panicked (an `unwrap` on the error, an assertion).
    Panicked,
    /// The process exited non-zero: a test failed (an `unwrap`, an assert).
    /// In a sweep: the operation ended the process (`std::process::exit`)
    /// instead of returning, whatever the status.
    Failed,
    /// The process left no fate (killed by a signal mayfail does not catch,
    /// or it called `_exit`).
    Unknown,
    /// The operation returned, but blocks it allocated stayed allocated.
    Leaked,
    /// The operation returned, but its blocks could not be tracked (more
    /// live blocks than the leak table holds, or no table could be mapped):
    /// whether it leaked is unknown. Better than `Leaked`, which is a known
    /// defect; worse than `Handled`, which it must never pass for.
    Untracked,
    /// The failure was handled: the operation returned normally and nothing
    /// leaked, or the process exited with 0.
    Handled,
}

impl Outcome {
    /// Every outcome, worst first.
    pub const ALL: [Outcome; 9] = [
        Outcome::Crashed,
        Outcome::Aborted,
        Outcome::Hung,
        Outcome::Panicked,
        Outcome::Failed,
        Outcome::Unknown,
        Outcome::Leaked,
        Outcome::Untracked,
        Outcome::Handled,
    ];

    /// The outcome's name, as reports and the state file print it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Crashed => "crashed",
            Outcome::Aborted => "aborted",
            Outcome::Hung => "hung",
            Outcome::Panicked => "panicked",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
            Outcome::Leaked => "leaked",
            Outcome::Untracked => "untracked",
            Outcome::Handled => "handled",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error from parsing an [`Outcome`]: the text is none of the names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownOutcome;

impl fmt::Display for UnknownOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an outcome: accepted ")?;
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            write!(f, "{}{outcome}", if i == 0 { "" } else { ", " })?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownOutcome {}

impl FromStr for Outcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Outcome, UnknownOutcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or(UnknownOutcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_sort_worst_first() {
        let mut all = Outcome::ALL;
        all.reverse();
        all.sort();
        assert_eq!(all, Outcome::ALL);
    }

    #[test]
    fn outcomes_parse_back_from_their_names() {
        for outcome in Outcome::ALL {
            assert_eq!(outcome.name().parse(), Ok(outcome));
        }
        assert_eq!("Handled".parse::<Outcome>(), Err(UnknownOutcome));
    }
}
