//! The fork-at-site engine of `sites` mode (`sites-fork=MS`): one run of
//! a program walks every site it reaches, instead of one site per run.
//!
//! At a new site of the program's own code, a process that can fork safely
//! forks. The child fails the site, as a separate run failing that one
//! site would (it knows every stack the parent met, and fails no other),
//! and runs on to its fate; the parent waits for it, at most `MS`
//! milliseconds, writes the fate the child could not write itself (`_exit`,
//! a signal mayfail does not catch), and goes on as if the allocation had
//! succeeded, to fork again at its next new site. The child inherits the
//! parent's warm symbol cache: a site costs a fork and the child's own run
//! to its end, not a whole run of the program.
//!
//! A process is fit to fork when it has one thread (a lock another thread
//! holds at the fork stays held for ever in the child), no socket and no
//! pipe open for reading or as standard input, output or error (the child
//! would read what the parent is to read, or write to the process at the
//! other end what that one then reads twice) and no child process (the
//! child could not wait for it). The threads are
//! counted before symbol resolution, which runs on a thread of its own; the
//! last resolution's thread may still be counted for a moment after its
//! join, so a count above one soon after it is read again. In the child,
//! every regular file open for reading is read through a description of
//! its own at the offset the parent had reached, so that the parent later
//! goes on from where it was (a shell reading its script, a program its
//! input).
//!
//! What a child still shares with its parent, where a separate run would
//! not: the contents of the files both write, `flock` locks, and what the
//! parent's stdio buffered but had not written yet, which the child writes
//! again at its exit (the walk's log shows that output twice). The fork runs
//! the program's `pthread_atfork` handlers inside the allocation: a prepare
//! handler that takes a lock the allocating call holds would deadlock. The
//! runner's `--no-fork` walks one site per process.
//!
//! A fork inside the allocator has one hazard a fork elsewhere has not: the
//! call that allocates may hold a lock (glibc's `setlocale` holds its
//! read-write lock around `strdup`; SQLite holds a recursive mutex). Locks
//! that record their owner's thread id (glibc's read-write locks, recursive
//! and error-checking mutexes) cannot be released by the child, whose
//! thread has another id: the child then waits for ever at its next
//! attempt. The parent looks at a child that has not ended every 10 ms: one
//! seen twice in a row with one thread, waiting on a futex of its own
//! process with no time limit (nothing can ever wake it), is killed. Its
//! site, and that of a child killed after `MS` or reaped by the program, is
//! not given a fate but a `retry` line: the runner walks such sites one per
//! process, without forking, once the forking runs are done, so that a wait
//! the fork caused (a lock the parent held that the detector cannot see) is
//! never reported as the site's own hang. A child killed by an interrupt
//! (`SIGINT`, `SIGTERM`, `SIGHUP`, `SIGQUIT`) gets no fate either: the
//! runner asks for its site again.
//!
//! A test's process (`sites-fork-test`: one test of a libtest harness)
//! has two threads: libtest runs the test on a thread of its own, and its
//! main thread waits on a futex for the result. Such a process is fit to
//! fork from the test's thread while the main thread waits (libtest's
//! holds none of its locks then; looked at again just before the fork, a
//! wake-up between the look and the fork left to the deadlock detector or
//! `MS`) and its standard error is a regular file. The child holds the test's thread alone: its output
//! goes to a file of its own (the parent's output file's path followed by
//! `.PID`, which the runner reads; a child that cannot open it ends before
//! its site line, and the parent fails the site itself), and its process
//! exits 0 as soon as that thread ends (a thread-specific value's
//! destructor: threads the test left running do not keep it), passed or
//! failed; so at exit the child reads its own output for the harness's
//! panic line for its thread (`thread 'NAME' panicked at`) or the line of
//! a test that returned an `Err` (`Error: `): there, its fate is `failed`.
//! With `sites-fork-output` (a doctest's executable, a program), the child
//! writes to a file of its own too, and its status is its fate. Either
//! turns `sites-fork` off in the process's own environment: the programs a
//! test runs fail one site per process.
//!
//! A process asked to fork that is not fit to fails the site itself, as
//! without `sites-fork`, and writes a `no-fork` line saying why; so does one
//! whose `fork` fails, whose child ends before writing its site line, or
//! whose table of known stacks is full. A forked child turns the engine off
//! in its own environment (`sites-fork=0`): the programs it runs walk one
//! site per process, within its time.
//!
//! Everything here runs inside the allocator, on the process's only
//! thread (a test's: the one that is not waiting), under the in-reclaim
//! mark (what the fork handlers allocate is served, never injected), and
//! allocates nothing itself. `SIGCHLD` is blocked on the forking thread from just
//! before the fork until the child is reaped: a handler of the program's
//! that reaps every child cannot take the status first (the signal stays
//! pending and reaches the program afterwards, as a stray `SIGCHLD` a
//! handler must expect anyway). In a test's process the harness's main
//! thread does not block it: a handler of the test's may run there and
//! reap the child, whose site is then asked for again. `errno` is what it
//! was when the parent goes on. In a test's process, a child killed after
//! `MS` stops the forking (a harness whose test threads never end would
//! make every later child wait as long).

use core::ffi::{CStr, c_int};
use core::fmt::Write;
use core::ptr;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize,
    Ordering::Relaxed,
};
use std::borrow::Cow;

use super::append;
use crate::Outcome;
use crate::state::Line;
use crate::sys;
use crate::text::StackBuf;

/// How long the parent waits for a child before killing it, in ms (0: the
/// engine is off).
static FORK_MS: AtomicU64 = AtomicU64::new(0);
/// A page shared by the parent and its children (see [`Shared`]).
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(ptr::null_mut());
/// The process that last wrote its `no-fork` line (0: none).
static NO_FORK_PID: AtomicI32 = AtomicI32::new(0);
/// When the last symbol resolution's thread was joined (monotonic ns).
static RESOLVED_NS: AtomicU64 = AtomicU64::new(0);
/// The process runs one test of a libtest harness (`sites-fork-test`).
static TEST: AtomicBool = AtomicBool::new(false);
/// A forked child writes its output to a file of its own
/// (`sites-fork-output`, or `sites-fork-test`).
static OWN_OUTPUT: AtomicBool = AtomicBool::new(false);
/// In a child forked on a test's thread: `thread 'NAME'`, how the
/// harness's panic line for its test begins.
static PANIC_HEAD: [AtomicU8; PANIC_HEAD_MAX] = [const { AtomicU8::new(0) }; PANIC_HEAD_MAX];
static PANIC_HEAD_LEN: AtomicUsize = AtomicUsize::new(0);
const PANIC_HEAD_MAX: usize = 512;
/// In a forked child: the process that forked it.
static PARENT: AtomicI32 = AtomicI32::new(0);
/// In a child forked with its own output: that file's path, NUL-ended
/// (empty: none), read again at its exit (the test may have closed the
/// descriptor).
static OUTPUT_PATH: [AtomicU8; OUTPUT_PATH_MAX] = [const { AtomicU8::new(0) }; OUTPUT_PATH_MAX];
const OUTPUT_PATH_MAX: usize = 600;
/// The thread-specific key whose destructor ends a test's child with its
/// test's thread (`u32::MAX`: none).
static EXIT_KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// What a child tells its parent through the shared page.
struct Shared {
    /// The pid of the last child that wrote its own fate line.
    fate: AtomicI32,
    /// The pid of the last child that wrote its site line.
    site: AtomicI32,
}

/// Whether a process may fork at the new stack it has just met: told
/// before the stack is resolved ([`fitness`]), acted on once it is known
/// to be a site this process is to fail ([`at_site`]).
pub(super) enum Fitness {
    /// The engine is off.
    Off,
    /// Fit to fork.
    Fit,
    /// Not fit: why.
    Unfit(StackBuf<96>),
}

/// What [`at_site`] did.
pub(super) enum Forked {
    /// This is the child: fail the site here.
    Child,
    /// This is the parent, and the child has ended: let the allocation
    /// succeed.
    Parent,
    /// No fork happened (said in a `no-fork` line if the engine was on):
    /// fail the site here.
    Not,
}

/// Turns the engine on (`ms` > 0) or off for a spec being installed.
/// Inside the allocator: no allocation.
pub(super) fn install(ms: u64, test: bool, output: bool) {
    if ms != 0 && SHARED.load(Relaxed).is_null() {
        // SAFETY: an anonymous shared mapping at an address of the kernel's
        // choice; nothing else is affected. It is never unmapped.
        let page = unsafe {
            libc::mmap(
                ptr::null_mut(),
                core::mem::size_of::<Shared>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page != libc::MAP_FAILED {
            SHARED.store(page.cast(), Relaxed);
        }
    }
    if ms != 0 && test && EXIT_KEY.load(Relaxed) == u32::MAX {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is writable; the destructor is a valid function for
        // the life of the process.
        if unsafe { libc::pthread_key_create(&mut key, Some(test_thread_ended)) } == 0 {
            EXIT_KEY.store(key, Relaxed);
        }
    }
    TEST.store(test, Relaxed);
    OWN_OUTPUT.store(test || output, Relaxed);
    FORK_MS.store(ms, Relaxed);
    if ms != 0 && (test || output) {
        // A test's (or a doctest's) process: the programs it runs are no
        // children of the walk's, whose output the runner would collect;
        // they fail one site per process.
        no_fork_below();
    }
}

/// The shared page, if there is one.
fn shared() -> Option<&'static Shared> {
    let page = SHARED.load(Relaxed);
    // SAFETY: a non-null pointer is the shared mapping made in `install`,
    // zero-filled (valid atomics), aligned to a page, never unmapped.
    (!page.is_null()).then(|| unsafe { &*page })
}

/// Called once a new stack's symbols are resolved: its thread is joined.
pub(super) fn resolved() {
    RESOLVED_NS.store(sys::now_ns(), Relaxed);
}

/// Turns the engine off for this process and says why, once.
pub(super) fn stop(reason: &str) {
    FORK_MS.store(0, Relaxed);
    say_no_fork(reason);
}

/// Whether this process may fork at the new stack it has just met (see
/// [`Fitness`]). Called before the stack's symbols are resolved.
pub(super) fn fitness() -> Fitness {
    if FORK_MS.load(Relaxed) == 0 {
        return Fitness::Off;
    }
    let mut reason = StackBuf::<96>::new();
    let test = TEST.load(Relaxed);
    let expected = if test { 2 } else { 1 };
    match settled_thread_count(expected) {
        Some(n) if n == expected => {}
        Some(n) => {
            let _ = write!(reason, "{n} thread{}", if n == 1 { "" } else { "s" });
        }
        None => {
            let _ = reason.write_str("its thread count cannot be read");
        }
    }
    if test && reason.as_str().is_empty() {
        test_harness_unfit(&mut reason);
    }
    if reason.as_str().is_empty() && OWN_OUTPUT.load(Relaxed) && output_path().is_none() {
        let _ = reason.write_str("its output is not a regular file");
    }
    if reason.as_str().is_empty()
        && let Some(fd) = open_stream()
    {
        let _ = write!(reason, "a pipe or a socket is open (descriptor {fd})");
    }
    if reason.as_str().is_empty() && has_children() {
        let _ = reason.write_str("it has child processes");
    }
    if reason.as_str().is_empty() && shared().is_none() {
        let _ = reason.write_str("no shared page could be mapped");
    }
    if reason.as_str().is_empty() {
        Fitness::Fit
    } else {
        Fitness::Unfit(reason)
    }
}

/// In a test's process (`sites-fork-test`), why it may not fork: the
/// allocating thread must be the test's, not the main thread, and the main
/// thread must be waiting on a futex (libtest's main thread, waiting for
/// the test's result, holds none of its locks).
fn test_harness_unfit(reason: &mut StackBuf<96>) {
    let pid = sys::getpid();
    if sys::gettid() == pid {
        let _ = reason.write_str("the test runs on the main thread");
    } else if !main_thread_waits(pid) {
        let _ = reason.write_str("the harness's main thread is not waiting");
    }
}

/// Whether the main thread waits on a futex, looked at for up to 20 ms:
/// at a test's start, the harness may not have reached its wait yet.
fn main_thread_waits(pid: libc::pid_t) -> bool {
    for _ in 0..80 {
        if waits_on_futex(pid, Timeout::Any) {
            return true;
        }
        nap_us(250);
    }
    false
}

/// The path of the regular file standard error writes to.
fn output_path() -> Option<StackBuf<600>> {
    let mut buf = [0u8; 520];
    // SAFETY: readlink writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::readlink(
            c"/proc/self/fd/2".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n)
        .ok()
        .filter(|&n| n > 0 && n < buf.len())?;
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is writable; a closed descriptor fails.
    let regular =
        unsafe { libc::fstat(2, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG;
    let path = core::str::from_utf8(&buf[..n]).ok()?;
    if !regular || !path.starts_with('/') {
        return None;
    }
    let mut out = StackBuf::<600>::new();
    out.write_str(path).ok()?;
    Some(out)
}

/// In a child forked on a test's thread: its standard output and error
/// go to a file of its own, the parent's output file's path followed by
/// `.PID`, which the runner reads when the parent ends; the file is kept
/// open for [`test_failed`].
fn own_output() -> bool {
    let Some(mut path) = output_path() else {
        return false;
    };
    if write!(path, ".{}\0", sys::getpid()).is_err() {
        return false;
    }
    let Ok(cpath) = CStr::from_bytes_with_nul(path.as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; the descriptor is ours.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is open and ours; 1 and 2 then refer to its file, and
    // `fd` itself is closed.
    let moved = unsafe {
        let moved = libc::dup2(fd, 1) == 1 && libc::dup2(fd, 2) == 2;
        libc::close(fd);
        moved
    };
    for (slot, &b) in OUTPUT_PATH.iter().zip(path.as_bytes()) {
        slot.store(b, Relaxed);
    }
    moved
}

/// In a child forked on a test's thread: the process exits (status 0, its
/// exit handlers run) as soon as that thread ends, as the harness would
/// once it has the test's result, even if the test left threads of its
/// own running. A thread-specific value's destructor runs when the thread
/// ends, after its thread-locals'.
fn exit_with_the_test_thread() {
    let key = EXIT_KEY.load(Relaxed);
    // glibc keeps the values of the first 32 keys in the thread itself;
    // a later key's would be allocated (glibc's last-thread exit then
    // still ends a child whose test left no thread).
    if key < 32 {
        // SAFETY: a key created by `install`; a non-null value (never
        // dereferenced) makes its destructor run for this thread.
        unsafe { libc::pthread_setspecific(key, ptr::dangling::<libc::c_void>()) };
    }
}

/// The destructor of [`EXIT_KEY`]'s value: ends the process as the test's
/// thread ends, whatever other threads the test left running (glibc itself
/// calls `exit(0)` when the last thread ends).
extern "C" fn test_thread_ended(_: *mut libc::c_void) {
    // SAFETY: `exit` runs the exit handlers (the fate's) and ends the
    // process; only a child forked on a test's thread sets the key's value.
    unsafe { libc::exit(0) };
}

/// In a child forked on a test's thread: notes how the harness's panic
/// line for this thread's test begins (`thread 'NAME'`). The kernel keeps
/// 15 bytes of a thread's name, and std's own record of it may be another
/// copy of std's (the preload library's): a name cut so is completed from
/// the `--exact NAME` the runner started the test with, else matched as a
/// prefix.
fn note_panic_head() {
    let mut kernel = [0u8; 16];
    let kernel = sys::thread_name(&mut kernel);
    let mut cmdline = [0u8; 4096];
    let exact = if kernel.len() >= sys::KERNEL_NAME_BYTES {
        sys::read_small(c"/proc/self/cmdline", &mut cmdline)
            .and_then(exact_test_name)
            .filter(|name| name.starts_with(kernel))
    } else {
        None
    };
    let mut head = StackBuf::<PANIC_HEAD_MAX>::new();
    let _ = head.write_str("thread '");
    let (name, whole) = match exact {
        Some(name) => (name, true),
        None => (kernel, kernel.len() < sys::KERNEL_NAME_BYTES),
    };
    // A name cut inside a character: its whole characters, as a prefix.
    let (name, whole) = match core::str::from_utf8(name) {
        Ok(name) => (name, whole),
        Err(cut) => (
            core::str::from_utf8(&name[..cut.valid_up_to()]).unwrap_or(""),
            false,
        ),
    };
    let _ = head.write_str(name);
    if whole {
        let _ = head.write_str("'");
    }
    let bytes = head.as_bytes();
    for (slot, &b) in PANIC_HEAD.iter().zip(bytes) {
        slot.store(b, Relaxed);
    }
    PANIC_HEAD_LEN.store(bytes.len().min(PANIC_HEAD_MAX), Relaxed);
}

/// The argument after `--exact` in a NUL-separated command line.
fn exact_test_name(cmdline: &[u8]) -> Option<&[u8]> {
    let mut words = cmdline.split(|&b| b == 0);
    words.find(|&w| w == b"--exact")?;
    words.next().filter(|w| !w.is_empty())
}

/// In a child forked on a test's thread, as it exits: whether its output
/// tells that its test failed. The child's process ends with status 0 when
/// the test's thread ends, failed or not: the harness's main thread, which
/// would report the failure, was not forked. Its output tells: the
/// harness's panic line for the test's own thread (`thread 'NAME' panicked
/// at`, or `thread 'NAME' (ID) panicked at`), or, as its last line, the one
/// std writes for a test returning an `Err` just before the test's thread
/// ends (`Error: ...`).
pub(super) fn test_failed() -> Told {
    if !TEST.load(Relaxed) {
        return Told::NotATest;
    }
    let mut path = [0u8; OUTPUT_PATH_MAX];
    for (b, slot) in path.iter_mut().zip(&OUTPUT_PATH) {
        *b = slot.load(Relaxed);
    }
    let Ok(path) = CStr::from_bytes_until_nul(&path) else {
        return Told::Unread;
    };
    if path.is_empty() {
        return Told::Unread;
    }
    // SAFETY: a NUL-terminated path; closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Told::Unread;
    }
    let mut head = [0u8; PANIC_HEAD_MAX];
    let len = PANIC_HEAD_LEN.load(Relaxed).min(PANIC_HEAD_MAX);
    for (b, slot) in head.iter_mut().zip(&PANIC_HEAD[..len]) {
        *b = slot.load(Relaxed);
    }
    let mut lines = FailureLines::new(&head[..len]);
    let mut buf = [0u8; 4096];
    let told = loop {
        // SAFETY: read writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else {
            if sys::errno() == libc::EINTR {
                continue;
            }
            break Told::Unread;
        };
        if n == 0 {
            break if lines.failed() {
                Told::Failed
            } else {
                Told::Passed
            };
        }
        lines.feed(&buf[..n]);
    };
    // SAFETY: `fd` is open and ours.
    unsafe { libc::close(fd) };
    told
}

/// What a forked child's output tells of its test (see [`test_failed`]).
pub(super) enum Told {
    /// Not a child forked on a test's thread: its status tells.
    NotATest,
    Passed,
    Failed,
    /// Its output could not be read: nothing is told.
    Unread,
}

/// Reads text fed piece by piece for a line that starts with `head` (the
/// test thread's `thread 'NAME'`) and holds ` panicked at `, and whether
/// the last line starts with `Error: `.
struct FailureLines<'a> {
    head: &'a [u8],
    /// Bytes of `head` and of `Error: ` matched at the line's start; `None`
    /// once the line is known not to start with it.
    at_head: Option<usize>,
    at_error: Option<usize>,
    /// Bytes of ` panicked at ` matched, once the line started with `head`.
    mark: usize,
    /// A panic line was seen.
    panicked: bool,
    /// The last line that holds anything starts with `Error: `.
    last_is_error: bool,
    /// The line under way holds something.
    started: bool,
}

impl<'a> FailureLines<'a> {
    const ERROR: &'static [u8] = b"Error: ";
    const MARK: &'static [u8] = b" panicked at ";

    fn new(head: &'a [u8]) -> Self {
        FailureLines {
            head,
            at_head: Some(0),
            at_error: Some(0),
            mark: 0,
            panicked: false,
            last_is_error: false,
            started: false,
        }
    }

    /// Whether the text fed so far tells the test failed.
    fn failed(&self) -> bool {
        self.panicked || self.last_is_error
    }

    fn feed(&mut self, text: &[u8]) {
        for &b in text {
            if b == b'\n' {
                self.at_head = Some(0);
                self.at_error = Some(0);
                self.mark = 0;
                self.started = false;
                continue;
            }
            if !self.started {
                self.started = true;
                self.last_is_error = false;
            }
            if let Some(e) = self.at_error {
                self.at_error = (b == Self::ERROR[e]).then_some(e + 1);
                if self.at_error == Some(Self::ERROR.len()) {
                    self.last_is_error = true;
                    self.at_error = None;
                }
            }
            match self.at_head {
                None => {}
                Some(h) if h < self.head.len() => {
                    self.at_head = (b == self.head[h]).then_some(h + 1);
                }
                Some(_) => {
                    if b == Self::MARK[self.mark] {
                        self.mark += 1;
                        if self.mark == Self::MARK.len() {
                            self.panicked = true;
                            self.at_head = None;
                            self.mark = 0;
                        }
                    } else {
                        self.mark = usize::from(b == Self::MARK[0]);
                    }
                }
            }
        }
    }
}

/// The thread count, read again for a few milliseconds while it is above
/// `expected` soon after a resolution's thread was joined, or one above it
/// at any time (the kernel counts a thread until it is released, a little
/// after its joiner woke).
fn settled_thread_count(expected: u64) -> Option<u64> {
    let mut count = sys::thread_count();
    for _ in 0..20 {
        // Also one thread more than expected, at any time: a thread the
        // program has just joined.
        let recent = sys::now_ns().saturating_sub(RESOLVED_NS.load(Relaxed)) < 5_000_000;
        let one_more = count == Some(expected + 1);
        if !((recent && count.is_some_and(|n| n > expected)) || one_more) {
            break;
        }
        nap_us(250);
        count = sys::thread_count();
    }
    count
}

/// Sleeps `us` microseconds.
fn nap_us(us: u16) {
    let nap = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::c_long::from(us) * 1000,
    };
    // SAFETY: a valid timespec; no remainder wanted.
    unsafe { libc::nanosleep(&nap, ptr::null_mut()) };
}

/// The first descriptor that is a socket, a pipe open for reading, or a
/// pipe as standard input, output or error: what one process reads from
/// it, the other does not; what the child writes into it, the process at
/// the other end reads as if the parent had written it twice. A pipe open
/// for writing only on a higher descriptor is let be: one inherited and
/// never used, as the jobserver pipe of a `make` or `cargo` above.
fn open_stream() -> Option<c_int> {
    let mut found = None;
    for_each_descriptor(|fd, st, flags| {
        let kind = st.st_mode & libc::S_IFMT;
        let reads = flags & libc::O_ACCMODE != libc::O_WRONLY;
        let stream = kind == libc::S_IFSOCK || (kind == libc::S_IFIFO && (reads || fd <= 2));
        if found.is_none() && stream {
            found = Some(fd);
        }
    });
    found
}

/// Whether the process has a child, running or not yet reaped.
fn has_children() -> bool {
    // SAFETY: an all-zero siginfo is valid storage for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
    // SAFETY: WNOWAIT|WNOHANG: nothing is reaped, nothing waited for.
    let rc = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    rc == 0
}

/// Calls `f` with each open descriptor of the process, its `fstat` and its
/// status flags, listed from `/proc/self/fd` without allocating.
fn for_each_descriptor(mut f: impl FnMut(c_int, &libc::stat, c_int)) {
    // SAFETY: a NUL-terminated path; closed below.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return;
    }
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                buf.len() as libc::c_ulong,
            )
        };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        let mut at = 0;
        // A linux_dirent64: inode (8), offset (8), record length (2),
        // type (1), then the NUL-terminated name.
        while at + 19 <= n {
            let len = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            if len == 0 || at + len > n {
                break;
            }
            let name = &buf[at + 19..at + len];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            at += len;
            let Some(fd) = core::str::from_utf8(name)
                .ok()
                .and_then(|name| name.parse::<c_int>().ok())
            else {
                continue;
            };
            if fd == dir {
                continue;
            }
            // SAFETY: an all-zero stat is valid; fstat fills it.
            let mut st: libc::stat = unsafe { core::mem::zeroed() };
            // SAFETY: `st` is writable; a descriptor closed meanwhile fails.
            if unsafe { libc::fstat(fd, &mut st) } != 0 {
                continue;
            }
            // SAFETY: F_GETFL on an open descriptor.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags >= 0 {
                f(fd, &st, flags);
            }
        }
    }
    // SAFETY: `dir` is open and ours.
    unsafe { libc::close(dir) };
}

/// Writes this process's `no-fork` line, once.
fn say_no_fork(reason: &str) {
    let pid = sys::getpid();
    if NO_FORK_PID.swap(pid, Relaxed) == pid {
        return;
    }
    let mut line = StackBuf::<160>::new();
    let _ = Line::NoFork {
        pid: pid.unsigned_abs(),
        reason: Cow::Borrowed(reason),
    }
    .write_to(&mut line);
    append(line.finish_line());
}

/// Forks at the site of stack `id` if `fitness` allows it: in the child,
/// returns at once; in the parent, waits for the child's end and writes
/// what the child could not. Not fit: says why, and the process fails the
/// site itself.
pub(super) fn at_site(id: u64, fitness: Fitness) -> Forked {
    match fitness {
        Fitness::Off => return Forked::Not,
        Fitness::Unfit(reason) => {
            stop(reason.as_str());
            return Forked::Not;
        }
        Fitness::Fit => {}
    }
    let Some(page) = shared() else {
        return Forked::Not;
    };
    // The symbols were resolved since the harness's main thread was seen
    // waiting: it must still be (the deadlock detector is the backstop for
    // a wake-up between this look and the fork).
    if TEST.load(Relaxed) && !main_thread_waits(sys::getpid()) {
        stop("the harness's main thread is not waiting");
        return Forked::Not;
    }
    let errno = sys::errno();
    page.fate.store(0, Relaxed);
    page.site.store(0, Relaxed);
    // SAFETY: all-zero sigsets are valid storage for the calls to fill.
    let (mut chld, mut old): (libc::sigset_t, libc::sigset_t) =
        unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
    // SAFETY: `chld` and `old` are valid sigsets; blocking SIGCHLD on this
    // thread affects no other (a test's waiting main thread, which has no
    // handler of ours, may then take it: its default is to ignore it).
    unsafe {
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &chld, &mut old);
    }
    let parent = sys::getpid();
    // SAFETY: the process has one thread, or a test's two, the harness's
    // main thread seen waiting on a futex just now (see `fitness`), holding
    // none of libtest's locks; the locks this thread holds, or a main
    // thread woken meanwhile held, are the hazard the module's docs
    // describe: a child that waits for ever on one is killed (told apart
    // when it has one thread, else after `MS`) and its site walked again.
    // `fork` runs the program's `pthread_atfork` handlers here, under the
    // in-reclaim mark.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        PARENT.store(parent, Relaxed);
        // SAFETY: `old` is the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
        own_regular_files();
        if OWN_OUTPUT.load(Relaxed) && !own_output() {
            // Its output would be its parent's, and its test's failure
            // could not be told: the parent fails the site itself.
            // SAFETY: _exit ends this child at once.
            unsafe { libc::_exit(0) };
        }
        if TEST.load(Relaxed) {
            note_panic_head();
            exit_with_the_test_thread();
        }
        no_fork_below();
        return Forked::Child;
    }
    let ended = (pid > 0).then(|| wait_for(pid, FORK_MS.load(Relaxed)));
    // SAFETY: `old` is the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    let Some(ended) = ended else {
        let mut reason = StackBuf::<96>::new();
        let _ = write!(reason, "fork failed (errno {})", sys::errno());
        stop(reason.as_str());
        return Forked::Not;
    };
    if page.site.load(Relaxed) != pid {
        // The child ended before its site line (a fork handler of the
        // program's ended it): the site is this process's to fail.
        stop("a forked child ended before writing its site");
        return Forked::Not;
    }
    let killed = matches!(ended, Ended::Killed);
    if page.fate.load(Relaxed) != pid || !matches!(ended, Ended::Status(_)) {
        write_fate_of(id, pid, ended);
    }
    if killed && TEST.load(Relaxed) {
        // A test's child that outlived the timeout: the harness may run
        // tests on threads that never end (each later child would wait as
        // long); the process fails its next site itself.
        stop("a forked child was killed after the timeout");
    }
    sys::set_errno(errno);
    Forked::Parent
}

/// In a forked child: the process that forked it.
pub(super) fn parent() -> libc::pid_t {
    PARENT.load(Relaxed)
}

/// Called by the process that failed a site once its fate line is written:
/// its parent, if it forked it, need not write one.
pub(super) fn fate_written(pid: libc::pid_t) {
    if let Some(page) = shared() {
        page.fate.store(pid, Relaxed);
    }
}

/// Called by the process that failed a site once its site line is written.
pub(super) fn site_written(pid: libc::pid_t) {
    if let Some(page) = shared() {
        page.site.store(pid, Relaxed);
    }
}

/// In the child: every regular file open for reading read (and written)
/// through a description of its own, at the offset the parent had reached,
/// so that what the child reads does not move the parent's offset. Files
/// open for writing only keep their shared offset: the parent's output then
/// follows the child's (a log), never overwrites it.
fn own_regular_files() {
    for_each_descriptor(|fd, st, flags| {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG
            || flags & libc::O_ACCMODE == libc::O_WRONLY
            || flags & (libc::O_APPEND | libc::O_PATH) != 0
        {
            return;
        }
        let mut path = StackBuf::<48>::new();
        let _ = write!(path, "/proc/self/fd/{fd}\0");
        let Ok(path) = CStr::from_bytes_with_nul(path.as_bytes()) else {
            return;
        };
        // SAFETY: lseek and F_GETFD on an open descriptor; -1 on failure.
        let (offset, fd_flags) = unsafe {
            (
                libc::lseek(fd, 0, libc::SEEK_CUR),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        let reopen = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
        // SAFETY: a NUL-terminated path; the new descriptor is ours.
        let own = unsafe { libc::open(path.as_ptr(), reopen | libc::O_CLOEXEC) };
        if own < 0 {
            return;
        }
        // SAFETY: `own` is ours; dup3 makes `fd` refer to its description
        // (keeping `fd`'s close-on-exec flag); `own` is closed after.
        unsafe {
            if offset >= 0 && libc::lseek(own, offset, libc::SEEK_SET) == offset {
                let cloexec = if fd_flags >= 0 && fd_flags & libc::FD_CLOEXEC != 0 {
                    libc::O_CLOEXEC
                } else {
                    0
                };
                libc::dup3(own, fd, cloexec);
            }
            libc::close(own);
        }
    });
}

/// In the child: `sites-fork=` turned off in its own `MAYFAIL_INJECT`, in
/// place, so that the programs it runs fail one site per process (their
/// forking walks would run within this child's time).
fn no_fork_below() {
    // SAFETY: getenv returns the environment's own string or null; its
    // bytes are overwritten in place, within the string, without changing
    // its length (a thread reading the environment meanwhile reads digits
    // either way).
    unsafe {
        let value = libc::getenv(c"MAYFAIL_INJECT".as_ptr());
        if value.is_null() {
            return;
        }
        let len = libc::strlen(value);
        let bytes = core::slice::from_raw_parts_mut(value.cast::<u8>(), len);
        let key = b"sites-fork=";
        if let Some(at) = bytes.windows(key.len()).position(|w| w == key) {
            for b in bytes[at + key.len()..]
                .iter_mut()
                .take_while(|b| b.is_ascii_digit())
            {
                *b = b'0';
            }
        }
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
    let waiting = waits_on_futex(pid, Timeout::None) && threads_of(pid) == Some(1);
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

/// The calls that wait on a futex: `futex`, and on 32-bit x86 the 64-bit
/// time variant glibc uses there.
fn is_futex_call(number: libc::c_long) -> bool {
    #[cfg(target_arch = "x86")]
    if number == 422 {
        // futex_time64
        return true;
    }
    number == libc::SYS_futex
}

/// Which futex waits [`waits_on_futex`] counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timeout {
    /// Only a wait with no time limit.
    None,
    /// A wait with or without one.
    Any,
}

/// Whether process `pid`'s main thread sits in `futex(addr,
/// FUTEX_WAIT*|FUTEX_PRIVATE_FLAG, val, timeout)`, with no time limit
/// unless `timeout` allows one (`/proc/PID/syscall`: the call's number and
/// arguments).
fn waits_on_futex(pid: libc::pid_t, timeout: Timeout) -> bool {
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
    // A timed wait a signal interrupted goes on as `restart_syscall`
    // (the file still shows the futex call's arguments).
    let restarted = timeout == Timeout::Any && number == Some(libc::SYS_restart_syscall);
    if !number.is_some_and(is_futex_call) && !restarted {
        return false;
    }
    let mut args = fields.map(|f| {
        f.strip_prefix(b"0x")
            .and_then(|hex| core::str::from_utf8(hex).ok())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
    });
    let (_addr, op, _val, limit) = (args.next(), args.next(), args.next(), args.next());
    let Some(Some(op)) = op else {
        return false;
    };
    if timeout == Timeout::None && limit != Some(Some(0)) {
        return false;
    }
    let private = op & libc::FUTEX_PRIVATE_FLAG as u64 != 0;
    let command = op & libc::FUTEX_CMD_MASK as u64;
    private
        && [
            libc::FUTEX_WAIT,
            libc::FUTEX_WAIT_BITSET,
            libc::FUTEX_LOCK_PI,
            libc::FUTEX_WAIT_REQUEUE_PI,
            libc::FUTEX_LOCK_PI2,
        ]
        .iter()
        .any(|&c| c as u64 == command)
}

/// Kills child `pid`, through its pidfd when there is one (which can never
/// reach another process, should the program have reaped the child).
fn kill_child(pid: libc::pid_t, pidfd: c_int) {
    if pidfd >= 0 {
        // SAFETY: pidfd_send_signal on our pidfd; no siginfo, no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                libc::SIGKILL,
                ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    } else {
        // SAFETY: `pid` is our child, not yet reaped by us.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
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
            kill_child(pid, pidfd);
            killed = true;
            continue;
        }
        if !killed && deadlocked(pid, &mut stuck) {
            kill_child(pid, pidfd);
            // SAFETY: `pid` is our child; `status` is writable.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && sys::errno() == libc::EINTR {
            }
            break Ended::Deadlocked;
        }
        let wait_ms = if killed {
            LOOK_MS
        } else {
            ((deadline - now) / 1_000_000).clamp(1, LOOK_MS)
        };
        if pidfd >= 0 {
            let mut poll = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut poll, 1, wait_ms as c_int) };
        } else {
            nap_us(u16::try_from(wait_ms * 1000).unwrap_or(u16::MAX));
        }
    };
    if pidfd >= 0 {
        // SAFETY: `pidfd` is open and ours.
        unsafe { libc::close(pidfd) };
    }
    ended
}

/// Writes what child `pid`, which failed stack `id`, did not write: its
/// fate, or a `retry` line when its end says nothing of the site (killed
/// after the timeout or deadlocked, where the fork may be the cause;
/// reaped by the program), or nothing when an interrupt ended it (the
/// runner asks for the site again).
fn write_fate_of(id: u64, pid: libc::pid_t, ended: Ended) {
    let mut detail = StackBuf::<64>::new();
    let outcome = match ended {
        Ended::Killed | Ended::Lost | Ended::Deadlocked => {
            let mut line = StackBuf::<40>::new();
            let _ = Line::Retry { id }.write_to(&mut line);
            append(line.finish_line());
            return;
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
            libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT => return,
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

#[cfg(test)]
mod tests {
    use super::{FailureLines, exact_test_name};

    #[test]
    fn the_test_name_is_the_word_after_exact() {
        let line = b"/t/bin\0--exact\0tests::a_long_test_name\0-q\0--nocapture\0";
        assert_eq!(exact_test_name(line), Some(&b"tests::a_long_test_name"[..]));
        assert_eq!(exact_test_name(b"/t/bin\0-q\0"), None);
        assert_eq!(exact_test_name(b"/t/bin\0--exact\0"), None);
    }

    #[test]
    fn a_cut_thread_name_matches_as_a_prefix() {
        let mut lines = FailureLines::new(b"thread 'tests::test_to_");
        lines.feed(b"thread 'tests::test_to_compact_string' (7) panicked at a.rs:1:1:\n");
        assert!(lines.failed());
    }

    /// Whether `text`, fed in pieces of `piece` bytes, tells test
    /// `tests::t` failed.
    fn failed(text: &str, piece: usize) -> bool {
        let mut lines = FailureLines::new(b"thread 'tests::t'");
        for chunk in text.as_bytes().chunks(piece) {
            lines.feed(chunk);
        }
        lines.failed()
    }

    #[test]
    fn the_test_thread_panic_line_or_an_error_line_is_found_however_the_output_is_cut() {
        let yes = [
            "thread 'tests::t' panicked at src/lib.rs:3:5:\nboom\n",
            "running 1 test\nthread 'tests::t' (6333) panicked at src/x.rs:1:1:\n",
            "out\nError: TryReserveError { kind: CapacityOverflow }\n",
            "out\nError: TryReserveError { kind: CapacityOverflow }\n\n",
            "thread 'tests::t' panicked at a.rs:1:1:\nthen more\n",
            "out\nthread 'tests::t' panicked at a.rs:1:1:",
        ];
        let no = [
            "test t ... ok\n",
            // Another thread's panic (one the test joins and handles).
            "thread 'tests::t2' panicked at a.rs:1:1:\n",
            "thread '<unnamed>' panicked at a.rs:1:1:\n",
            // Not at a line's start, or not the harness's words.
            "  thread 'tests::t' panicked at a.rs:1:1:\n",
            "thread 'tests::t' did not panic\npanicked at a.rs:1:1\n",
            "thread 'tests::t'\n panicked at a.rs:1:1\n",
            "no Error: here\nError:\n",
            // An `Error:` line the test wrote on its way, not its last.
            "Error: a retry\nthen it went on\n",
        ];
        for piece in [1, 2, 3, 7, 4096] {
            for text in yes {
                assert!(failed(text, piece), "{text:?} in pieces of {piece}");
            }
            for text in no {
                assert!(!failed(text, piece), "{text:?} in pieces of {piece}");
            }
        }
    }
}
