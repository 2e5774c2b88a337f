//! A sweep's children: forking one per allocation point, what runs in the
//! child (warm-up, the armed countdown, leak tracking, the report over a
//! pipe), and watching them from the parent (output, exit status, timeout).
//!
//! Only [`on_injected`] runs inside the allocator (in the child): it writes
//! one line of raw addresses to the pipe, without allocating.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{Point, Sweep};
use crate::text::StackBuf;
use crate::{Outcome, configure, crash, inject, record, symbols, sys, track};

/// In a sweep's child: the pipe to the parent (`-1` elsewhere).
static CHILD_FD: AtomicI32 = AtomicI32::new(-1);

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
            fd: read,
            output: Vec::new(),
            started: Instant::now(),
            status: None,
        })
    }

    /// In the child: run the operation and report; never returns.
    fn child_main<R>(&self, f: &impl Fn() -> R, n: u64, fd: i32) -> ! {
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
        CHILD_FD.store(fd, Relaxed);
        // The parent reports; the site walk of a surrounding `mayfail sites`
        // does not fail this child's allocations.
        crash::silence();
        inject::set_stack_filter(None);
        inject::observe(on_injected);
        if self.warm_up {
            match catch_unwind(AssertUnwindSafe(|| drop(f()))) {
                Ok(()) => {}
                Err(payload) => {
                    send(fd, &format!("PANICKED\t0\t{}\n", panic_message(&*payload)));
                    exit_child(0);
                }
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
        let fired = n != 0 && left == 0;
        let message = match result {
            Ok(()) => {
                let (bytes, blocks) = leaked.unwrap_or((0, 0));
                let count = if n == 0 { u64::MAX - left } else { 0 };
                format!("RETURNED\t{}\t{bytes}\t{blocks}\t{count}\n", fired as u8)
            }
            Err(payload) => format!("PANICKED\t{}\t{}\n", fired as u8, panic_message(&*payload)),
        };
        send(fd, &message);
        exit_child(0)
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
/// where. Runs inside the allocator.
fn on_injected(_verbose: u8) {
    let fd = CHILD_FD.load(Relaxed);
    if fd < 0 {
        return;
    }
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
    configure::fail_nth(1);
    let mut probe: Vec<u8> = Vec::new();
    let failed = probe.try_reserve(1).is_err();
    configure::fail_nth(0);
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
    fd: i32,
    output: Vec<u8>,
    started: Instant,
    status: Option<i32>,
}

/// How a child ended.
#[derive(Debug)]
pub(super) enum Ended {
    Returned {
        leaked: u64,
        blocks: u64,
        count: u64,
    },
    Panicked(String),
    Signal(i32),
    Exited(i32),
    TimedOut,
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
    pub(super) fn describe(&self) -> String {
        match &self.ended {
            Ended::Returned { leaked, blocks, .. } => {
                format!("returned, {leaked} bytes in {blocks} blocks left allocated")
            }
            Ended::Panicked(message) => format!("panicked: {message}"),
            Ended::Signal(sig) => format!("killed by signal {sig} ({})", sys::signal_name(*sig)),
            Ended::Exited(code) => format!("exited with code {code}"),
            Ended::TimedOut => "did not finish before the timeout".to_owned(),
        }
    }

    pub(super) fn into_point(self, sites: &mut BTreeMap<Vec<usize>, String>) -> Point {
        let (outcome, detail) = match &self.ended {
            Ended::Returned { leaked: 0, .. } => (Outcome::Handled, String::new()),
            Ended::Returned { .. } => (Outcome::Leaked, self.describe()),
            Ended::Panicked(_) => (Outcome::Panicked, self.describe()),
            Ended::Signal(sig) if *sig == libc::SIGABRT => (Outcome::Aborted, self.describe()),
            Ended::Signal(_) | Ended::Exited(_) => (Outcome::Crashed, self.describe()),
            Ended::TimedOut => (Outcome::Hung, self.describe()),
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

/// Waits up to 10 ms for output from any child.
fn poll_children(children: &mut [Child]) {
    let mut fds: Vec<libc::pollfd> = children
        .iter()
        .filter(|c| c.fd >= 0)
        .map(|c| libc::pollfd {
            fd: c.fd,
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
    /// Reads what is available; reaps the child once its pipe is closed.
    fn try_finish(&mut self, timeout: Duration) -> Option<Run> {
        self.read_available();
        if self.status.is_none() {
            let mut status = 0;
            // SAFETY: `pid` is our child; WNOHANG does not block.
            let reaped = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if reaped == self.pid {
                self.status = Some(status);
            }
        }
        if let Some(status) = self.status {
            self.read_available();
            self.close();
            return Some(self.finish(Some(status)));
        }
        if self.started.elapsed() > timeout {
            // SAFETY: `pid` is our child, not yet reaped.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
            self.read_available();
            self.close();
            return Some(self.finish(None));
        }
        None
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
            self.output.extend_from_slice(&buf[..n as usize]);
        }
    }

    fn close(&mut self) {
        if self.fd >= 0 {
            // SAFETY: the descriptor is open and ours.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
    }

    fn finish(&self, status: Option<i32>) -> Run {
        let text = String::from_utf8_lossy(&self.output);
        let mut site = None;
        let mut failed = String::new();
        let mut ended = None;
        let mut fired = false;
        for line in text.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["SITE", frames, "FAILED", what] => {
                    fired = true;
                    if site.is_none() {
                        let frames: Vec<usize> = frames
                            .split(',')
                            .filter_map(|ip| usize::from_str_radix(ip, 16).ok())
                            .collect();
                        site = Some(frames);
                        failed = (*what).to_owned();
                    }
                }
                ["RETURNED", was_fired, bytes, blocks, count] => {
                    fired |= *was_fired == "1";
                    ended = Some(Ended::Returned {
                        leaked: bytes.parse().unwrap_or(0),
                        blocks: blocks.parse().unwrap_or(0),
                        count: count.parse().unwrap_or(0),
                    });
                }
                ["PANICKED", was_fired, message] => {
                    fired |= *was_fired == "1";
                    ended = Some(Ended::Panicked((*message).to_owned()));
                }
                _ => {}
            }
        }
        let ended = match (ended, status) {
            (Some(ended), _) => ended,
            (None, None) => Ended::TimedOut,
            (None, Some(status)) if libc::WIFSIGNALED(status) => {
                Ended::Signal(libc::WTERMSIG(status))
            }
            (None, Some(status)) => Ended::Exited(libc::WEXITSTATUS(status)),
        };
        Run {
            n: self.n,
            fired: fired && self.n != 0,
            ended,
            site,
            failed,
        }
    }
}
