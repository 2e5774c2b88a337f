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
use core::sync::atomic::{
    AtomicU8, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
};

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
    // Outside the allocator: see `symbols::register_fork_handlers`.
    crate::symbols::register_fork_handlers();
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
/// injected on this thread. A countdown still running when its thread
/// exits (or in a forked child, on the threads that did not fork) ends with
/// it: the process's other allocations are not slowed by it.
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
    crate::symbols::register_fork_handlers();
    crash::install_handlers();
    if n != 0 {
        release_at_thread_exit();
    }
    let was = scope::replace_fail_nth(n);
    match (was != 0, n != 0) {
        (false, true) => engaged::arm_thread(),
        (true, false) => engaged::disarm_thread(),
        _ => {}
    }
}

/// Whether the current thread is counted in the engaged word's armed
/// threads: its countdown runs, or a persistent one fired and left it
/// exhausted.
fn holds_arm() -> bool {
    scope::fail_nth_left() != 0 || scope::exhausted()
}

/// Gives the thread's arm back when it exits with a countdown still running
/// (or exhausted): otherwise the engaged word would stay raised for a thread
/// that no longer exists, and every allocation of the process would take
/// the engaged path from then on. A `pthread` key's destructor, which glibc
/// runs after the thread's `thread_local!` destructors: a countdown armed
/// as the thread's body ends still fires in those (they allocate like any
/// code). Called only from the public API, never inside the allocator:
/// creating the key and setting its value may allocate.
fn release_at_thread_exit() {
    unsafe extern "C" fn release(_: *mut core::ffi::c_void) {
        if holds_arm() {
            scope::replace_fail_nth(0);
            scope::set_persistent(false);
            engaged::disarm_thread();
        }
    }
    /// The key plus one (0: not created yet).
    static KEY: AtomicUsize = AtomicUsize::new(0);
    let mut key = KEY.load(Acquire);
    if key == 0 {
        let mut created: libc::pthread_key_t = 0;
        // SAFETY: `created` is a valid out-pointer; the destructor is an
        // `extern "C"` function of the type glibc calls, which touches only
        // atomics and the thread's destructor-free state.
        if unsafe { libc::pthread_key_create(&mut created, Some(release)) } != 0 {
            return;
        }
        key = created as usize + 1;
        if let Err(first) = KEY.compare_exchange(0, key, AcqRel, Acquire) {
            // Another thread created one first: use that one.
            // SAFETY: `created` was created just above and never set.
            unsafe { libc::pthread_key_delete(created) };
            key = first;
        }
    }
    // Any non-null value makes glibc call the destructor at thread exit.
    // SAFETY: the key was created by `pthread_key_create` and is never
    // deleted once published; the value is never dereferenced.
    unsafe {
        libc::pthread_setspecific(
            (key - 1) as libc::pthread_key_t,
            core::ptr::NonNull::<u8>::dangling().as_ptr().cast(),
        )
    };
    release_in_forked_children();
}

/// In a forked child only the forking thread exists: the armed count
/// becomes that thread's own, so the other threads' countdowns (which will
/// never end there) do not keep the child's allocations on the engaged
/// path. Registered once, on the first arm, with `pthread_atfork`; the
/// handler touches only atomics and the thread's own state.
fn release_in_forked_children() {
    static REGISTERED: AtomicU8 = AtomicU8::new(0);
    extern "C" fn in_child() {
        engaged::set_armed_threads(u32::from(holds_arm()));
    }
    // Miri models no fork, and no `pthread_atfork`.
    if REGISTERED.swap(1, Relaxed) == 0 && !cfg!(miri) {
        // SAFETY: registers a child handler that is an `extern "C" fn`
        // taking nothing, safe to run in a forked child (atomics and a
        // destructor-free thread-local only); no prepare or parent handler.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    }
}

/// What is left of the current thread's [`fail_nth`] countdown: `0` means it
/// fired (or was never armed).
pub fn fail_nth_pending() -> u64 {
    scope::fail_nth_left()
}

/// Makes the current thread's next fail-nth countdown persistent (a sweep's
/// persistent mode) or not, ending an exhausted state left by the last one.
#[cfg_attr(not(feature = "sweep"), allow(dead_code))]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Both tests read the process-wide count of armed threads: one at a
    /// time.
    static ARMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    #[cfg_attr(miri, ignore = "fail_nth installs the crash report's signal handlers")]
    fn a_thread_that_exits_with_its_countdown_running_gives_its_arm_back() {
        let _one = ARMING.lock().unwrap_or_else(|e| e.into_inner());
        let before = engaged::armed_threads();
        for persistent in [false, true] {
            std::thread::spawn(move || {
                set_persistent(persistent);
                fail_nth(if persistent { 1 } else { 1_000_000 });
                if persistent {
                    // Counted as the allocator counts one: the countdown
                    // fires and leaves the thread exhausted, still armed.
                    assert!(scope::count_allocation(engaged::generation()).nth_fired);
                    assert!(scope::exhausted());
                }
                assert_eq!(engaged::armed_threads(), before + 1);
            })
            .join()
            .unwrap();
            assert_eq!(engaged::armed_threads(), before, "persistent: {persistent}");
        }
    }

    #[cfg(not(miri))]
    #[test]
    fn a_forked_child_counts_only_its_own_thread_as_armed() {
        if crate::sys::under_valgrind() {
            eprintln!("skipped under valgrind: its forked child reports the parent's blocks");
            return;
        }
        let _one = ARMING.lock().unwrap_or_else(|e| e.into_inner());
        let before = engaged::armed_threads();
        let (armed_tx, armed_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            fail_nth(1_000_000);
            armed_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            fail_nth(0);
        });
        armed_rx.recv().unwrap();
        assert_eq!(engaged::armed_threads(), before + 1);
        // SAFETY: the child calls only async-signal-safe functions and reads
        // an atomic, then leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = if engaged::armed_threads() == 0 { 0 } else { 1 };
            // SAFETY: ends the forked child without running the parent's
            // destructors or the test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked, into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child still counted the parent's armed thread (status {status:#x})"
        );
        done_tx.send(()).unwrap();
        other.join().unwrap();
        assert_eq!(engaged::armed_threads(), before);
    }
}
