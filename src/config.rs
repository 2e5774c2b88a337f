//! The knobs: how many retries, what counts as small, when a stall is reported.
//!
//! Each knob has three layers, highest first: the run-time setter, the
//! environment, and the default compiled into the [`MayFail`](crate::MayFail)
//! value. They are process-wide atomics, read with relaxed loads on the slow
//! path only. The environment is read once, with `libc::getenv`, by the first
//! allocation the allocator serves; a value that does not parse gets one line
//! on stderr and the default applies. Nothing here allocates, locks or panics:
//! it runs inside the allocator.
//!
//! The knobs sit on their own cache line, away from the counters in `stats`
//! and from the word the hot path reads (`engaged`).

use core::sync::atomic::{AtomicIsize, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::report;
use crate::sys;
use crate::text::parse_u64;

/// The retry knob's value for "retry until the allocation succeeds".
pub const RETRY_FOREVER: isize = -1;
/// The crate's default for the retry knob: [`RETRY_FOREVER`], like Linux
/// (stage one of the kernel's plan).
pub const DEFAULT_RETRIES: isize = RETRY_FOREVER;
/// The crate's default small limit, in bytes: 32 KiB, the kernel's costly-order
/// boundary (order 3 with 4 KiB pages).
pub const DEFAULT_SMALL_LIMIT: usize = 32 * 1024;
/// The crate's default stall threshold, in milliseconds.
pub const DEFAULT_STALL_MS: u64 = 10_000;

/// The largest meaningful small limit: no allocation is larger.
const MAX_SMALL_LIMIT: usize = isize::MAX as usize;

const UNSET_ISIZE: isize = isize::MIN;
const UNSET_USIZE: usize = usize::MAX;
const UNSET_U64: u64 = u64::MAX;

/// The defaults a [`MayFail`](crate::MayFail) value was built with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Defaults {
    pub(crate) retries: isize,
    pub(crate) small_limit: usize,
    pub(crate) stall_ms: u64,
    /// The heap limit, encoded by `limit::encode` (0: none compiled in).
    pub(crate) limit: u64,
}

impl Defaults {
    pub(crate) const CRATE: Defaults = Defaults {
        retries: DEFAULT_RETRIES,
        small_limit: DEFAULT_SMALL_LIMIT,
        stall_ms: DEFAULT_STALL_MS,
        limit: 0,
    };
}

/// One knob's layers.
struct Layers<T> {
    user: T,
    env: T,
    default: T,
}

/// The read-mostly words, on cache lines of their own.
#[repr(align(128))]
struct Knobs {
    retries: Layers<AtomicIsize>,
    small_limit: Layers<AtomicUsize>,
    stall_ms: Layers<AtomicU64>,
}

static KNOBS: Knobs = Knobs {
    retries: Layers {
        user: AtomicIsize::new(UNSET_ISIZE),
        env: AtomicIsize::new(UNSET_ISIZE),
        default: AtomicIsize::new(DEFAULT_RETRIES),
    },
    small_limit: Layers {
        user: AtomicUsize::new(UNSET_USIZE),
        env: AtomicUsize::new(UNSET_USIZE),
        default: AtomicUsize::new(DEFAULT_SMALL_LIMIT),
    },
    stall_ms: Layers {
        user: AtomicU64::new(UNSET_U64),
        env: AtomicU64::new(UNSET_U64),
        default: AtomicU64::new(DEFAULT_STALL_MS),
    },
};

const UNREAD: u8 = 0;
const READING: u8 = 1;
const READ: u8 = 2;
static ENV_STATE: AtomicU8 = AtomicU8::new(UNREAD);
static DEFAULTS_REGISTERED: AtomicU8 = AtomicU8::new(0);

/// Registers the compiled defaults of the allocator that served the first
/// allocation (the first caller wins).
pub(crate) fn register_defaults(defaults: &Defaults) {
    if DEFAULTS_REGISTERED.swap(1, Relaxed) == 0 {
        KNOBS.retries.default.store(defaults.retries, Relaxed);
        KNOBS
            .small_limit
            .default
            .store(defaults.small_limit, Relaxed);
        KNOBS.stall_ms.default.store(defaults.stall_ms, Relaxed);
    }
}

/// Whether the knobs' environment has been read.
pub(crate) fn env_read() -> bool {
    ENV_STATE.load(Relaxed) == READ
}

/// Reads `MAYFAIL_RETRIES`, `MAYFAIL_SMALL` and `MAYFAIL_STALL_MS` if nobody
/// has yet. A thread that finds
/// another one reading does not wait: it goes on with the layers as they are
/// (the reader never allocates, so this cannot be the same thread re-entering).
pub(crate) fn read_env_once() {
    if ENV_STATE.load(Relaxed) == READ
        || ENV_STATE
            .compare_exchange(UNREAD, READING, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    if let Some(value) = sys::getenv(c"MAYFAIL_RETRIES") {
        match parse_retries(value) {
            Ok(n) => KNOBS.retries.env.store(n, Relaxed),
            Err(()) => report::bad_env(
                "MAYFAIL_RETRIES",
                value,
                RETRIES_ACCEPTED,
                format_args!("{}", KNOBS.retries.default.load(Relaxed)),
            ),
        }
    }
    if let Some(value) = sys::getenv(c"MAYFAIL_SMALL") {
        match parse_bytes(value) {
            Ok(n) => KNOBS.small_limit.env.store(n.min(MAX_SMALL_LIMIT), Relaxed),
            Err(()) => report::bad_env(
                "MAYFAIL_SMALL",
                value,
                SMALL_ACCEPTED,
                format_args!("{} bytes", KNOBS.small_limit.default.load(Relaxed)),
            ),
        }
    }
    if let Some(value) = sys::getenv(c"MAYFAIL_STALL_MS") {
        match parse_u64(trim(value)) {
            // u64::MAX marks "unset": the largest value means the same
            // ("never, in practice") one millisecond earlier.
            Some(n) => KNOBS.stall_ms.env.store(n.min(UNSET_U64 - 1), Relaxed),
            None => report::bad_env(
                "MAYFAIL_STALL_MS",
                value,
                STALL_ACCEPTED,
                format_args!("{} ms", KNOBS.stall_ms.default.load(Relaxed)),
            ),
        }
    }
    ENV_STATE.store(READ, Relaxed);
}

const RETRIES_ACCEPTED: &str =
    "-1 (retry until it succeeds), 0 (never retry) or a count N >= 1 (at most N retries)";
const SMALL_ACCEPTED: &str = "a size in bytes, with an optional K, M or G suffix (32K)";
const STALL_ACCEPTED: &str = "milliseconds as a whole number, 0 to turn the warning off";

/// The first layer that is set: the user's, the environment's, else the
/// default.
fn pick<T: PartialEq>(user: T, env: T, unset: T, default: T) -> T {
    if user != unset {
        user
    } else if env != unset {
        env
    } else {
        default
    }
}

fn layered_isize(l: &Layers<AtomicIsize>) -> isize {
    let default = l.default.load(Relaxed);
    pick(
        l.user.load(Relaxed),
        l.env.load(Relaxed),
        UNSET_ISIZE,
        default,
    )
}

fn layered_usize(l: &Layers<AtomicUsize>) -> usize {
    let default = l.default.load(Relaxed);
    pick(
        l.user.load(Relaxed),
        l.env.load(Relaxed),
        UNSET_USIZE,
        default,
    )
}

fn layered_u64(l: &Layers<AtomicU64>) -> u64 {
    let default = l.default.load(Relaxed);
    pick(
        l.user.load(Relaxed),
        l.env.load(Relaxed),
        UNSET_U64,
        default,
    )
}

/// The retry knob in force: `-1` retry until success, `0` never retry, `N`
/// at most `N` retries after the first failure.
///
/// Precedence: [`set_retries`], then `MAYFAIL_RETRIES`, then the default the
/// allocator was built with ([`MayFail::with_retries`](crate::MayFail::with_retries),
/// else [`DEFAULT_RETRIES`]).
pub fn retries() -> isize {
    read_env_once();
    layered_isize(&KNOBS.retries)
}

/// Sets the retry knob for the rest of the process, over the environment and
/// the compiled default. Takes effect at once, also for allocations that are
/// retrying right now.
///
/// `n` must be `-1` (retry until success), `0` (never retry) or a count. A
/// value below `-1` is refused with one line on stderr and the knob keeps its
/// value.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// // A service that would rather shed load than stall: at most 3 retries.
/// mayfail::set_retries(3);
/// assert_eq!(mayfail::retries(), 3);
/// mayfail::set_retries(mayfail::RETRY_FOREVER);
/// ```
pub fn set_retries(n: isize) {
    read_env_once();
    if n < RETRY_FOREVER {
        report::bad_argument(
            format_args!("mayfail::set_retries({n})"),
            RETRIES_ACCEPTED,
            format_args!("retries = {}", retries()),
        );
        return;
    }
    KNOBS.retries.user.store(n, Relaxed);
}

/// The small limit in force, in bytes: failed allocations of at most this
/// size are retried according to [`retries`]; larger ones fail at once
/// (unless inside [`nofail`](crate::nofail)).
///
/// Precedence: [`set_small_limit`], then `MAYFAIL_SMALL`, then
/// [`MayFail::with_small_limit`](crate::MayFail::with_small_limit), else
/// [`DEFAULT_SMALL_LIMIT`].
pub fn small_limit() -> usize {
    read_env_once();
    layered_usize(&KNOBS.small_limit)
}

/// Sets the small limit for the rest of the process. `0` means no allocation
/// is small: only [`nofail`](crate::nofail) scopes retry.
pub fn set_small_limit(bytes: usize) {
    read_env_once();
    KNOBS
        .small_limit
        .user
        .store(bytes.min(MAX_SMALL_LIMIT), Relaxed);
}

/// The stall threshold in force, in milliseconds: an allocation still
/// retrying after this long prints one warning. `0` turns the warning off.
///
/// Precedence: [`set_stall_ms`], then `MAYFAIL_STALL_MS`, then
/// [`MayFail::with_stall_ms`](crate::MayFail::with_stall_ms), else
/// [`DEFAULT_STALL_MS`].
pub fn stall_ms() -> u64 {
    read_env_once();
    layered_u64(&KNOBS.stall_ms)
}

/// Sets the stall threshold for the rest of the process (`0`: never warn).
pub fn set_stall_ms(ms: u64) {
    read_env_once();
    KNOBS.stall_ms.user.store(ms.min(UNSET_U64 - 1), Relaxed);
}

/// The knobs as the slow path of one allocator sees them: the setter, the
/// environment, then that allocator's own compiled default (two `MayFail`
/// values with different defaults each keep theirs). No `read_env_once`
/// check: the engaged path has done it.
pub(crate) fn current_retries(defaults: &Defaults) -> isize {
    let l = &KNOBS.retries;
    pick(
        l.user.load(Relaxed),
        l.env.load(Relaxed),
        UNSET_ISIZE,
        defaults.retries,
    )
}

pub(crate) fn current_small_limit(defaults: &Defaults) -> usize {
    let l = &KNOBS.small_limit;
    pick(
        l.user.load(Relaxed),
        l.env.load(Relaxed),
        UNSET_USIZE,
        defaults.small_limit,
    )
}

pub(crate) fn current_stall_ms(defaults: &Defaults) -> u64 {
    let l = &KNOBS.stall_ms;
    pick(
        l.user.load(Relaxed),
        l.env.load(Relaxed),
        UNSET_U64,
        defaults.stall_ms,
    )
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// `MAYFAIL_RETRIES`: `-1`, `0` or `N`, surrounding blanks allowed.
pub(crate) fn parse_retries(s: &[u8]) -> Result<isize, ()> {
    let s = trim(s);
    if s == b"-1" {
        return Ok(RETRY_FOREVER);
    }
    let n = parse_u64(s).ok_or(())?;
    isize::try_from(n).map_err(|_| ())
}

/// `MAYFAIL_SMALL`: bytes with an optional `K`, `M` or `G` suffix (powers of
/// 1024, either case), surrounding blanks allowed.
pub(crate) fn parse_bytes(s: &[u8]) -> Result<usize, ()> {
    let s = trim(s);
    let (digits, shift) = match s.last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = parse_u64(digits).ok_or(())?;
    let bytes = n.checked_mul(1u64 << shift).ok_or(())?;
    if bytes > MAX_SMALL_LIMIT as u64 {
        return Err(());
    }
    Ok(bytes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_accepts_minus_one_zero_and_counts() {
        assert_eq!(parse_retries(b"-1"), Ok(-1));
        assert_eq!(parse_retries(b"0"), Ok(0));
        assert_eq!(parse_retries(b"3"), Ok(3));
        assert_eq!(parse_retries(b" 7\n"), Ok(7));
        assert_eq!(parse_retries(b"9223372036854775807"), Ok(isize::MAX));
    }

    #[test]
    fn retries_rejects_everything_else() {
        for bad in [
            &b""[..],
            b"   ",
            b"abc",
            b"-2",
            b"-0",
            b"+3",
            b"3x",
            b"1.5",
            b"99999999999999999999",
            b"9223372036854775808",
            b"\xff",
            b"- 1",
        ] {
            assert_eq!(parse_retries(bad), Err(()), "{:?}", bad);
        }
    }

    #[test]
    fn bytes_accept_suffixes() {
        assert_eq!(parse_bytes(b"0"), Ok(0));
        assert_eq!(parse_bytes(b"4096"), Ok(4096));
        assert_eq!(parse_bytes(b"32K"), Ok(32 * 1024));
        assert_eq!(parse_bytes(b"32k"), Ok(32 * 1024));
        assert_eq!(parse_bytes(b"2M"), Ok(2 << 20));
        assert_eq!(parse_bytes(b"1G "), Ok(1 << 30));
    }

    #[test]
    fn bytes_reject_bad_suffixes_and_overflow() {
        for bad in [
            &b""[..],
            b"K",
            b"12Q",
            b"12KB",
            b"-1",
            b"1.5K",
            b"17179869184G",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_bytes(bad), Err(()), "{:?}", bad);
        }
    }
}
