//! The fork-at-site engine of `sites` mode (`sites-fork=MS`): one run of
//! a program walks every site it reaches, instead of one site per run.
//!
//! At a new site of the program's own code, a process that can fork safely
//! forks. The child fails the site, as a separate run failing that one
//! site would (it knows every stack the parent met, and fails no other),
//! and runs on to its fate; the parent waits for it, at most `MS`
//! milliseconds (then kills it: `hung`), writes the fate the child could
//! not write itself (killed by a signal mayfail does not catch, `_exit`),
//! and goes on as if the allocation had succeeded, to fork again at its
//! next new site. The forked child inherits the parent's warm symbol
//! cache: a site costs a fork and the child's own run to its end, not a
//! whole run of the program.
//!
//! A process can fork safely when it has one thread (a lock that another
//! thread holds at the fork stays held for ever in the child) and its
//! standard input is not a pipe or a socket (the child would read what the
//! parent is to read). The thread count is read before symbol resolution,
//! which runs on a thread of its own that is joined before the fork. A
//! child whose standard input is a regular file reads it through a
//! descriptor of its own, at the parent's offset, so the parent later reads
//! on from where it was.
//!
//! What a child still shares with its parent, where a separate run would
//! not: files both write (the same open file descriptions), and what the
//! parent's stdio buffered but had not written yet, which the child writes
//! again at its exit (the walk's log shows that output twice). The runner's
//! `--no-fork` walks one site per process.
//!
//! A fork inside the allocator has one hazard a fork elsewhere has not: the
//! call that allocates may hold a lock (glibc's `setlocale` holds its
//! read-write lock around `strdup`; SQLite holds a recursive mutex). Locks
//! that record their owner's thread id (glibc's read-write locks, recursive
//! and error-checking mutexes) cannot be released by the child, whose
//! thread has another id: the child then waits for ever at its next
//! attempt. The parent looks at a child that has not ended every 10 ms: one
//! seen twice in a row with one thread, waiting on a futex of its own
//! process with no time limit (nothing can ever wake it) is killed, and the
//! site is not given that fate but a `retry` line: the runner walks such
//! sites one per process, without forking, once the forking runs are done.
//!
//! A process asked to fork that cannot (or whose `fork` fails) fails its
//! site itself, as without `sites-fork`, and writes once a `no-fork` line
//! saying why.
//!
//! Everything here runs inside the allocator, on the process's only
//! thread, under the in-reclaim mark (what the fork handlers allocate is
//! served, never injected), and allocates nothing. `SIGCHLD` is blocked
//! from just before the fork until the child is reaped: a handler of the
//! program's that reaps every child cannot take the status first (the
//! signal stays pending and reaches the program afterwards, as a stray
//! `SIGCHLD` a handler must expect anyway).

use core::ffi::{CStr, c_int};
use core::fmt::Write;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering::Relaxed};
use std::borrow::Cow;

use super::append;
use crate::Outcome;
use crate::state::Line;
use crate::sys;
use crate::text::StackBuf;

/// How long the parent waits for a child before killing it, in ms (0: the
/// engine is off).
static FORK_MS: AtomicU64 = AtomicU64::new(0);
/// A page shared by the parent and its children: the pid of the last child
/// that wrote its own fate line.
static FATE_OF: AtomicPtr<AtomicI32> = AtomicPtr::new(ptr::null_mut());
/// The process that last wrote its `no-fork` line (0: none).
static NO_FORK_PID: AtomicI32 = AtomicI32::new(0);

/// What [`at_site`] did.
pub(super) enum Forked {
    /// This is the child: fail the site here.
    Child,
    /// This is the parent, and the child has ended: let the allocation
    /// succeed.
    Parent,
    /// No fork happened (said in a `no-fork` line): fail the site here.
    Not,
}

/// Turns the engine on (`ms` > 0) or off for a spec being installed.
/// Inside the allocator: no allocation.
pub(super) fn install(ms: u64) {
    if ms != 0 && FATE_OF.load(Relaxed).is_null() {
        // SAFETY: an anonymous shared mapping at an address of the kernel's
        // choice; nothing else is affected. It is never unmapped.
        let page = unsafe {
            libc::mmap(
                ptr::null_mut(),
                core::mem::size_of::<AtomicI32>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page != libc::MAP_FAILED {
            FATE_OF.store(page.cast(), Relaxed);
        }
    }
    FORK_MS.store(ms, Relaxed);
}

/// The shared slot, if there is one.
fn fate_of() -> Option<&'static AtomicI32> {
    let page = FATE_OF.load(Relaxed);
    // SAFETY: a non-null pointer is the shared mapping made in `install`,
    // zero-filled (a valid `AtomicI32`), aligned to a page, never unmapped.
    (!page.is_null()).then(|| unsafe { &*page })
}

/// Whether this process may fork at the new site it has just met (the
/// engine is on, and the process is fit to fork); says once, in a
/// `no-fork` line, why not. Called before the site's symbols are resolved
/// (resolution runs on a thread of its own).
pub(super) fn possible() -> bool {
    if FORK_MS.load(Relaxed) == 0 {
        return false;
    }
    let mut reason = StackBuf::<64>::new();
    match sys::thread_count() {
        Some(1) => {}
        Some(n) => {
            let _ = write!(reason, "{n} threads");
        }
        None => {
            let _ = reason.write_str("its thread count cannot be read");
        }
    }
    if reason.as_str().is_empty() && stdin_is_shared_stream() {
        let _ = reason.write_str("its standard input is a pipe or a socket");
    }
    if reason.as_str().is_empty() && fate_of().is_none() {
        let _ = reason.write_str("no shared page could be mapped");
    }
    if reason.as_str().is_empty() {
        return true;
    }
    say_no_fork(reason.as_str());
    false
}

/// Whether the standard input is a pipe or a socket (what one process
/// reads from it, another does not).
fn stdin_is_shared_stream() -> bool {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is writable; a closed descriptor just fails.
    let ok = unsafe { libc::fstat(libc::STDIN_FILENO, &mut st) } == 0;
    let kind = st.st_mode & libc::S_IFMT;
    ok && (kind == libc::S_IFIFO || kind == libc::S_IFSOCK)
}

/// Writes this process's `no-fork` line, once.
fn say_no_fork(reason: &str) {
    let pid = sys::getpid();
    if NO_FORK_PID.swap(pid, Relaxed) == pid {
        return;
    }
    let mut line = StackBuf::<128>::new();
    let _ = Line::NoFork {
        pid: pid.unsigned_abs(),
        reason: Cow::Borrowed(reason),
    }
    .write_to(&mut line);
    append(line.finish_line());
}

/// Forks at the site of stack `id`, which [`possible`] allowed: in the
/// child, returns at once; in the parent, waits for the child's end and
/// writes its fate if the child wrote none.
pub(super) fn at_site(id: u64) -> Forked {
    let Some(slot) = fate_of() else {
        return Forked::Not;
    };
    slot.store(0, Relaxed);
    // SAFETY: all-zero sigsets are valid storage for the calls to fill.
    let (mut chld, mut old): (libc::sigset_t, libc::sigset_t) =
        unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
    // SAFETY: `chld` and `old` are valid sigsets; blocking SIGCHLD on this
    // thread (the only one) affects nothing else.
    unsafe {
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &chld, &mut old);
    }
    // SAFETY: the process has one thread (see `possible`), so the child
    // holds no lock another thread held; what runs in it next is the
    // allocator's ordinary path.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: `old` is the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
        own_stdin();
        return Forked::Child;
    }
    if pid < 0 {
        let errno = sys::errno();
        // SAFETY: `old` is the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
        let mut reason = StackBuf::<64>::new();
        let _ = write!(reason, "fork failed (errno {errno})");
        say_no_fork(reason.as_str());
        return Forked::Not;
    }
    let ms = FORK_MS.load(Relaxed);
    let ended = wait_for(pid, ms);
    if slot.load(Relaxed) != pid || matches!(ended, Ended::Deadlocked) {
        write_fate_of(id, pid, ended, ms);
    }
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    Forked::Parent
}

/// Called by the process that failed a site once its fate line is written:
/// its parent, if it forked it, need not write one.
pub(super) fn fate_written(pid: libc::pid_t) {
    if let Some(slot) = fate_of() {
        slot.store(pid, Relaxed);
    }
}

/// In the child: a standard input that is a regular file read through a
/// description of its own, at the offset the parent had reached, so that
/// what the child reads does not move the parent's offset.
fn own_stdin() {
    // SAFETY: F_GETFL on a descriptor that may be closed just fails.
    let flags = unsafe { libc::fcntl(libc::STDIN_FILENO, libc::F_GETFL) };
    if flags < 0 || flags & libc::O_ACCMODE != libc::O_RDONLY {
        return;
    }
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is writable.
    if unsafe { libc::fstat(libc::STDIN_FILENO, &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFREG
    {
        return;
    }
    // SAFETY: lseek on an open descriptor; -1 on failure.
    let offset = unsafe { libc::lseek(libc::STDIN_FILENO, 0, libc::SEEK_CUR) };
    // SAFETY: a NUL-terminated path; the new descriptor is ours.
    let fd = unsafe { libc::open(c"/proc/self/fd/0".as_ptr(), flags & !libc::O_CREAT) };
    if offset < 0 || fd < 0 {
        if fd >= 0 {
            // SAFETY: `fd` is open and ours.
            unsafe { libc::close(fd) };
        }
        return;
    }
    // SAFETY: `fd` is ours; dup2 makes descriptor 0 refer to its file
    // description; `fd` is closed after.
    unsafe {
        if libc::lseek(fd, offset, libc::SEEK_SET) == offset {
            libc::dup2(fd, libc::STDIN_FILENO);
        }
        libc::close(fd);
    }
}

/// How a forked child ended.
enum Ended {
    Status(c_int),
    /// Killed after the timeout.
    Killed,
    /// Reaped by someone else (a handler of the program's): unknown.
    Lost,
    /// Killed, waiting for ever on a lock the parent held at the fork.
    Deadlocked,
}

/// How many looks in a row, at least [`LOOK_MS`] apart, must find a child
/// waiting for ever on a lock before it is declared deadlocked.
const STUCK_LOOKS: u32 = 2;
/// How often the parent looks at a child that has not ended, in ms.
const LOOK_MS: u64 = 10;

/// Whether child `pid` has been seen [`STUCK_LOOKS`] times in a row
/// waiting, with one thread and no time limit, on a futex of its own
/// process (`stuck` counts the looks). No other thread can ever wake it:
/// the lock was held at the fork by the parent, in the very call that
/// allocated (a glibc read-write lock or a recursive mutex records its
/// owner's thread id, which the child's thread does not have, so the
/// child can never release it).
fn deadlocked(pid: libc::pid_t, stuck: &mut u32) -> bool {
    let waiting = waits_on_private_futex(pid) && threads_of(pid) == Some(1);
    *stuck = if waiting { *stuck + 1 } else { 0 };
    *stuck >= STUCK_LOOKS
}

/// `/proc/PID/FILE`, NUL-terminated, in `buf`.
fn proc_path<'a>(buf: &'a mut StackBuf<48>, pid: libc::pid_t, file: &str) -> Option<&'a CStr> {
    let _ = write!(buf, "/proc/{pid}/{file}\0");
    CStr::from_bytes_with_nul(buf.as_bytes()).ok()
}

fn threads_of(pid: libc::pid_t) -> Option<u64> {
    let mut path = StackBuf::<48>::new();
    sys::threads_of(proc_path(&mut path, pid, "stat")?)
}

/// Whether the child sits in `futex(addr, FUTEX_WAIT*|FUTEX_PRIVATE_FLAG,
/// val, NULL)` (`/proc/PID/syscall`: the call's number and arguments).
fn waits_on_private_futex(pid: libc::pid_t) -> bool {
    let mut path = StackBuf::<48>::new();
    let Some(path) = proc_path(&mut path, pid, "syscall") else {
        return false;
    };
    let mut buf = [0u8; 256];
    let Some(text) = sys::read_small(path, &mut buf) else {
        return false;
    };
    let mut fields = text.trim_ascii().split(|&b| b == b' ');
    let number = fields
        .next()
        .and_then(|f| core::str::from_utf8(f).ok())
        .and_then(|f| f.parse::<libc::c_long>().ok());
    if number != Some(libc::SYS_futex) {
        return false;
    }
    let mut args = fields.map(|f| {
        f.strip_prefix(b"0x")
            .and_then(|hex| core::str::from_utf8(hex).ok())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
    });
    let (_addr, op, _val, timeout) = (args.next(), args.next(), args.next(), args.next());
    let (Some(Some(op)), Some(Some(0))) = (op, timeout) else {
        return false;
    };
    let private = op & libc::FUTEX_PRIVATE_FLAG as u64 != 0;
    let command = op & libc::FUTEX_CMD_MASK as u64;
    private
        && [
            libc::FUTEX_WAIT,
            libc::FUTEX_WAIT_BITSET,
            libc::FUTEX_LOCK_PI,
        ]
        .iter()
        .any(|&c| c as u64 == command)
}

/// Waits for child `pid`, at most `ms` milliseconds, then kills it.
fn wait_for(pid: libc::pid_t, ms: u64) -> Ended {
    let pidfd = sys::pidfd_open(pid);
    let deadline = sys::now_ns().saturating_add(ms.saturating_mul(1_000_000));
    let mut killed = false;
    let mut stuck = 0;
    let ended = loop {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is writable.
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped == pid {
            break if killed {
                Ended::Killed
            } else {
                Ended::Status(status)
            };
        }
        if reaped < 0 && sys::errno() != libc::EINTR {
            break Ended::Lost;
        }
        let now = sys::now_ns();
        if now >= deadline && !killed {
            // SAFETY: `pid` is our child, not yet reaped: no other process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
            continue;
        }
        if !killed && deadlocked(pid, &mut stuck) {
            // SAFETY: `pid` is our child, not yet reaped: no other process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: `pid` is our child; `status` is writable.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            break Ended::Deadlocked;
        }
        let wait_ms = if killed {
            10
        } else {
            ((deadline - now) / 1_000_000).clamp(1, LOOK_MS) as libc::c_int
        };
        if pidfd >= 0 {
            let mut poll = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut poll, 1, wait_ms) };
        } else {
            let nap = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            // SAFETY: a valid timespec; no remainder wanted.
            unsafe { libc::nanosleep(&nap, ptr::null_mut()) };
        }
    };
    if pidfd >= 0 {
        // SAFETY: `pidfd` is open and ours.
        unsafe { libc::close(pidfd) };
    }
    ended
}

/// Writes the fate of child `pid`, which failed stack `id` and wrote none.
fn write_fate_of(id: u64, pid: libc::pid_t, ended: Ended, ms: u64) {
    let mut detail = StackBuf::<64>::new();
    let outcome = match ended {
        Ended::Deadlocked => {
            // Not the site's fate: a process of its own fails it again.
            let mut line = StackBuf::<40>::new();
            let _ = Line::Retry { id }.write_to(&mut line);
            append(line.finish_line());
            return;
        }
        Ended::Killed => {
            let _ = write!(detail, "killed after {} s", ms.div_ceil(1000));
            Outcome::Hung
        }
        Ended::Lost => {
            let _ = detail.write_str("reaped by the program, status unknown");
            Outcome::Unknown
        }
        Ended::Status(status) if libc::WIFEXITED(status) => {
            let code = libc::WEXITSTATUS(status);
            let _ = write!(detail, "exit {code}");
            if code == 0 {
                Outcome::Handled
            } else {
                Outcome::Failed
            }
        }
        Ended::Status(status) if libc::WIFSIGNALED(status) => match libc::WTERMSIG(status) {
            libc::SIGABRT => {
                let _ = detail.write_str("SIGABRT");
                Outcome::Aborted
            }
            signal => {
                let _ = write!(detail, "signal {signal}");
                Outcome::Crashed
            }
        },
        Ended::Status(_) => {
            let _ = detail.write_str("no status");
            Outcome::Unknown
        }
    };
    let mut line = StackBuf::<160>::new();
    let _ = Line::Fate {
        id,
        pid: pid.unsigned_abs(),
        outcome,
        detail: Cow::Borrowed(detail.as_str()),
    }
    .write_to(&mut line);
    append(line.finish_line());
}
