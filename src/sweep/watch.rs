//! Watching a sweep's children from the parent: their output over the pipe,
//! their end (through a pidfd where the kernel has them), the timeout, and
//! turning what a child said into a [`Run`] and then a [`Point`]. Also the
//! `SIGCHLD` disposition a sweep needs while it runs. Runs in the parent,
//! never inside the allocator; nothing a child reports is trusted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Point;
use crate::{Outcome, symbols, sys};

/// The most allocations a child may report: a sweep of more points would
/// take hours (a few hundred per second), and a larger number read from the
/// pipe is nonsense rather than a count.
pub(super) const MAX_ALLOCATIONS: u64 = 10_000_000;

/// How many user frames name a call site.
const SITE_FRAMES: usize = 2;

/// A forked child being watched.
pub(super) struct Child {
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
    /// The raw stack of an abort, from the child's signal handler.
    pub(super) abort: Option<Vec<usize>>,
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

    /// The point this run stands for. In persistent mode every allocation
    /// after the point's fails too, and an abort is the doing of the one
    /// that reached `handle_alloc_error`: the point's site is that one's,
    /// and the detail names the first failure and where it was.
    pub(super) fn into_point(
        self,
        sites: &mut BTreeMap<Vec<usize>, String>,
        persistent: bool,
    ) -> Point {
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
        let mut site_of = |frames: Vec<usize>| {
            sites
                .entry(frames)
                .or_insert_with_key(|frames| {
                    symbols::site_of(frames, SITE_FRAMES, symbols::Paths::Short)
                })
                .clone()
        };
        let first = match self.site {
            Some(frames) => site_of(frames),
            None => "<unknown call site>".to_owned(),
        };
        let aborted_later = match (&self.abort, outcome) {
            (Some(frames), Outcome::Aborted) if persistent => {
                symbols::below_named(frames, &symbols::ALLOC_ERROR_FRAMES)
                    .map(|at| site_of(frames[at..].to_vec()))
                    .filter(|site| *site != first)
            }
            _ => None,
        };
        let (site, detail) = match aborted_later {
            Some(site) => (
                site,
                format!(
                    "{} failed first, at {first}, then every allocation after it; a later one \
                     reached handle_alloc_error here: {detail}",
                    self.failed
                ),
            ),
            None if detail.is_empty() => (first, self.failed.clone()),
            None => (first, format!("{}: {detail}", self.failed)),
        };
        Point {
            n: self.n,
            outcome,
            site,
            detail,
        }
    }
}

/// Waits up to 10 ms for output from any child, or for one to end.
pub(super) fn poll_children(children: &mut [Child]) {
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

impl Child {
    /// A child just forked: `pid`, reading its reports from `fd`.
    pub(super) fn new(n: u64, pid: libc::pid_t, fd: i32) -> Child {
        Child {
            n,
            pid,
            pidfd: crate::sys::pidfd_open(pid),
            fd,
            output: Vec::new(),
            started: Instant::now(),
            status: None,
        }
    }

    /// Reads what is available; reaps the child once it has ended.
    pub(super) fn try_finish(&mut self, timeout: Duration) -> Option<Run> {
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
        let mut abort = None;
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
                ["ABORT", frames] if abort.is_none() => {
                    abort = frames
                        .split(',')
                        .map(|ip| usize::from_str_radix(ip, 16).ok())
                        .collect::<Option<Vec<usize>>>();
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
            abort,
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
