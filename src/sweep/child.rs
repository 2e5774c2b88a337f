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
//! countdown, and stays silent.
//!
//! The parent owns its children's lifetimes: `SIGCHLD` is set back to its
//! default for the sweep's duration if the process ignores it (otherwise the
//! kernel reaps children by itself and their exit status is lost), and a
//! child that overruns the timeout is killed through a pidfd, which can
//! never reach another process that reused the pid.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{Point, Sweep};
use crate::text::StackBuf;
use crate::{Outcome, configure, crash, inject, record, symbols, sys, track};

/// In a sweep's child: the pipe to the parent (`-1` elsewhere).
static CHILD_FD: AtomicI32 = AtomicI32::new(-1);
/// In a sweep's child: its pid. A process the operation forks has another
/// one, and must not speak the protocol.
static CHILD_PID: AtomicI32 = AtomicI32::new(0);
/// In a sweep's child: whether the armed countdown fired.
static FIRED: AtomicBool = AtomicBool::new(false);
/// Set while [`mayfail_is_global`] probes: its injected failure is nobody's
/// point (it matters when a sweep runs inside a sweep's child).
static PROBING: AtomicBool = AtomicBool::new(false);

/// The most allocations a child may report: a sweep of more points would
/// take hours (a few hundred per second), and a larger number read from the
/// pipe is nonsense rather than a count.
pub(super) const MAX_ALLOCATIONS: u64 = 10_000_000;

/// How many user frames name a call site.
const SITE_FRAMES: usize = 2;

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
            self.child_main(f, n, write);
        }
        // SAFETY: `write` is the child's end; `read` becomes non-blocking.
        unsafe {
            libc::close(write);
            libc::fcntl(read, libc::F_SETFL, libc::O_NONBLOCK);
        }
        Some(Child {
            n,
            pid,
            pidfd: pidfd_open(pid),
            fd: read,
            output: Vec::new(),
            started: Instant::now(),
            status: None,
        })
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
        CHILD_FD.store(fd, Relaxed);
        FIRED.store(false, Relaxed);
        PROBING.store(false, Relaxed);
        // The parent reports; the site walk of a surrounding `mayfail sites`
        // does not fail this child's allocations.
        crash::silence();
        inject::set_stack_filter(None);
        inject::observe(on_injected);
        if self.warm_up {
            let warm = catch_unwind(AssertUnwindSafe(|| drop(f())));
            leave_unless(me);
            if let Err(payload) = warm {
                send(
                    fd,
                    &format!("PANICKED\t0\t-\t{}\n", panic_message(&*payload)),
                );
                exit_child(0);
            }
        }
        let tracking = track::start();
        configure::set_persistent(self.persistent);
        let armed = if n == 0 { u64::MAX } else { n };
        configure::fail_nth(armed);
        let result = catch_unwind(AssertUnwindSafe(|| drop(f())));
        let left = configure::fail_nth_pending();
        configure::fail_nth(0);
        // Memory comes back for the report (persistent mode).
        configure::set_persistent(false);
        let leaked = if tracking { track::stop() } else { None };
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
        send(fd, &message);
        exit_child(0)
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

fn send(fd: i32, text: &str) {
    sys::write_fd(fd, text.as_bytes());
}

/// Observes every injected failure in a sweep's child: tells the parent
/// where, once, and re-arms the countdown so that the run's later
/// allocations are counted too (the parent compares the totals). Runs
/// inside the allocator: never allocates.
fn on_injected(_verbose: u8) {
    let fd = CHILD_FD.load(Relaxed);
    if fd < 0 || PROBING.load(Relaxed) || sys::getpid() != CHILD_PID.load(Relaxed) {
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

/// A forked child being watched.
struct Child {
    n: u64,
    pid: libc::pid_t,
    /// A pidfd for the child (`-1` if the kernel has none): signals sent
    /// through it reach this child or nobody.
    pidfd: i32,
    fd: i32,
    output: Vec<u8>,
    started: Instant,
    status: Option<Status>,
}

/// What `waitpid` said about a child.
#[derive(Clone, Copy, Debug)]
enum Status {
    /// Its wait status.
    Waited(i32),
    /// It is gone and its status with it: something else reaped it.
    Lost,
}

/// Whether a child's run found the blocks it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leak {
    /// Bytes and blocks still allocated.
    Left { bytes: u64, blocks: u64 },
    /// More live blocks than the table holds.
    Overflow,
    /// The table could not be mapped.
    Unmapped,
}

/// How a child ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The operation returned.
    Returned {
        leak: Leak,
        allocations: u64,
    },
    /// The operation panicked (`allocations` is unknown in the warm-up).
    Panicked {
        message: String,
        allocations: Option<u64>,
    },
    Signal(i32),
    /// The child exited without a report: the operation called `exit`.
    Exited(i32),
    TimedOut,
    /// The child is gone without a status: another part of the process
    /// reaped it (a `waitpid(-1)`, `SA_NOCLDWAIT` set meanwhile).
    Lost,
    /// The child reported something that makes no sense.
    Nonsense(String),
}

/// A finished child.
pub(super) struct Run {
    pub(super) n: u64,
    pub(super) fired: bool,
    pub(super) ended: Ended,
    /// The raw stack of the injected failure.
    pub(super) site: Option<Vec<usize>>,
    pub(super) failed: String,
}

impl Run {
    /// How many allocations the operation made in this run, when it
    /// returned or panicked (and said so).
    pub(super) fn allocations(&self) -> Option<u64> {
        match &self.ended {
            Ended::Returned { allocations, .. } => Some(*allocations),
            Ended::Panicked { allocations, .. } => *allocations,
            _ => None,
        }
    }

    pub(super) fn describe(&self) -> String {
        match &self.ended {
            Ended::Returned {
                leak: Leak::Left { bytes, blocks },
                ..
            } => {
                format!("returned, {bytes} bytes in {blocks} blocks left allocated")
            }
            Ended::Returned {
                leak: Leak::Overflow,
                ..
            } => "returned; leaks unknown: more live blocks than the leak table holds".to_owned(),
            Ended::Returned {
                leak: Leak::Unmapped,
                ..
            } => "returned; leaks unknown: the leak table could not be mapped".to_owned(),
            Ended::Panicked { message, .. } => format!("panicked: {message}"),
            Ended::Signal(sig) => format!("killed by signal {sig} ({})", sys::signal_name(*sig)),
            Ended::Exited(code) => {
                format!("the operation exited the process with status {code} instead of returning")
            }
            Ended::TimedOut => "did not finish before the timeout".to_owned(),
            Ended::Lost => {
                "the child was reaped by another part of the process: its status is lost".to_owned()
            }
            Ended::Nonsense(why) => format!("the child's report makes no sense: {why}"),
        }
    }

    pub(super) fn into_point(self, sites: &mut BTreeMap<Vec<usize>, String>) -> Point {
        let (outcome, detail) = match &self.ended {
            Ended::Returned {
                leak: Leak::Left { bytes: 0, .. },
                ..
            } => (Outcome::Handled, String::new()),
            Ended::Returned {
                leak: Leak::Left { .. },
                ..
            } => (Outcome::Leaked, self.describe()),
            Ended::Returned { .. } => (Outcome::Untracked, self.describe()),
            Ended::Panicked { .. } => (Outcome::Panicked, self.describe()),
            Ended::Signal(sig) if *sig == libc::SIGABRT => (Outcome::Aborted, self.describe()),
            Ended::Signal(_) => (Outcome::Crashed, self.describe()),
            Ended::Exited(_) => (Outcome::Failed, self.describe()),
            Ended::TimedOut => (Outcome::Hung, self.describe()),
            Ended::Lost | Ended::Nonsense(_) => (Outcome::Unknown, self.describe()),
        };
        let detail = if detail.is_empty() {
            self.failed.clone()
        } else {
            format!("{}: {detail}", self.failed)
        };
        Point {
            n: self.n,
            outcome,
            site: match self.site {
                Some(frames) => sites
                    .entry(frames)
                    .or_insert_with_key(|frames| symbols::site_of(frames, SITE_FRAMES))
                    .clone(),
                None => "<unknown call site>".to_owned(),
            },
            detail,
        }
    }
}

/// Waits up to 10 ms for output from any child, or for one to end.
fn poll_children(children: &mut [Child]) {
    let mut fds: Vec<libc::pollfd> = children
        .iter()
        .flat_map(|c| [c.fd, c.pidfd])
        .filter(|&fd| fd >= 0)
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
        return;
    }
    // SAFETY: `fds` is a valid array of that length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
}

/// A pidfd for `pid`, our child not yet reaped; `-1` where the kernel has
/// no pidfds (before Linux 5.3).
fn pidfd_open(pid: libc::pid_t) -> i32 {
    // SAFETY: pidfd_open takes a pid and flags and returns a descriptor or
    // -1; `pid` is our unreaped child, so it names no other process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 { -1 } else { fd as i32 }
}

impl Child {
    /// Reads what is available; reaps the child once it has ended.
    fn try_finish(&mut self, timeout: Duration) -> Option<Run> {
        self.read_available();
        if self.status.is_none() {
            self.status = self.reap(libc::WNOHANG);
        }
        if let Some(status) = self.status {
            self.read_available();
            self.close();
            return Some(self.finish(Some(status)));
        }
        if self.started.elapsed() > timeout {
            self.kill();
            // Killed by us: whatever the status says, the run timed out.
            let _ = self.reap(0);
            self.read_available();
            self.close();
            return Some(self.finish(None));
        }
        None
    }

    /// `waitpid` on the child: its status once it ended, `Lost` if it can
    /// no longer be waited for.
    fn reap(&self, flags: i32) -> Option<Status> {
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child; `status` is a valid out-pointer.
            let reaped = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if reaped == self.pid {
                return Some(Status::Waited(status));
            }
            if reaped == 0 {
                return None;
            }
            match sys::errno() {
                libc::EINTR => continue,
                _ => return Some(Status::Lost),
            }
        }
    }

    /// Kills the child: through its pidfd, which reaches this child or
    /// nobody; without one, by pid, which is ours as long as nothing else
    /// reaps our children.
    fn kill(&self) {
        if self.pidfd >= 0 {
            // SAFETY: a pidfd we own, a signal number, no siginfo, no flags.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.pidfd,
                    libc::SIGKILL,
                    core::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        } else {
            // SAFETY: `pid` is our child and not yet reaped by us.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    fn read_available(&mut self) {
        if self.fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into `buf`; the descriptor is non-blocking.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            // A child cannot make the parent hold more than this.
            if self.output.len() < 1 << 20 {
                self.output.extend_from_slice(&buf[..n as usize]);
            }
        }
    }

    fn close(&mut self) {
        for fd in [&mut self.fd, &mut self.pidfd] {
            if *fd >= 0 {
                // SAFETY: the descriptor is open and ours.
                unsafe { libc::close(*fd) };
                *fd = -1;
            }
        }
    }

    /// Reads the child's report. `status` is `None` when the child was
    /// killed after the timeout.
    fn finish(&self, status: Option<Status>) -> Run {
        let text = String::from_utf8_lossy(&self.output);
        let mut site = None;
        let mut failed = String::new();
        let mut report = None;
        let mut sited = false;
        let mut nonsense = None;
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["SITE", frames, "FAILED", what] if !sited => {
                    sited = true;
                    let frames: Option<Vec<usize>> = frames
                        .split(',')
                        .map(|ip| usize::from_str_radix(ip, 16).ok())
                        .collect();
                    site = frames;
                    failed = (*what).to_owned();
                }
                [kind @ ("RETURNED" | "PANICKED"), ..] if report.is_none() => {
                    match self.parse_report(&fields) {
                        Ok(parsed) => report = Some(parsed),
                        Err(why) => nonsense = Some(format!("{why} in {kind} line {line:?}")),
                    }
                }
                _ => nonsense = Some(format!("unexpected line {line:?}")),
            }
        }
        let (fired, ended) = match (report, nonsense, status) {
            (_, Some(why), _) => (sited, Ended::Nonsense(why)),
            (Some((fired, ended)), None, _) => (fired, ended),
            (None, None, None) => (sited, Ended::TimedOut),
            (None, None, Some(Status::Lost)) => (sited, Ended::Lost),
            (None, None, Some(Status::Waited(status))) if libc::WIFSIGNALED(status) => {
                (sited, Ended::Signal(libc::WTERMSIG(status)))
            }
            (None, None, Some(Status::Waited(status))) => {
                (sited, Ended::Exited(libc::WEXITSTATUS(status)))
            }
        };
        let ended = match ended {
            // The countdown's firing and its site line go together.
            _ if fired != sited && !matches!(ended, Ended::Nonsense(_)) => {
                Ended::Nonsense(format!(
                    "the run says the failure {} but {} its call site",
                    if fired { "fired" } else { "did not fire" },
                    if sited { "sent" } else { "did not send" },
                ))
            }
            _ if self.n == 0 && fired => Ended::Nonsense(
                "an allocation failed in the counting run, where nothing is armed to fail: \
                 the operation arms fail_nth itself"
                    .to_owned(),
            ),
            ended => ended,
        };
        Run {
            n: self.n,
            fired,
            ended,
            site,
            failed,
        }
    }

    /// Parses `RETURNED fired left bytes blocks` or `PANICKED fired left
    /// message`: whether the failure fired, and how the run ended with the
    /// operation's allocation count, checked against the point.
    fn parse_report(&self, fields: &[&str]) -> Result<(bool, Ended), String> {
        let fired = match fields.get(1) {
            Some(&"0") => false,
            Some(&"1") => true,
            _ => return Err("no fired flag".to_owned()),
        };
        let allocations = match fields.get(2) {
            Some(&"-") if fields[0] == "PANICKED" && !fired => None,
            Some(left) => {
                let left = left
                    .parse::<u64>()
                    .map_err(|_| format!("countdown {left:?}"))?;
                Some(self.allocations(fired, left)?)
            }
            None => return Err("no countdown".to_owned()),
        };
        let ended = match fields {
            ["RETURNED", _, _, bytes, blocks] => {
                let leak = match (*bytes, *blocks) {
                    ("overflow", "-") => Leak::Overflow,
                    ("unmapped", "-") => Leak::Unmapped,
                    (bytes, blocks) => Leak::Left {
                        bytes: bytes.parse().map_err(|_| format!("bytes {bytes:?}"))?,
                        blocks: blocks.parse().map_err(|_| format!("blocks {blocks:?}"))?,
                    },
                };
                Ended::Returned {
                    leak,
                    allocations: allocations.ok_or("no count")?,
                }
            }
            ["PANICKED", _, _, message] => Ended::Panicked {
                message: (*message).to_owned(),
                allocations,
            },
            _ => return Err("wrong fields".to_owned()),
        };
        Ok((fired, ended))
    }

    /// The operation's allocations in this run, from what is left of the
    /// countdown. Armed with `n` (the counting run: with `u64::MAX`), a
    /// countdown that fired was re-armed with `u64::MAX`.
    fn allocations(&self, fired: bool, left: u64) -> Result<u64, String> {
        let count = match (self.n, fired) {
            (0, _) if left == 0 => None,
            (0, _) => Some(u64::MAX - left),
            (n, true) => n.checked_add(u64::MAX - left),
            (n, false) => n.checked_sub(left),
        };
        match count {
            Some(count) if count <= MAX_ALLOCATIONS => Ok(count),
            Some(count) => Err(format!(
                "{count} allocations (more than {MAX_ALLOCATIONS}: the operation changes the \
                 thread's fail_nth countdown, or allocates too much to sweep one at a time)"
            )),
            None => Err(format!(
                "a countdown armed with {} left at {left}: the operation changes the thread's \
                 fail_nth countdown",
                if self.n == 0 { u64::MAX } else { self.n }
            )),
        }
    }
}

/// Restores `SIGCHLD` when the last running sweep ends.
pub(super) struct ChildSignal(());

/// Sweeps running now, and the `SIGCHLD` action to put back after the last.
static CHILD_SIGNAL: Mutex<(usize, Option<libc::sigaction>)> = Mutex::new((0, None));

impl ChildSignal {
    /// Makes sure this process's children stay waitable while sweeps run.
    /// Process-wide: while `SIGCHLD` is ignored (or has `SA_NOCLDWAIT`), the
    /// kernel reaps every child by itself and its exit status is lost, so
    /// the first sweep to start sets the default action (keeping a handler,
    /// without `SA_NOCLDWAIT`) and the last to end puts back what it found.
    /// Meanwhile, children of other parts of the process are not reaped by
    /// the kernel: they stay zombies until waited for.
    pub(super) fn take() -> ChildSignal {
        let mut state = CHILD_SIGNAL.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            // SAFETY: an all-zero sigaction is valid; sigaction only reads
            // the new action and writes the old one.
            unsafe {
                let mut old: libc::sigaction = core::mem::zeroed();
                if libc::sigaction(libc::SIGCHLD, core::ptr::null(), &mut old) == 0 {
                    let ignored = old.sa_sigaction == libc::SIG_IGN;
                    if ignored || old.sa_flags & libc::SA_NOCLDWAIT != 0 {
                        let mut new = old;
                        if ignored {
                            new.sa_sigaction = libc::SIG_DFL;
                        }
                        new.sa_flags &= !libc::SA_NOCLDWAIT;
                        if libc::sigaction(libc::SIGCHLD, &new, core::ptr::null_mut()) == 0 {
                            state.1 = Some(old);
                        }
                    }
                }
            }
        }
        state.0 += 1;
        ChildSignal(())
    }
}

impl Drop for ChildSignal {
    fn drop(&mut self) {
        let mut state = CHILD_SIGNAL.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 == 0
            && let Some(old) = state.1.take()
        {
            // SAFETY: `old` is the action sigaction gave us.
            unsafe { libc::sigaction(libc::SIGCHLD, &old, core::ptr::null_mut()) };
        }
    }
}
