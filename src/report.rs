//! Messages to the user: stall warnings, bad input, final failures.
//!
//! Everything here may run inside the allocator while memory is exhausted, so
//! lines are formatted into a fixed buffer on the stack and written to stderr
//! with a raw `write(2)`: no allocation, no lock, no panic. Warnings that can
//! repeat under pressure go through a [`RateLimit`], because a storm of
//! messages from many stalled threads is itself a source of lockups. Only the
//! final-failure warning goes through `log`, and only under the caller's
//! "in reclaim" guard, so that whatever the logger allocates is never retried.

use core::fmt::{self, Write};

use crate::sys::{now_ns, write_stderr};
use crate::text::{Shown, StackBuf};
use core::sync::atomic::{AtomicU64, Ordering};

/// Lets at most one event through per `interval_ns`, across all threads.
pub(crate) struct RateLimit {
    /// Monotonic time of the last event let through, plus one (0 = never).
    last: AtomicU64,
}

impl RateLimit {
    pub(crate) const fn new() -> Self {
        RateLimit {
            last: AtomicU64::new(0),
        }
    }

    pub(crate) fn allow(&self, interval_ns: u64) -> bool {
        let now = now_ns().saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < interval_ns {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

const SECOND_NS: u64 = 1_000_000_000;

static STALL_LIMIT: RateLimit = RateLimit::new();
#[cfg(feature = "log")]
static FAILURE_LIMIT: RateLimit = RateLimit::new();

/// The one-line warning for an allocation that has been retrying for too
/// long. Rate-limited to one line per second across threads; returns whether
/// the line was printed.
pub(crate) fn stall(
    size: usize,
    align: usize,
    retries: u64,
    stalled_ms: u64,
    nofail: bool,
    limit: Option<usize>,
) -> bool {
    if !STALL_LIMIT.allow(SECOND_NS) {
        return false;
    }
    let mut line = StackBuf::<512>::new();
    let _ = write!(
        line,
        "mayfail: allocation of {size} bytes (align {align}) stalled for {}.{:03} s after \
         {retries} retries; ",
        stalled_ms / 1000,
        stalled_ms % 1000,
    );
    if let Some(limit) = limit {
        let _ = write!(
            line,
            "it is over the heap limit of {limit} bytes (MAYFAIL_LIMIT, mayfail::set_limit) \
             and waits for the reclaimers or other threads to free memory; ",
        );
    }
    let _ = line.write_str(if nofail {
        "it is inside a nofail scope and retries until memory is freed"
    } else {
        "it retries until memory is freed: MAYFAIL_RETRIES=N in the environment (at most N \
         retries; 0: fail at once) lets it fail, as does mayfail::set_retries(N) in Rust code; \
         MAYFAIL_STALL_MS=MS sets when this is said"
    });
    write_stderr(line.finish_line());
    true
}

/// Whether a final failure may be logged now: a logger wants it, and none
/// was logged in the last second.
#[cfg(feature = "log")]
pub(crate) fn failure_log_due() -> bool {
    let enabled =
        std::panic::catch_unwind(|| log::log_enabled!(target: "mayfail", log::Level::Warn));
    enabled.unwrap_or_else(|payload| {
        drop_panic_payload(payload);
        false
    }) && FAILURE_LIMIT.allow(SECOND_NS)
}

/// Reports through `log` that a null is going back to the caller. The caller
/// must hold the "in reclaim" guard. A logger that panics is caught: nothing
/// may unwind out of the allocator.
#[cfg(feature = "log")]
pub(crate) fn log_failure(size: usize, align: usize, retries: u64) {
    let logged = std::panic::catch_unwind(|| {
        log::warn!(
            target: "mayfail",
            "allocation of {size} bytes (align {align}) failed after {retries} retries; \
             the caller receives null"
        );
    });
    if let Err(payload) = logged {
        drop_panic_payload(payload);
    }
}

/// Drops a caught panic's payload. Its destructor is user code that could
/// panic too; a payload from that second panic is leaked rather than dropped.
pub(crate) fn drop_panic_payload(payload: Box<dyn core::any::Any + Send>) {
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)));
    if let Err(again) = dropped {
        core::mem::forget(again);
    }
}

/// The one stderr line for an environment variable that is refused:
/// `mayfail: ignoring NAME="value" (N bytes): why`, the value escaped and cut
/// (its length given when cut).
pub(crate) fn ignoring_env(name: &str, value: &[u8], why: fmt::Arguments<'_>) {
    let mut line = StackBuf::<600>::new();
    let _ = write!(line, "mayfail: ignoring {name}=\"{}\"", Shown(value));
    if value.len() > Shown::MAX {
        let _ = write!(line, " ({} bytes)", value.len());
    }
    let _ = write!(line, ": {why}");
    write_stderr(line.finish_line());
}

/// [`ignoring_env`] for a knob: what it accepts, and the default that applies.
pub(crate) fn bad_env(name: &str, value: &[u8], accepted: &str, default: fmt::Arguments<'_>) {
    ignoring_env(
        name,
        value,
        format_args!("accepted {accepted}; using the default {default}"),
    );
}

/// One stderr line for a bad argument passed to a setter.
pub(crate) fn bad_argument(call: fmt::Arguments<'_>, accepted: &str, kept: fmt::Arguments<'_>) {
    let mut line = StackBuf::<300>::new();
    let _ = write!(
        line,
        "mayfail: ignoring {call}: accepted {accepted}; keeping {kept}"
    );
    write_stderr(line.finish_line());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_lets_one_event_through_per_interval() {
        let limit = RateLimit::new();
        assert!(limit.allow(SECOND_NS * 3600));
        assert!(!limit.allow(SECOND_NS * 3600));
        assert!(limit.allow(0));
    }
}
