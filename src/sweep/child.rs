//! A sweep's children: forking one per allocation point, what runs in the
//! child (warm-up, the armed countdown, leak tracking, the report over a
//! pipe), and watching them from the parent (output, exit status, timeout).
//!
//! Only [`on_injected`] runs inside the allocator (in the child): it writes
//! one line of raw addresses to the pipe and re-arms the countdown, without
//! allocating.
//!
//! The parent trusts nothing it reads from the pipe: every number is parsed
//! strictly and bounded, and a report that makes no sense (an operation that
//! arms `fail_nth` itself, a forked process writing to the pipe) is reported
//! as such rather than believed. Only the sweep's own child speaks the
//! protocol: a process the operation forks inherits the pipe and the
//! countdown, and stays silent. The child keeps its end of the pipe at a
//! high descriptor number and checks before every write (device and inode)
//! that the number is still the pipe; if the operation closed it or put a
//! file of its own there, the child opens the pipe again through the
//! parent's read end (`/proc/PID/fd/N`), so the operation's files stay its
//! own and the parent still hears from the child.
//!
//! The parent owns its children's lifetimes: `SIGCHLD` is set back to its
//! default for the sweep's duration if the process ignores it (otherwise the
//! kernel reaps children by itself and their exit status is lost), and a
//! child that overruns the timeout is killed through a pidfd, which can
//! never reach another process that reused the pid.

use std::any::Any;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};

use super::Sweep;
use super::watch::{Child, Ended, Run, poll_children};
use crate::text::StackBuf;
use crate::{configure, crash, inject, record, symbols, sys, track};

/// In a sweep's child: the pipe to the parent (`-1` elsewhere), at a high
/// number (see [`pipe_fd`]).
static CHILD_FD: AtomicI32 = AtomicI32::new(-1);
/// In a sweep's child: the pipe's identity (device and inode), and where to
/// open it again: the parent's pid and its number for the read end.
static PIPE_DEVICE: AtomicU64 = AtomicU64::new(0);
static PIPE_INODE: AtomicU64 = AtomicU64::new(0);
static PARENT_PID: AtomicI32 = AtomicI32::new(0);
static PARENT_READ_FD: AtomicI32 = AtomicI32::new(-1);
/// In a sweep's child: its pid. A process the operation forks has another
/// one, and must not speak the protocol.
static CHILD_PID: AtomicI32 = AtomicI32::new(0);
/// In a sweep's child: whether the armed countdown fired.
static FIRED: AtomicBool = AtomicBool::new(false);
/// Set while [`mayfail_is_global`] probes: its injected failure is nobody's
/// point (it matters when a sweep runs inside a sweep's child).
static PROBING: AtomicBool = AtomicBool::new(false);

impl Sweep {
    /// Runs one child per point (`0` = count only), `jobs` at a time. A run
    /// that hangs is tried once more alone: a fork can inherit a lock that
    /// another thread held at that moment, which hangs the child for a
    /// reason that has nothing to do with the operation.
    pub(super) fn run_children<R>(&self, f: &impl Fn() -> R, points: &[u64]) -> Vec<Run> {
        let mut runs = self.run_batch(f, points);
        let hung: Vec<u64> = runs
            .iter()
            .filter(|r| matches!(r.ended, Ended::TimedOut))
            .map(|r| r.n)
            .collect();
        if !hung.is_empty() {
            let again = self.run_batch(f, &hung);
            for run in again {
                if let Some(slot) = runs.iter_mut().find(|r| r.n == run.n) {
                    *slot = run;
                }
            }
        }
        runs
    }

    fn run_batch<R>(&self, f: &impl Fn() -> R, points: &[u64]) -> Vec<Run> {
        let mut pending = points.iter().copied();
        let mut running: Vec<Child> = Vec::new();
        let mut done: Vec<Run> = Vec::new();
        loop {
            while running.len() < self.jobs {
                let Some(n) = pending.next() else { break };
                match self.fork_child(f, n) {
                    Some(child) => running.push(child),
                    None => return done,
                }
            }
            if running.is_empty() {
                break;
            }
            poll_children(&mut running);
            let mut i = 0;
            while i < running.len() {
                if let Some(run) = running[i].try_finish(self.timeout) {
                    done.push(run);
                    running.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
        done.sort_by_key(|r| r.n);
        done
    }

    fn fork_child<R>(&self, f: &impl Fn() -> R, n: u64) -> Option<Child> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        let [read, write] = fds;
        let parent = sys::getpid();
        // SAFETY: fork has no preconditions; the child only runs `child_main`
        // and exits without returning.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            // SAFETY: both descriptors are open.
            unsafe {
                libc::close(read);
                libc::close(write);
            }
            return None;
        }
        if pid == 0 {
            // SAFETY: `read` is open in the child too.
            unsafe { libc::close(read) };
            PARENT_PID.store(parent, Relaxed);
            PARENT_READ_FD.store(read, Relaxed);
            self.child_main(f, n, write);
        }
        // SAFETY: `write` is the child's end; `read` becomes non-blocking.
        unsafe {
            libc::close(write);
            libc::fcntl(read, libc::F_SETFL, libc::O_NONBLOCK);
        }
        Some(Child::new(n, pid, read))
    }

    /// In the child: run the operation and report; never returns.
    fn child_main<R>(&self, f: &impl Fn() -> R, n: u64, fd: i32) -> ! {
        let me = sys::getpid();
        // Quiet: the parent reads the pipe, not the child's output.
        // SAFETY: plain descriptor operations on descriptors we own.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if null >= 0 {
                libc::dup2(null, 1);
                libc::dup2(null, 2);
                libc::close(null);
            }
        }
        quiet_backtraces();
        CHILD_PID.store(me, Relaxed);
        // Out of the way of the operation's own descriptors.
        let fd = sys::move_descriptor_high(fd);
        let id = sys::file_id(fd).unwrap_or(sys::FileId {
            device: 0,
            inode: 0,
        });
        PIPE_DEVICE.store(id.device, Relaxed);
        PIPE_INODE.store(id.inode, Relaxed);
        CHILD_FD.store(fd, Relaxed);
        FIRED.store(false, Relaxed);
        PROBING.store(false, Relaxed);
        // The parent reports; the site walk of a surrounding `mayfail sites`
        // does not fail this child's allocations.
        crash::silence();
        crash::on_abort_stack(on_abort);
        inject::set_stack_filter(None);
        inject::observe(on_injected);
        if self.warm_up {
            let warm = catch_unwind(AssertUnwindSafe(|| drop(f())));
            leave_unless(me);
            if let Err(payload) = warm {
                send(&format!("PANICKED\t0\t-\t{}\n", panic_message(&*payload)));
                exit_child(0);
            }
        }
        make_room_for_output();
        let tracking = track::start();
        // The run's failures start a record of their own (the parent's probe
        // left one behind).
        record::forget();
        configure::set_persistent(self.persistent);
        let armed = if n == 0 { u64::MAX } else { n };
        configure::fail_nth(armed);
        let result = catch_unwind(AssertUnwindSafe(|| drop(f())));
        let left = configure::fail_nth_pending();
        configure::fail_nth(0);
        // Memory comes back for the report (persistent mode).
        configure::set_persistent(false);
        let mut leaked = if tracking { track::live() } else { None };
        if n != 0 && result.is_ok() && matches!(leaked, Some((bytes, _)) if bytes > 0) {
            leaked = self.leaked_again(f, n, leaked);
        }
        if tracking {
            track::stop();
        }
        // A process the operation forked returns here too: only the sweep's
        // child reports.
        leave_unless(me);
        let fired = FIRED.load(Relaxed) as u8;
        let message = match result {
            Ok(()) => {
                let leak = match leaked {
                    Some((bytes, blocks)) => format!("{bytes}\t{blocks}"),
                    None if tracking => "overflow\t-".to_owned(),
                    None => "unmapped\t-".to_owned(),
                };
                format!("RETURNED\t{fired}\t{left}\t{leak}\n")
            }
            Err(payload) => format!("PANICKED\t{fired}\t{left}\t{}\n", panic_message(&*payload)),
        };
        send(&message);
        exit_child(0)
    }
}

impl Sweep {
    /// The leak rule. A failing run may leave memory that is not a leak:
    /// what the error path keeps per thread or per process (a logger's
    /// record buffer grown by a warning, a "last error" slot filled or
    /// replaced), filled on the first failure only. So the point runs once
    /// more, with the same blocks tracked on, and what the first run left
    /// (`first`) is a leak only if the live set grows again: the second
    /// run's growth is what is reported (`None` if it overflowed the table
    /// or panicked, in which case the first run's figure stands).
    fn leaked_again<R>(
        &self,
        f: &impl Fn() -> R,
        n: u64,
        first: Option<(u64, u64)>,
    ) -> Option<(u64, u64)> {
        let me = sys::getpid();
        configure::set_persistent(self.persistent);
        configure::fail_nth(n);
        let again = catch_unwind(AssertUnwindSafe(|| drop(f())));
        configure::fail_nth(0);
        configure::set_persistent(false);
        leave_unless(me);
        let (Ok(()), Some((bytes, blocks)), Some((first_bytes, first_blocks))) =
            (again, track::live(), first)
        else {
            return first;
        };
        Some((
            bytes.saturating_sub(first_bytes),
            blocks.saturating_sub(first_blocks),
        ))
    }
}

/// Room made in the buffer the test harness captures output into, before
/// the operation's blocks are tracked.
const OUTPUT_ROOM: usize = 256 << 10;

/// Zero bytes (valid UTF-8) to print: read-only, never touched but to copy.
static FILLER: [u8; OUTPUT_ROOM] = [0; OUTPUT_ROOM];

/// In the child, before tracking: makes room in the buffers that output
/// goes through, so that what the operation prints does not grow them while
/// its blocks are tracked. Under libtest's capture (no `--nocapture`),
/// `print!` and `eprint!` (and a logger that uses them) append to the
/// test's capture buffer, a `Vec<u8>` the harness owns: without room, it
/// grows on every failing run, which the leak rule would blame on the
/// operation. Its contents are this child's and are never shown, so
/// [`OUTPUT_ROOM`] bytes are written, then one more: a `Vec` grown to the
/// exact length a write needs doubles on the next byte, leaving at least
/// `OUTPUT_ROOM` bytes free. Whether the byte grew it is counted with the
/// thread's countdown; a buffer that had room already is written again, a
/// few times at most. Without capture the bytes go to `/dev/null` through
/// stdout's line writer, which sends a write that large straight through
/// without buffering it (it is set up here, too, if it was not yet).
fn make_room_for_output() {
    let Ok(filler) = core::str::from_utf8(&FILLER) else {
        return;
    };
    for _ in 0..4 {
        configure::fail_nth(u64::MAX);
        print!("{filler}");
        let after_room = configure::fail_nth_pending();
        print!("\0");
        let after_byte = configure::fail_nth_pending();
        configure::fail_nth(0);
        let (room_grew, byte_grew) = (after_room != u64::MAX, after_byte != after_room);
        // Grown by the byte: the room is there. Grown by neither: the
        // output is not captured.
        if byte_grew || !room_grew {
            return;
        }
    }
}

/// Ends a process the operation forked (it is not `me`, the sweep's child),
/// silently.
fn leave_unless(me: libc::pid_t) {
    if sys::getpid() != me {
        exit_child(0);
    }
}

/// In the child, before anything runs: no backtrace from std. With
/// `RUST_BACKTRACE` set, std symbolises a backtrace for every panic and for
/// every `handle_alloc_error` before it aborts, into the child's discarded
/// stderr: tens of milliseconds per point. A quiet panic hook covers panics;
/// `RUST_BACKTRACE=0` covers the abort path, unless std has already read the
/// variable in the parent (it keeps the first value it reads: a panic printed
/// by std's default hook before the sweep reads it). `std::backtrace`
/// captures the operation makes keep the setting they had, through
/// `RUST_LIB_BACKTRACE`.
fn quiet_backtraces() {
    std::panic::set_hook(Box::new(|_| {}));
    let Some(value) = std::env::var_os("RUST_BACKTRACE") else {
        return;
    };
    // SAFETY: a forked child has exactly one thread (the one that called
    // fork), so nothing can read the environment while it changes.
    unsafe {
        if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
            std::env::set_var("RUST_LIB_BACKTRACE", value);
        }
        std::env::set_var("RUST_BACKTRACE", "0");
    }
}

fn exit_child(code: i32) -> ! {
    // SAFETY: _exit ends the child without running the parent's atexit
    // handlers or flushing its buffers twice.
    unsafe { libc::_exit(code) }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_owned());
    text.replace(['\n', '\t'], " ")
}

fn send(text: &str) {
    let fd = pipe_fd();
    if fd >= 0 {
        sys::write_fd(fd, text.as_bytes());
    }
}

/// The pipe to the parent, checked to be still the pipe (device and
/// inode), or opened again through the parent's read end
/// (`/proc/PID/fd/N`); `-1` if it cannot be. An operation that closes its
/// inherited descriptors or `dup2`s its own files over them keeps its files
/// to itself, and the parent still hears from the child. Async-signal-safe,
/// no allocation.
fn pipe_fd() -> i32 {
    let fd = CHILD_FD.load(Relaxed);
    let pipe = sys::FileId {
        device: PIPE_DEVICE.load(Relaxed),
        inode: PIPE_INODE.load(Relaxed),
    };
    if fd < 0 || sys::file_id(fd) == Some(pipe) {
        return fd;
    }
    let mut path = StackBuf::<64>::new();
    let _ = write!(
        path,
        "/proc/{}/fd/{}\0",
        PARENT_PID.load(Relaxed),
        PARENT_READ_FD.load(Relaxed)
    );
    // SAFETY: a NUL-terminated path in `path`.
    let opened = unsafe {
        libc::open(
            path.as_bytes().as_ptr().cast(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if opened < 0 {
        return -1;
    }
    if sys::file_id(opened) != Some(pipe) {
        // SAFETY: `opened` is ours.
        unsafe { libc::close(opened) };
        return -1;
    }
    let opened = sys::move_descriptor_high(opened);
    if CHILD_FD
        .compare_exchange(fd, opened, Relaxed, Relaxed)
        .is_err()
    {
        // Another thread opened it again first.
        // SAFETY: `opened` is ours.
        unsafe { libc::close(opened) };
        return CHILD_FD.load(Relaxed);
    }
    opened
}

/// Observes every injected failure in a sweep's child: tells the parent
/// where, once, and re-arms the countdown so that the run's later
/// allocations are counted too (the parent compares the totals). Runs
/// inside the allocator: never allocates.
fn on_injected(_verbose: u8) {
    if CHILD_FD.load(Relaxed) < 0
        || PROBING.load(Relaxed)
        || sys::getpid() != CHILD_PID.load(Relaxed)
    {
        return;
    }
    if FIRED.swap(true, Relaxed) {
        return;
    }
    // The countdown fired (it is 0 now): count on, with one that never does.
    configure::fail_nth(u64::MAX);
    // Raw addresses only: the parent, whose symbol cache persists across
    // children, turns them into names.
    let mut line = StackBuf::<2048>::new();
    let _ = line.write_str("SITE\t");
    record::write_frames(&mut line);
    let _ = line.write_str("\tFAILED\t");
    record::write_failure(&mut line);
    let fd = pipe_fd();
    if fd >= 0 {
        crate::sys::write_fd(fd, line.finish_line());
    }
}

/// In a sweep's child, from the signal handler of an abort: tells the parent
/// the abort's stack (raw addresses, resolved there). Never allocates.
fn on_abort() {
    let fd = pipe_fd();
    if fd < 0 || sys::getpid() != CHILD_PID.load(Relaxed) {
        return;
    }
    let mut frames = [0usize; symbols::MAX_FRAMES];
    let depth = symbols::walk(&mut frames);
    let frames = &frames[..depth];
    let mut line = StackBuf::<2048>::new();
    let _ = line.write_str("ABORT\t");
    for (i, ip) in frames.iter().enumerate() {
        let _ = write!(line, "{}{ip:x}", if i == 0 { "" } else { "," });
    }
    crate::sys::write_fd(fd, line.finish_line());
}

/// Whether allocations of this thread go through `MayFail`: a fail-nth
/// countdown of 1 must fail the next one.
pub(super) fn mayfail_is_global() -> bool {
    PROBING.store(true, Relaxed);
    configure::fail_nth(1);
    let mut probe: Vec<u8> = Vec::new();
    let failed = probe.try_reserve(1).is_err();
    configure::fail_nth(0);
    PROBING.store(false, Relaxed);
    failed
}

/// Resolves one symbol, so that the symbol cache is loaded before children
/// are forked (they inherit it).
pub(super) fn warm_symbols() {
    symbols::resolve(warm_symbols as *const () as usize, |_| {});
}
