//! The background reclaimer (the kernel's kswapd): a thread that runs the
//! reclaimers before anything fails, when the heap limit's count passes its
//! soft mark (`MAYFAIL_LIMIT_SOFT`, 90 % of the limit by default) and when
//! the kernel reports memory pressure (PSI).
//!
//! Started by the first [`add_reclaimer`](crate::add_reclaimer) (outside the
//! allocator, so it may create a thread), it waits in `poll` on an `eventfd`
//! that an allocation writes to when it takes the count past the soft mark
//! (once until the thread has run: no lock, never blocking the allocating
//! thread), and on the pressure file: the cgroup's `memory.pressure` on
//! cgroup v2, else `/proc/pressure/memory` (`MAYFAIL_PRESSURE_FILE` names
//! another). It writes a trigger (`MAYFAIL_PRESSURE`, by default `some
//! 150000 1000000`: tasks stalled on memory for 150 ms within 1 s; `off`
//! turns the watch off) and waits for `POLLPRI`; where the kernel refuses
//! triggers, it reads the file's cumulative `total=` stall time once per
//! window and fires when it grew by the threshold, the same rule.
//!
//! Above the soft mark it runs passes over the reclaimers, telling them how
//! many bytes the count is above the mark, until it is below or a pass frees
//! nothing (at most 16 passes per wake-up). On pressure it runs one pass,
//! asking for an eighth of the counted heap (at least 1 MiB). Reclaimers run
//! on this thread under the "in reclaim" mark, as on a failing one: their
//! own allocations are served, never retried, and may pass the limit. Its
//! stack is 2 MiB, a `std` thread's default, and it takes no signal (all
//! are blocked in it).
//!
//! The thread allocates nothing itself while it waits or reads the files
//! (stack buffers); it runs in a `noretry` scope should anything it calls
//! allocate.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};

use crate::cgroup;
use crate::limit;
use crate::scope::ReclaimGuard;
use crate::stats::{COUNTERS, HEAP, bump};
use crate::sys;
use crate::text::{StackBuf, parse_u64};

static STARTED: AtomicBool = AtomicBool::new(false);

/// The thread's stack: the reclaimers run on it, so as large as a `std`
/// thread's by default, 2 MiB (reserved address space, mostly never
/// touched).
const STACK_BYTES: usize = 2 << 20;

/// At most this many passes per soft-mark wake-up.
const SOFT_PASSES: usize = 16;

/// A pressure trigger: stall time within a window, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Trigger {
    /// `some` (a task stalled) rather than `full` (all stalled).
    pub(crate) some: bool,
    pub(crate) stall_us: u64,
    pub(crate) window_us: u64,
}

const DEFAULT_TRIGGER: Trigger = Trigger {
    some: true,
    stall_us: 150_000,
    window_us: 1_000_000,
};

/// `MAYFAIL_PRESSURE`: `off`, or `some|full STALL_US WINDOW_US` with the
/// stall at most the window and the window from 0.5 s to 10 s (the kernel's
/// bounds). `Ok(None)` is `off`.
pub(crate) fn parse_trigger(s: &[u8]) -> Result<Option<Trigger>, ()> {
    let s = s.trim_ascii();
    if s.eq_ignore_ascii_case(b"off") {
        return Ok(None);
    }
    let mut words = s
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let some = match words.next() {
        Some(b"some") => true,
        Some(b"full") => false,
        _ => return Err(()),
    };
    let stall_us = words.next().and_then(parse_u64).ok_or(())?;
    let window_us = words.next().and_then(parse_u64).ok_or(())?;
    if words.next().is_some()
        || stall_us == 0
        || stall_us > window_us
        || !(500_000..=10_000_000).contains(&window_us)
    {
        return Err(());
    }
    Ok(Some(Trigger {
        some,
        stall_us,
        window_us,
    }))
}

/// Starts the thread once per process: a bare POSIX thread with every
/// signal blocked, created inside a `noretry` scope, as the watchdog's. `run` is one pass over the
/// reclaimers (`reclaim::run`).
pub(crate) fn start(run: fn(usize) -> usize) {
    if STARTED.swap(true, Relaxed) {
        return;
    }
    let _noretry = crate::scope::noretry_guard();
    forget_in_forked_children();
    // SAFETY: `entry` never unwinds and runs for the rest of the process;
    // the argument is a function pointer, which lives for the whole
    // program.
    let created = unsafe { sys::spawn_detached(entry, run as *mut libc::c_void, STACK_BYTES) };
    if !created {
        STARTED.store(false, Relaxed);
    }
}

/// The pressure trigger's descriptor while the thread holds one (-1:
/// none), for a forked child to close.
static TRIGGER_FD: AtomicI32 = AtomicI32::new(-1);

/// A forked child has no copy of the thread: it forgets the parent's
/// (its `eventfd`, its trigger's descriptor, the wake-up), so that its
/// allocations never wake the parent's thread and its next
/// [`add_reclaimer`](crate::add_reclaimer) starts a thread of its own.
/// Registered once, with `pthread_atfork`, when the thread is first
/// started (outside the allocator: registering may allocate).
fn forget_in_forked_children() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn in_child() {
        limit::forget_wake_fd();
        let fd = TRIGGER_FD.swap(-1, Relaxed);
        if fd >= 0 {
            // SAFETY: the child's copy of the parent's descriptor, closed
            // once (the swap above took it).
            unsafe { libc::close(fd) };
        }
        STARTED.store(false, Relaxed);
    }
    // Miri models no fork, and no `pthread_atfork`.
    if !REGISTERED.swap(true, Relaxed) && !cfg!(miri) {
        // SAFETY: registers a child handler that is an `extern "C" fn`
        // taking nothing, safe to run in a forked child (atomics and
        // `close` only); no prepare or parent handler.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    }
}

extern "C" fn entry(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `start` passed a `fn(usize) -> usize` as the argument.
    let run: fn(usize) -> usize = unsafe { core::mem::transmute(arg) };
    sys::name_this_thread(c"mayfail-reclaim");
    // Nothing in `serve` panics (reclaimers run under `catch_unwind`);
    // should it, the thread stops instead of unwinding into C.
    let _ = std::panic::catch_unwind(|| serve(run));
    core::ptr::null_mut()
}

/// How the thread learns of pressure.
// One value on the thread's stack for its whole life: the size does not matter.
#[allow(clippy::large_enum_variant)]
enum Watch {
    None,
    /// The kernel's trigger on this descriptor: `POLLPRI`.
    Kernel(i32),
    /// Reading the file's `total=` once per window.
    Polling {
        path: cgroup::Path,
        trigger: Trigger,
        last_total: Option<u64>,
    },
}

fn serve(run: fn(usize) -> usize) {
    let _noretry = crate::scope::noretry_guard();
    // SAFETY: eventfd has no memory preconditions.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if wake >= 0 {
        limit::set_wake_fd(wake);
    }
    let mut watch = open_watch();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: wake,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if let Watch::Kernel(fd) = watch {
                    fd
                } else {
                    -1
                },
                events: libc::POLLPRI,
                revents: 0,
            },
        ];
        let timeout_ms = match &watch {
            Watch::Polling { trigger, .. } => (trigger.window_us / 1000) as i32,
            _ => 1000,
        };
        // SAFETY: `fds` is a valid array of two pollfd (negative fds are
        // ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n < 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut count = 0u64;
            // SAFETY: reads the eventfd's 8-byte counter into `count`.
            unsafe { libc::read(wake, (&raw mut count).cast(), 8) };
            soft_passes(run);
        }
        let pressure = match &mut watch {
            Watch::Kernel(fd) => {
                if fds[1].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                    TRIGGER_FD.store(-1, Relaxed);
                    // SAFETY: the descriptor was opened by `open_watch`.
                    unsafe { libc::close(*fd) };
                    watch = Watch::None;
                    false
                } else {
                    fds[1].revents & libc::POLLPRI != 0
                }
            }
            Watch::Polling {
                path,
                trigger,
                last_total,
            } => {
                let total = stall_total(path, trigger.some);
                let fired = matches!((*last_total, total), (Some(before), Some(now))
                    if now.saturating_sub(before) >= trigger.stall_us);
                *last_total = total;
                fired
            }
            Watch::None => false,
        };
        if pressure {
            pressure_pass(run);
        }
    }
}

/// Runs passes while the count is above the soft mark.
fn soft_passes(run: fn(usize) -> usize) {
    let Some(_reclaiming) = ReclaimGuard::enter() else {
        return;
    };
    for _ in 0..SOFT_PASSES {
        let over = limit::above_soft_mark();
        if over == 0 {
            return;
        }
        bump(&COUNTERS.soft_reclaims);
        if run(usize::try_from(over).unwrap_or(usize::MAX)) == 0 {
            return;
        }
    }
}

/// One pass on memory pressure.
fn pressure_pass(run: fn(usize) -> usize) {
    let Some(_reclaiming) = ReclaimGuard::enter() else {
        return;
    };
    let counted = HEAP.total.load(Relaxed).max(0) as u64;
    let wanted = (counted / 8).max(1 << 20);
    bump(&COUNTERS.pressure_reclaims);
    run(usize::try_from(wanted).unwrap_or(usize::MAX));
}

/// Sets up the pressure watch from `MAYFAIL_PRESSURE` and
/// `MAYFAIL_PRESSURE_FILE`; a bad value gets one line and the default.
fn open_watch() -> Watch {
    let trigger = match sys::getenv(c"MAYFAIL_PRESSURE") {
        None => Some(DEFAULT_TRIGGER),
        Some(value) => parse_trigger(value).unwrap_or_else(|()| {
            crate::report::bad_env(
                "MAYFAIL_PRESSURE",
                value,
                "off, or some|full STALL_US WINDOW_US with the window from 500000 to 10000000 \
                 microseconds (some 150000 1000000)",
                format_args!("some 150000 1000000"),
            );
            Some(DEFAULT_TRIGGER)
        }),
    };
    let Some(trigger) = trigger else {
        return Watch::None;
    };
    let path = match sys::getenv(c"MAYFAIL_PRESSURE_FILE") {
        Some(file) => {
            let mut path = cgroup::Path::new();
            if !path.push(file) {
                return Watch::None;
            }
            path
        }
        None => cgroup::pressure_file(),
    };
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            path.as_c_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 && is_pressure_file(fd) {
        let mut text = StackBuf::<64>::new();
        let _ = write!(
            text,
            "{} {} {}",
            if trigger.some { "some" } else { "full" },
            trigger.stall_us,
            trigger.window_us
        );
        let bytes = text.as_bytes();
        // SAFETY: writes `bytes` to the open descriptor.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written == bytes.len() as isize {
            TRIGGER_FD.store(fd, Relaxed);
            return Watch::Kernel(fd);
        }
    }
    if fd >= 0 {
        // SAFETY: opened above, closed once.
        unsafe { libc::close(fd) };
    }
    let last_total = stall_total(&path, trigger.some);
    if last_total.is_none() {
        return Watch::None;
    }
    Watch::Polling {
        path,
        trigger,
        last_total,
    }
}

/// Whether `fd` is one of the kernel's pressure files (procfs or cgroupfs,
/// not a regular file on disk).
fn is_pressure_file(fd: i32) -> bool {
    // SAFETY: an all-zero statfs is valid storage for fstatfs to fill.
    let mut fs: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is open; `fs` is writable.
    if unsafe { libc::fstatfs(fd, &mut fs) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    let kind = fs.f_type as i64;
    #[allow(clippy::unnecessary_cast)]
    let matches = kind == libc::PROC_SUPER_MAGIC as i64
        || kind == libc::CGROUP2_SUPER_MAGIC as i64
        || kind == libc::CGROUP_SUPER_MAGIC as i64;
    matches
}

/// The cumulative stall time (`total=`, microseconds) of the `some` or
/// `full` line of a pressure file.
fn stall_total(path: &cgroup::Path, some: bool) -> Option<u64> {
    let prefix: &[u8] = if some { b"some " } else { b"full " };
    let mut total = None;
    cgroup::for_each_line(path.as_c_ptr(), |line| {
        if let Some(rest) = line.strip_prefix(prefix) {
            total = rest
                .split(|&b| b == b' ')
                .find_map(|field| field.strip_prefix(b"total="))
                .and_then(parse_u64);
            return false;
        }
        true
    });
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_parse_within_the_kernels_bounds() {
        assert_eq!(parse_trigger(b"off"), Ok(None));
        assert_eq!(
            parse_trigger(b"some 150000 1000000"),
            Ok(Some(DEFAULT_TRIGGER))
        );
        assert_eq!(
            parse_trigger(b" full  100000 2000000 "),
            Ok(Some(Trigger {
                some: false,
                stall_us: 100_000,
                window_us: 2_000_000
            }))
        );
        for bad in [
            &b""[..],
            b"some",
            b"some 1",
            b"any 1 1000000",
            b"some 0 1000000",
            b"some 2000000 1000000",
            b"some 1000 100000",
            b"some 1000 20000000",
            b"some 1 1000000 7",
        ] {
            assert_eq!(
                parse_trigger(bad),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
