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
use core::sync::atomic::{AtomicU64, Ordering};

/// A `fmt::Write` sink over a fixed array; output past its end is dropped and
/// the line is marked as cut.
pub(crate) struct StackBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    cut: bool,
}

impl<const N: usize> StackBuf<N> {
    pub(crate) const fn new() -> Self {
        StackBuf {
            bytes: [0; N],
            len: 0,
            cut: false,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Ends the buffer with a newline, replacing the tail with `...` if the
    /// text did not fit.
    pub(crate) fn finish_line(&mut self) -> &[u8] {
        const ELLIPSIS: &[u8] = b"...";
        if self.cut || self.len == N {
            let keep = N.saturating_sub(ELLIPSIS.len() + 1);
            self.len = keep.min(self.len);
            self.push(ELLIPSIS);
        }
        if self.len < N {
            self.bytes[self.len] = b'\n';
            self.len += 1;
        }
        self.as_bytes()
    }

    fn push(&mut self, s: &[u8]) {
        let room = N - self.len;
        let n = s.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
        }
    }
}

impl<const N: usize> Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Writes all of `bytes` to stderr with `write(2)`, retrying on `EINTR` and
/// short writes, giving up silently on any other error.
pub(crate) fn write_stderr(bytes: &[u8]) {
    write_fd(libc::STDERR_FILENO, bytes);
}

/// Writes all of `bytes` to `fd` as [`write_stderr`] does.
pub(crate) fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live, initialised slice;
        // `write` does not keep the pointer.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && last_errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

fn last_errno() -> i32 {
    // SAFETY: `__errno_location` returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Nanoseconds on the monotonic clock, without allocating.
pub(crate) fn now_ns() -> u64 {
    crate::os::clock_ns(libc::CLOCK_MONOTONIC)
}

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
static FAILURE_LIMIT: RateLimit = RateLimit::new();

/// The one-line warning for an allocation that has been retrying for too
/// long. Rate-limited to one line per second across threads; returns whether
/// the line was printed.
pub(crate) fn stall(size: usize, align: usize, retries: u64, stalled_ms: u64) -> bool {
    if !STALL_LIMIT.allow(SECOND_NS) {
        return false;
    }
    let mut line = StackBuf::<320>::new();
    let _ = write!(
        line,
        "mayfail: allocation of {size} bytes (align {align}) stalled for {}.{:03} s after \
         {retries} retries; it retries until memory is freed: set MAYFAIL_RETRIES=N or call \
         mayfail::set_retries(N) to let it fail",
        stalled_ms / 1000,
        stalled_ms % 1000,
    );
    write_stderr(line.finish_line());
    true
}

/// Whether a final failure may be logged now: a logger wants it, and none
/// was logged in the last second.
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

/// Writes `value` for a message: printable ASCII as is, other bytes as
/// `\xNN`, at most [`Shown::MAX`] bytes of it followed by `...`.
pub(crate) struct Shown<'a>(pub(crate) &'a [u8]);

impl Shown<'_> {
    /// How many bytes of a value a message shows.
    pub(crate) const MAX: usize = 48;
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.0.len() > Self::MAX;
        write!(f, "{}", Escaped(&self.0[..self.0.len().min(Self::MAX)]))?;
        if cut {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Writes bytes so that they can be given back to mayfail's own grammars (a
/// replay line): printable ASCII and valid non-ASCII UTF-8 as they are;
/// controls, invalid UTF-8, and the characters that delimit values (quotes,
/// backslash, comma, equals sign) as `\xNN`, which the `thread=` value
/// decodes.
pub(crate) struct Replayable<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Replayable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                let special = c.is_control() || matches!(c, '\'' | '"' | '\\' | ',' | '=');
                if special {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        write!(f, "\\x{b:02x}")?;
                    }
                } else {
                    f.write_char(c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Undoes [`Replayable`]'s `\xNN` escapes into `out`; returns the length, or
/// `None` if an escape is malformed or `out` is too small.
pub(crate) fn unescape(input: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut len = 0;
    let mut i = 0;
    while i < input.len() {
        let byte = if input[i] == b'\\' {
            let hex = input.get(i + 2..i + 4)?;
            if input.get(i + 1) != Some(&b'x') {
                return None;
            }
            let text = core::str::from_utf8(hex).ok()?;
            i += 4;
            u8::from_str_radix(text, 16).ok()?
        } else {
            i += 1;
            input[i - 1]
        };
        *out.get_mut(len)? = byte;
        len += 1;
    }
    Some(len)
}

/// Writes bytes as [`Shown`] does, but all of them.
pub(crate) struct Escaped<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                f.write_char(b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// One stderr line for an environment variable that does not parse.
pub(crate) fn bad_env(name: &str, value: &[u8], accepted: &str, default: fmt::Arguments<'_>) {
    let mut line = StackBuf::<400>::new();
    let _ = write!(line, "mayfail: ignoring {name}=\"{}\"", Shown(value));
    if value.len() > Shown::MAX {
        let _ = write!(line, " ({} bytes)", value.len());
    }
    let _ = write!(line, ": accepted {accepted}; using the default {default}");
    write_stderr(line.finish_line());
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

    fn text<const N: usize>(buf: &mut StackBuf<N>) -> String {
        String::from_utf8(buf.finish_line().to_vec()).unwrap()
    }

    #[test]
    fn stack_buf_holds_a_short_line() {
        let mut b = StackBuf::<32>::new();
        write!(b, "retries {}", 3).unwrap();
        assert_eq!(text(&mut b), "retries 3\n");
    }

    #[test]
    fn stack_buf_cuts_a_long_line_with_an_ellipsis() {
        let mut b = StackBuf::<16>::new();
        write!(b, "{}", "x".repeat(100)).unwrap();
        let t = text(&mut b);
        assert_eq!(t.len(), 16);
        assert!(t.ends_with("...\n"), "{t:?}");
    }

    #[test]
    fn shown_escapes_non_printable_bytes_and_cuts_long_values() {
        let mut b = StackBuf::<200>::new();
        write!(b, "{}", Shown(b"a\xffb\n\"")).unwrap();
        assert_eq!(b.as_bytes(), b"a\\xffb\\x0a\\x22");
        let long = [b'7'; 1000];
        let mut b = StackBuf::<200>::new();
        write!(b, "{}", Shown(&long)).unwrap();
        let t = String::from_utf8(b.as_bytes().to_vec()).unwrap();
        assert!(t.starts_with(&"7".repeat(48)));
        assert_eq!(t.len(), 48 + 3, "{t}");
        assert!(t.ends_with("7..."), "{t}");
    }

    #[test]
    fn replayable_text_round_trips_through_unescape() {
        for name in [
            &b"worker"[..],
            "caf\u{e9}".as_bytes(),
            b"a,b=c'd\\e\n",
            b"\xff\xfeok",
        ] {
            let text = Replayable(name).to_string();
            assert!(!text.contains(['\'', ',', '=', '\n']), "{text}");
            let mut out = [0u8; 64];
            let n = unescape(text.as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..n], name, "{text}");
        }
        assert_eq!(Replayable("café".as_bytes()).to_string(), "café");
        assert_eq!(unescape(b"bad\\x4", &mut [0; 8]), None);
        assert_eq!(unescape(b"bad\\y41", &mut [0; 8]), None);
    }

    #[test]
    fn rate_limit_lets_one_event_through_per_interval() {
        let limit = RateLimit::new();
        assert!(limit.allow(SECOND_NS * 3600));
        assert!(!limit.allow(SECOND_NS * 3600));
        assert!(limit.allow(0));
    }
}
