//! Turning fault injection on and off: the public entry points
//! ([`configure_injection`], [`fail_nth`]...), `MAYFAIL_INJECT` at start-up,
//! and the order in which a spec's parts are installed: the site walk, then
//! the attributes, then the crash handlers, then the switch.
//!
//! This is the layer that knows every other: it installs the site walk and
//! the crash report, which register with the injection decision below them.
//! The start-up path runs inside the allocator (the first allocation) and
//! never allocates there; the public functions may allocate (an error's
//! message) but never from inside the allocator.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering::Relaxed};

use crate::crash;
use crate::engaged;
use crate::inject::{self, Origin};
use crate::report;
use crate::scope;
#[cfg(feature = "sites")]
use crate::sites;
use crate::spec::{self, Canonical, Spec, SpecError};
use crate::sys;
use crate::text::{Quoted, StackBuf};

/// The error from [`configure_injection`]: which field of the spec is wrong
/// and what it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(error: &SpecError<'_>) -> ConfigError {
        ConfigError {
            message: error.to_string(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid injection spec: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[doc = include_str!("../docs/injection-grammar.md")]
pub fn configure_injection(spec: &str) -> Result<(), ConfigError> {
    let parsed = spec::parse(spec.as_bytes()).map_err(|e| ConfigError::new(&e))?;
    if install(&parsed, Origin::Api) {
        Ok(())
    } else {
        // The state file of `sites=` could not be opened or read, or the
        // `sites` feature is off.
        Err(ConfigError {
            message: if cfg!(feature = "sites") {
                "sites: cannot open or read the state file; injection stays off"
            } else {
                "sites= and stack= need mayfail's `sites` feature; injection stays off"
            }
            .to_owned(),
        })
    }
}

/// Checks a spec in the grammar of `MAYFAIL_INJECT` without turning
/// anything on: what [`configure_injection`] would say about it. The
/// `mayfail` runner checks `--inject` with it before running a command.
///
/// ```
/// assert!(mayfail::check_injection("probability=1,times=-1").is_ok());
/// assert!(mayfail::check_injection("times=-2").is_err());
/// ```
pub fn check_injection(spec: &str) -> Result<(), ConfigError> {
    spec::parse(spec.as_bytes())
        .map(|_| ())
        .map_err(|e| ConfigError::new(&e))
}

/// Turns injection by attributes off. Threads' [`fail_nth`] countdowns keep
/// running.
pub fn disable_injection() {
    inject::set_injecting(false);
}

/// Arms the current thread so that its `n`-th allocation from now fails,
/// once (the kernel's `/proc/thread-self/fail-nth`): `fail_nth(1)` fails the
/// next one. `0` disarms. Strictly per thread; allocations inside `nofail`
/// and inside mayfail's own slow path are not counted. Works whether or not
/// injection by attributes is on; while the countdown runs, nothing else is
/// injected on this thread.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// mayfail::fail_nth(1);
/// let mut v: Vec<u64> = Vec::new();
/// assert!(v.try_reserve(8).is_err());
/// assert_eq!(mayfail::fail_nth_pending(), 0); // it fired
/// ```
pub fn fail_nth(n: u64) {
    crash::install_handlers();
    let was = scope::replace_fail_nth(n);
    match (was != 0, n != 0) {
        (false, true) => engaged::arm_thread(),
        (true, false) => engaged::disarm_thread(),
        _ => {}
    }
}

/// What is left of the current thread's [`fail_nth`] countdown: `0` means it
/// fired (or was never armed).
pub fn fail_nth_pending() -> u64 {
    scope::fail_nth_left()
}

/// Makes the current thread's next fail-nth countdown persistent (a sweep's
/// persistent mode) or not, ending an exhausted state left by the last one.
pub(crate) fn set_persistent(persistent: bool) {
    if scope::exhausted() {
        engaged::disarm_thread();
    }
    scope::set_persistent(persistent);
}

/// Reads `MAYFAIL_INJECT`; called once, from the first allocation.
pub(crate) fn read_env() {
    let Some(value) = sys::getenv(c"MAYFAIL_INJECT") else {
        return;
    };
    match spec::parse(value) {
        Ok(parsed) => {
            install(&parsed, Origin::Env);
        }
        Err(error) => {
            report::ignoring_env(
                "MAYFAIL_INJECT",
                value,
                format_args!("{error}; injection stays off"),
            );
        }
    }
}

/// Installs a parsed spec; `false` if its `sites=` file cannot be used, in
/// which case injection stays off.
fn install(s: &Spec, origin: Origin) -> bool {
    inject::set_injecting(false);
    #[cfg(feature = "sites")]
    if !sites::install(s) {
        return false;
    }
    #[cfg(not(feature = "sites"))]
    if s.sites_len != 0 || s.stack != 0 {
        sys::write_stderr(
            b"mayfail: sites= and stack= need mayfail's `sites` feature; injection stays off\n",
        );
        return false;
    }
    let seed = inject::set_attributes(s, origin);
    // The site walk learns each process's fate from the signal handlers.
    if s.report || s.verbose > 0 || s.sites_len != 0 {
        crash::install_handlers();
    }
    if s.verbose > 0 {
        let mut canonical = StackBuf::<1024>::new();
        let _ = write!(canonical, "{}", Canonical { spec: s, seed });
        let mut line = StackBuf::<2048>::new();
        let _ = write!(
            line,
            "mayfail: injecting allocation failures: MAYFAIL_INJECT={}",
            Quoted(canonical.as_bytes())
        );
        sys::write_stderr(line.finish_line());
    }
    inject::set_injecting(true);
    true
}

const UNREAD: u8 = 0;
const READING: u8 = 1;
const READ: u8 = 2;
static INJECT_ENV: AtomicU8 = AtomicU8::new(UNREAD);

/// Reads `MAYFAIL_INJECT` if nobody has yet; whether it has been read. A
/// thread that finds another one reading does not wait (the reader never
/// allocates, so this cannot be the same thread re-entering).
pub(crate) fn read_env_once() -> bool {
    if INJECT_ENV.load(Relaxed) == UNREAD
        && INJECT_ENV
            .compare_exchange(UNREAD, READING, Relaxed, Relaxed)
            .is_ok()
    {
        read_env();
        INJECT_ENV.store(READ, Relaxed);
    }
    INJECT_ENV.load(Relaxed) == READ
}
