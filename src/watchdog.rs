//! The watchdog: a thread that notices a reclaimer call stuck for longer
//! than the stall threshold and says so, since the stuck thread cannot.
//!
//! Started by the first [`add_reclaimer`](crate::add_reclaimer) (outside
//! the allocator, so it may spawn a thread), it sleeps and looks at the table
//! of reclaimer calls in progress ([`RUNNING`], which `reclaim` fills) a few times per stall
//! threshold. A call running longer than the threshold gets one line naming
//! the reclaimer, the thread and the time; no knob can end such a call, and
//! the line says so. The watchdog never touches the allocator's state, takes
//! no lock and does not allocate while it watches (memory may be exhausted
//! just then); it runs in a `noretry` scope should anything it calls do so.

use core::fmt::Write;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::Duration;

use crate::config;
use crate::sys;
use crate::text::{Shown, StackBuf};

/// The reclaimer calls in progress, for the watchdog: which thread runs
/// which reclaimer since when. A fixed table of atomics: entering and leaving
/// never allocate or block; calls beyond its size are not watched.
pub(crate) struct Running {
    calls: [RunningCall; WATCHED_CALLS],
}

/// One reclaimer call in progress (`tid` 0: a free entry).
pub(crate) struct RunningCall {
    pub(crate) tid: AtomicI32,
    pub(crate) index: AtomicUsize,
    pub(crate) function: AtomicUsize,
    pub(crate) since_ns: AtomicU64,
    pub(crate) reported: AtomicBool,
}

const WATCHED_CALLS: usize = 64;

pub(crate) static RUNNING: Running = Running {
    calls: [const {
        RunningCall {
            tid: AtomicI32::new(0),
            index: AtomicUsize::new(0),
            function: AtomicUsize::new(0),
            since_ns: AtomicU64::new(0),
            reported: AtomicBool::new(false),
        }
    }; WATCHED_CALLS],
};

impl Running {
    pub(crate) fn enter(&self, index: usize, function: usize) -> Option<&RunningCall> {
        let tid = sys::gettid();
        let call = self
            .calls
            .iter()
            .find(|call| call.tid.compare_exchange(0, tid, Relaxed, Relaxed).is_ok())?;
        call.index.store(index, Relaxed);
        call.function.store(function, Relaxed);
        call.reported.store(false, Relaxed);
        call.since_ns.store(sys::now_ns(), Release);
        Some(call)
    }

    pub(crate) fn leave(&self, call: Option<&RunningCall>) {
        if let Some(call) = call {
            call.since_ns.store(0, Relaxed);
            call.tid.store(0, Release);
        }
    }

    /// The calls in progress (entries being filled may show `since_ns` 0).
    pub(crate) fn calls(&self) -> &[RunningCall] {
        &self.calls
    }
}

static STARTED: AtomicBool = AtomicBool::new(false);

/// Starts the watchdog thread once per process. It is a bare POSIX thread
/// with every signal blocked, created inside a `noretry` scope: `add_reclaimer` may run while memory is
/// exhausted, and then creating it fails cleanly (no std thread handle whose
/// allocation would abort) and a later `add_reclaimer` tries again. Without
/// it, the stalled thread's own warning still covers every stall but a
/// blocked reclaimer.
pub(crate) fn start() {
    if STARTED.swap(true, Relaxed) {
        return;
    }
    let _noretry = crate::scope::noretry_guard();
    restart_in_forked_children();
    // SAFETY: `watch_entry` never unwinds, runs for the rest of the process
    // and takes no argument.
    let created = unsafe { sys::spawn_detached(watch_entry, core::ptr::null_mut(), 128 << 10) };
    if !created {
        STARTED.store(false, Relaxed);
    }
}

/// A forked child has no copy of the thread: its next
/// [`add_reclaimer`](crate::add_reclaimer) starts one of its own.
/// Registered once, with `pthread_atfork`, when the thread is first started
/// (outside the allocator: registering may allocate).
fn restart_in_forked_children() {
    static REGISTERED: AtomicBool = AtomicBool::new(false);
    extern "C" fn in_child() {
        STARTED.store(false, Relaxed);
    }
    // Miri models no fork, and no `pthread_atfork`.
    if !REGISTERED.swap(true, Relaxed) && !cfg!(miri) {
        // SAFETY: registers a child handler that is an `extern "C" fn`
        // taking nothing, safe to run in a forked child (one atomic store);
        // no prepare or parent handler.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    }
}

extern "C" fn watch_entry(_arg: *mut libc::c_void) -> *mut libc::c_void {
    sys::name_this_thread(c"mayfail-watch");
    // Nothing in `watch` panics; should it, the thread stops instead of
    // unwinding into C.
    let _ = std::panic::catch_unwind(watch);
    core::ptr::null_mut()
}

fn watch() {
    // Memory may be exhausted when a line is due: nothing here allocates,
    // and should something, it fails at once instead of retrying.
    let _noretry = crate::scope::noretry_guard();
    loop {
        let threshold_ms = config::stall_ms();
        // Four looks per threshold, between 10 ms and 1 s apart.
        let period = if threshold_ms == 0 {
            1000
        } else {
            (threshold_ms / 4).clamp(10, 1000)
        };
        std::thread::sleep(Duration::from_millis(period));
        if threshold_ms != 0 {
            check(threshold_ms);
        }
    }
}

fn check(threshold_ms: u64) {
    let now = sys::now_ns();
    for call in RUNNING.calls() {
        let tid = call.tid.load(Acquire);
        let since = call.since_ns.load(Acquire);
        if tid == 0 || since == 0 {
            continue;
        }
        let running_ms = now.saturating_sub(since) / 1_000_000;
        if running_ms < threshold_ms || call.reported.swap(true, Relaxed) {
            continue;
        }
        let mut comm = [0u8; 16];
        let comm = thread_name(tid, &mut comm);
        let mut line = StackBuf::<400>::new();
        let _ = write!(
            line,
            "mayfail: reclaimer #{} (fn at {:#x}) has been running for {}.{:03} s on thread \
             '{}' (tid {tid}) during a failed allocation; a reclaimer must not block (one \
             waiting for a lock its own thread holds never returns), and no knob can end it",
            call.index.load(Relaxed),
            call.function.load(Relaxed),
            running_ms / 1000,
            running_ms % 1000,
            Shown(comm),
        );
        sys::write_stderr(line.finish_line());
    }
}

/// The name of thread `tid` of this process, read from `/proc` without
/// allocating.
fn thread_name(tid: libc::pid_t, buf: &mut [u8; 16]) -> &[u8] {
    let mut path = StackBuf::<48>::new();
    let _ = write!(path, "/proc/self/task/{tid}/comm\0");
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            path.as_bytes().as_ptr().cast(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return &[];
    }
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is open and ours.
    unsafe { libc::close(fd) };
    buf[..n.max(0) as usize].trim_ascii_end()
}
