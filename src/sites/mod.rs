//! Walking every allocation site of a program, across runs (`sites=FILE`),
//! and replaying one of them (`stack=ID`): mallocfail's and Failgrind's
//! method, driven by the `mayfail sites` runner.
//!
//! A *site* is a distinct call stack that allocates. Its *stack id* is a
//! hash of the stack's return addresses, each taken relative to the module
//! (executable or shared library) that holds it and tagged with that
//! module's file name, so the id is the same in every run of the same build
//! despite address-space randomisation. The modules' executable segments are
//! listed once with `dl_iterate_phdr` into a fixed table; an address outside
//! them (a library loaded later) falls back to `dladdr`.
//!
//! In `sites` mode a process loads the ids already in the state file into a
//! fixed, lock-free hash set (mmap'd), then, for each candidate allocation,
//! walks its stack and looks the id up. The first allocation whose stack is
//! new *and* in the program's own code fails, once per process, so that the
//! process's fate is that site's outcome. The process appends, each with one
//! `O_APPEND` `write(2)`:
//!
//! ```text
//! site\t<id>\t<pid>\t<what failed>\t<thread>\t<binary>\t<where>\t<frames>\t<facts>\t<chain>
//! fate\t<id>\t<pid>\t<aborted|crashed|handled|failed>\t<detail>
//! runtime\t<id>
//! ```
//!
//! The state file's descriptor sits at a high number, out of the way of
//! the files the program opens, and every write first checks with `fstat`
//! (device and inode) that the number still refers to the state file: a
//! program that closes its inherited descriptors (`closefrom`, a loop up to
//! 1024) or `dup2`s its own files over them keeps its files to itself, and
//! the state file is opened again by its path.
//!
//! `where` is the site's first frames outside std, alloc and mayfail,
//! resolved in the failing process right then (under the in-reclaim mark, as
//! the crash report does); `frames` are the raw `module+offset` addresses;
//! `facts` is `panic` when the allocation formats or boxes a panic's payload
//! (std's panic machinery lies between it and the first user frame) and
//! `after=ID+ID` when it was found on an error path (below), `forked` when
//! the process is a child forked at the site (below), comma-separated,
//! else `-`; `chain` is the same frames as `where`, up to the test harness or
//! the thread's start (at most 16), from which the runner tells a fallible
//! API, a dependency's frame and the test.
//! The fate comes from the crash module's `SIGABRT`/`SIGSEGV`/`SIGBUS`
//! handler or from a glibc `on_exit` handler (exit 0: handled, else: failed;
//! a child forked on a test's thread: failed when its output tells the test
//! failed, see `fork`).
//! A new stack whose innermost frame outside the allocation machinery
//! (std, alloc, core, mayfail, and the C and C++ libraries' functions that
//! allocate for their caller) belongs to the Rust runtime, a test harness,
//! the loader or libc's start-up and exit is not a site: it passes
//! and is appended as a `runtime` line so that later runs skip it without
//! resolving it again (`sites-all=Y` counts those too). Once the process has
//! failed its site, `times` reaches 0 and no stack is walked any more.
//!
//! With `sites-shard=K/N`, only new stacks of shard K (stack ids split
//! into N parts by a hash) are failed and recorded; the others pass, so N
//! walks of the same program with the N shards, each with its own state
//! file, find disjoint sets of sites that together make the whole walk. A
//! process that meets a stack of another shard says so once, with an
//! `other-shard\t<pid>` line: a shard with no stack of its own was still
//! reached.
//!
//! In `stack` mode, only allocations whose stack id matches are candidates;
//! the usual `times` (default 1) then fails the first of them.
//!
//! In either mode, `sites-after=A+B` walks an error path: the known stacks
//! A, then B, fail first, in that order, and nothing else is failed (nor
//! recorded) before them; then the mode goes on as usual (the first new
//! stack fails, or the matching one), and a site line says the path it was
//! found after among its facts (`after=A+B`). `times` counts the path's
//! failures too (its default becomes the path's length plus one).
//!
//! With `sites-fork=MS`, a process that can fork safely forks at each new
//! site instead of failing the first one itself: the child fails it and
//! runs on to its fate, the parent waits for it and goes on (see [`fork`]).
//! One run then walks every site the program reaches without failures.
//!
//! Both modes compute the id at one single call site (`stack_id`, called
//! only from `check`), so that the return addresses inside mayfail are the
//! same in both and a `stack=` replay matches the id `sites` recorded.
//!
//! What runs inside the allocator here never allocates, except symbol
//! resolution for a new stack, which runs under the in-reclaim mark (its
//! allocations are served, never injected) and holds the `backtrace` crate's
//! lock while it allocates (a fork waits for it: see `symbols`). It never
//! waits for a fork in progress: a new stack met while another thread forks
//! passes unresolved and unrecorded (not failed), and is met again later.
//! Nothing here panics.

use core::ffi::{CStr, c_int, c_void};
use core::fmt::Write;
use core::ops::Range;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed,
};
use std::borrow::Cow;

use crate::Outcome;
use crate::crash;
use crate::hash::splitmix64;
use crate::inject::{self, Op, StackCheck};
use crate::request::Asked;
use crate::scope::ReclaimGuard;
use crate::spec::{MAX_AFTER, MAX_SITES_PATH, Spec};
use crate::state::{self, Line, StackId};
use crate::symbols::{self, Class, build_modules, locate, modules};
use crate::sys;
use crate::table::{Inserted, Table};
use crate::text::{Clean, Shown, StackBuf};

mod fork;

/// Frames hashed per stack.
const MAX_FRAMES: usize = symbols::MAX_FRAMES;
/// Frames of `where` in a site line.
const WHERE_FRAMES: usize = 3;
/// Frames of the call chain in a site line: enough to reach the test.
const CHAIN_FRAMES: usize = 16;
/// The longest call chain written, in bytes (a longer one is cut at a
/// frame's end).
const CHAIN_BYTES: usize = 3072;

const OFF: u8 = 0;
const SITES: u8 = 1;
const STACK: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(OFF);
/// The state file, open for appending (`-1`: none), at a high number
/// ([`sys::move_descriptor_high`]), and the identity of the file it was
/// opened on: the program may close the number, or reuse it for a file of
/// its own, so every write checks it first ([`state_fd`]).
static FD: AtomicI32 = AtomicI32::new(-1);
static FILE_DEVICE: AtomicU64 = AtomicU64::new(0);
static FILE_INODE: AtomicU64 = AtomicU64::new(0);
/// The state file's path, NUL-terminated, to open it again.
static PATH: [AtomicU8; MAX_SITES_PATH + 1] = [const { AtomicU8::new(0) }; MAX_SITES_PATH + 1];
/// `stack` mode: the id to match.
static WANTED: AtomicU64 = AtomicU64::new(0);
/// `sites` mode: new sites still to let pass (`sites-skip`).
static SKIP: AtomicU64 = AtomicU64::new(0);
/// `sites` mode: count runtime stacks too.
static ALL: AtomicBool = AtomicBool::new(false);
/// `sites` mode: this process's shard (0-based) and the number of shards
/// (`sites-shard=K/N`, stored as `K - 1` and `N`).
static SHARD: AtomicU64 = AtomicU64::new(1);
/// The stack id this process failed (0: none yet), and the pid that did.
static FAILED_ID: AtomicU64 = AtomicU64::new(0);
/// Both modes: the path to an error path (`sites-after`), the stacks that
/// fail first, in order, with nothing else failed before them; and how
/// many of them this process has failed.
static AFTER: [AtomicU64; MAX_AFTER] = [const { AtomicU64::new(0) }; MAX_AFTER];
static AFTER_LEN: AtomicUsize = AtomicUsize::new(0);
static AFTER_DONE: AtomicUsize = AtomicUsize::new(0);
static FAILED_PID: AtomicI32 = AtomicI32::new(0);
/// This process is a child forked at its site (`sites-fork`).
static FORKED: AtomicBool = AtomicBool::new(false);
static FATE_WRITTEN: AtomicBool = AtomicBool::new(false);
static EXIT_HANDLER: AtomicBool = AtomicBool::new(false);

/// The stack filter this module installs in the injection decision while
/// either mode is on: called for allocations that passed the filters and
/// `times`. Runs inside the allocator.
fn check(op: Op, size: usize, align: usize) -> StackCheck {
    let mode = MODE.load(Relaxed);
    if mode == OFF {
        return StackCheck::Candidate;
    }
    if mode == SITES && FAILED_ID.load(Relaxed) != 0 {
        return StackCheck::Pass;
    }
    decide_stack(mode, op, size, align)
}

#[inline(never)]
fn decide_stack(mode: u8, op: Op, size: usize, align: usize) -> StackCheck {
    let mut frames = [0usize; MAX_FRAMES];
    let (id, depth) = stack_id(&mut frames);
    if let Some(verdict) = on_path(id) {
        return verdict;
    }
    if mode == STACK {
        return if id == WANTED.load(Relaxed) {
            StackCheck::Candidate
        } else {
            StackCheck::Pass
        };
    }
    let frames = &frames[..depth];
    if KNOWN.contains(id) {
        return StackCheck::Pass;
    }
    if !in_shard(id) {
        // Another shard's stack: it passes, unresolved and unrecorded.
        KNOWN.insert(id, 0, false);
        note_other_shard();
        return StackCheck::Pass;
    }
    // A new stack: is it the program's, or the runtime's?
    let Some(_reclaiming) = ReclaimGuard::enter() else {
        return StackCheck::Pass;
    };
    // Whether it may fork at this stack: its threads are counted before
    // resolution starts a thread of its own.
    let fitness = if FAILED_ID.load(Relaxed) == 0 {
        fork::fitness()
    } else {
        fork::Fitness::Off
    };
    let Some((class, mut chain, mut panic)) = resolve(frames) else {
        return StackCheck::Pass;
    };
    if !ALL.load(Relaxed) && class == Class::Runtime {
        if KNOWN.insert(id, 0, false) == Inserted::New {
            let mut line = StackBuf::<40>::new();
            let _ = Line::Runtime { id }.write_to(&mut line);
            append(line.finish_line());
        }
        return StackCheck::Pass;
    }
    let mut skip = SKIP.load(Relaxed);
    while skip > 0 {
        match SKIP.compare_exchange_weak(skip, skip - 1, Relaxed, Relaxed) {
            Ok(_) => {
                KNOWN.insert(id, 0, false);
                return StackCheck::Pass;
            }
            Err(now) => skip = now,
        }
    }
    match fork::at_site(id, fitness) {
        fork::Forked::Parent => {
            if KNOWN.insert(id, 0, false) == Inserted::Full {
                // It would fork at this stack again and again.
                fork::stop("no room for more stacks in the table of known ones");
            }
            return StackCheck::Pass;
        }
        fork::Forked::Child => FORKED.store(true, Relaxed),
        fork::Forked::Not => {}
    }
    if FAILED_ID.compare_exchange(0, id, Relaxed, Relaxed).is_err() {
        return StackCheck::Pass;
    }
    FAILED_PID.store(sys::getpid(), Relaxed);
    if chain.is_empty() {
        // Another thread's skip or failure was still pending above.
        symbols::on_big_stack(&mut || {
            symbols::never_waiting_for_fork(|| {
                chain = symbols::site_of(frames, CHAIN_FRAMES, symbols::Paths::Full);
                panic = symbols::serves_panic(frames);
            });
        });
    }
    write_site(id, frames, &chain, panic, op, size, align);
    StackCheck::Fail
}

/// A new stack's class, and if it may be failed its call chain and whether
/// it serves a panic; `None` when a fork in progress made resolution give
/// up rather than wait (see `symbols`): the stack then passes, unrecorded,
/// to be met again later. Resolving symbols needs a large stack (the
/// allocating thread's may be small): it runs on a thread of its own,
/// which catches panics (no thread, or a panic: counted as a site).
fn resolve(frames: &[usize]) -> Option<(Class, String, bool)> {
    let mut class = Class::User;
    let mut chain = String::new();
    let mut panic = false;
    let mut resolved = true;
    symbols::on_big_stack(&mut || {
        resolved = symbols::never_waiting_for_fork(|| {
            class = symbols::classify(frames);
            if (ALL.load(Relaxed) || class != Class::Runtime)
                && SKIP.load(Relaxed) == 0
                && FAILED_ID.load(Relaxed) == 0
            {
                chain = symbols::site_of(frames, CHAIN_FRAMES, symbols::Paths::Full);
                panic = symbols::serves_panic(frames);
            }
        });
    });
    fork::resolved();
    resolved.then_some((class, chain, panic))
}

/// While the `sites-after` path is not complete: its next stack fails, and
/// every other stack passes, unrecorded (met again later, once the path is
/// complete); `None` once it is.
fn on_path(id: u64) -> Option<StackCheck> {
    let done = AFTER_DONE.load(Relaxed);
    if done >= AFTER_LEN.load(Relaxed) {
        return None;
    }
    let next = AFTER[done].load(Relaxed) == id;
    if next
        && AFTER_DONE
            .compare_exchange(done, done + 1, Relaxed, Relaxed)
            .is_ok()
    {
        return Some(StackCheck::Fail);
    }
    Some(StackCheck::Pass)
}

/// The process that last wrote its `other-shard` line (0: none).
static OTHER_SHARD_PID: AtomicI32 = AtomicI32::new(0);

/// Says once per process (a forked child says it again) that it met a
/// stack of another shard: the runner can then tell a shard that was
/// reached but holds nothing of its own from a program never reached.
#[cold]
fn note_other_shard() {
    let pid = sys::getpid();
    if OTHER_SHARD_PID.swap(pid, Relaxed) != pid {
        let mut line = StackBuf::<40>::new();
        let _ = Line::OtherShard {
            pid: pid.unsigned_abs(),
        }
        .write_to(&mut line);
        append(line.finish_line());
    }
}

/// Whether stack `id` belongs to this process's shard (`sites-shard`):
/// shards split the ids by a mix of their bits, so that each gets its share
/// whatever the ids' low bits.
fn in_shard(id: u64) -> bool {
    let shard = SHARD.load(Relaxed);
    let (index, count) = (shard >> 32, shard & u64::from(u32::MAX));
    count <= 1 || splitmix64(id) % count == index
}

/// The current stack's id and its frames. The single place both modes walk
/// the stack from (see the module docs).
#[inline(never)]
fn stack_id(frames: &mut [usize; MAX_FRAMES]) -> (u64, usize) {
    let depth = symbols::walk(frames);
    let mut hash = crate::hash::fnv1a(&[]);
    for &ip in &frames[..depth] {
        let (module, offset) = locate(ip);
        hash = splitmix64(hash ^ module.map_or(0, |m| m.hash));
        hash = splitmix64(hash ^ offset as u64);
    }
    // Never 0 nor all ones: those mark empty and removed table slots.
    (hash.clamp(1, u64::MAX - 1), depth)
}

/// Turns `sites` or `stack` mode on or off for a spec being installed.
/// Returns `false` (and prints one line) if the state file cannot be used:
/// injection must then stay off. Runs inside the allocator when the spec
/// comes from `MAYFAIL_INJECT`: no allocation.
pub(crate) fn install(spec: &Spec) -> bool {
    MODE.store(OFF, Relaxed);
    fork::install(0, false, false);
    inject::set_stack_filter(None);
    let path = &spec.sites_after[..usize::from(spec.sites_after_len)];
    for (slot, &id) in AFTER.iter().zip(path) {
        slot.store(id, Relaxed);
    }
    AFTER_LEN.store(path.len(), Relaxed);
    AFTER_DONE.store(0, Relaxed);
    if spec.stack != 0 {
        build_modules();
        WANTED.store(spec.stack, Relaxed);
        MODE.store(STACK, Relaxed);
        register();
        return true;
    }
    if spec.sites_len == 0 {
        return true;
    }
    build_modules();
    let path = spec.sites_path();
    let mut c_path = [0u8; MAX_SITES_PATH + 1];
    c_path[..path.len()].copy_from_slice(path);
    let Ok(c_path) = CStr::from_bytes_until_nul(&c_path) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; the descriptor is kept for the process.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    let fd = if fd < 0 {
        fd
    } else {
        sys::move_descriptor_high(fd)
    };
    if fd < 0 || !load_known(c_path) {
        let mut line = StackBuf::<700>::new();
        let _ = write!(
            line,
            "mayfail: sites={}: cannot open or read the state file (errno {}); injection stays off",
            Shown(path),
            sys::errno()
        );
        sys::write_stderr(line.finish_line());
        if fd >= 0 {
            // SAFETY: `fd` is open and ours.
            unsafe { libc::close(fd) };
        }
        return false;
    }
    if FILE_WAS_EMPTY.load(Relaxed) {
        let mut header = StackBuf::<32>::new();
        let _ = header.write_str(state::HEADER);
        sys::write_fd(fd, header.finish_line());
    }
    // A reconfiguration keeps the descriptor's number, which a thread may be
    // writing to right now: `dup2` makes it refer to the new file at once,
    // so such a write lands whole in one file or the other, never in a
    // closed or reused descriptor. Unless the number is no longer ours.
    let old = FD.load(Relaxed);
    let old_is_ours = old >= 0 && sys::file_id(old) == Some(state_file_id());
    for (byte, &c) in PATH.iter().zip(c_path.to_bytes_with_nul()) {
        byte.store(c, Relaxed);
    }
    let Some(id) = sys::file_id(fd) else {
        // SAFETY: `fd` is open and ours.
        unsafe { libc::close(fd) };
        return false;
    };
    FILE_DEVICE.store(id.device, Relaxed);
    FILE_INODE.store(id.inode, Relaxed);
    // SAFETY: `fd` and `old` are open descriptors of ours.
    if old_is_ours && unsafe { libc::dup3(fd, old, libc::O_CLOEXEC) } == old {
        // SAFETY: `fd` is open and ours; `old` now refers to its file.
        unsafe { libc::close(fd) };
    } else {
        FD.store(fd, Relaxed);
    }
    SKIP.store(spec.sites_skip, Relaxed);
    ALL.store(spec.sites_all, Relaxed);
    let (k, n) = spec.sites_shard;
    SHARD.store(u64::from(k - 1) << 32 | u64::from(n), Relaxed);
    fork::install(
        spec.sites_fork_ms,
        spec.sites_fork_test,
        spec.sites_fork_output,
    );
    if !EXIT_HANDLER.swap(true, Relaxed) {
        sys::call_on_exit(at_exit);
    }
    MODE.store(SITES, Relaxed);
    register();
    true
}

/// Registers with the layers below: the injection decision asks [`check`],
/// the crash handler tells [`on_fatal_signal`] and asks [`failed_stack`].
fn register() {
    inject::set_stack_filter(Some(check));
    crash::on_fatal_signal(on_fatal_signal);
    crash::replay_stack_with(failed_stack);
}

/// The stack id to replay this process's injected failure with, if `sites`
/// or `stack` mode caused it.
fn failed_stack() -> Option<crash::ReplayStack> {
    let id = match MODE.load(Relaxed) {
        SITES => Some(FAILED_ID.load(Relaxed)).filter(|&id| id != 0)?,
        STACK => WANTED.load(Relaxed),
        _ => return None,
    };
    let mut stack = crash::ReplayStack {
        id,
        after: [0; MAX_AFTER],
        after_len: AFTER_LEN.load(Relaxed).min(MAX_AFTER),
    };
    for (slot, id) in stack.after.iter_mut().zip(&AFTER) {
        *slot = id.load(Relaxed);
    }
    Some(stack)
}

/// The identity of the state file [`FD`] was opened on.
fn state_file_id() -> sys::FileId {
    sys::FileId {
        device: FILE_DEVICE.load(Relaxed),
        inode: FILE_INODE.load(Relaxed),
    }
}

/// The state file's descriptor, checked to be still ours, or opened again
/// (`-1` if it cannot be). Async-signal-safe, no allocation.
fn state_fd() -> c_int {
    let fd = FD.load(Relaxed);
    if fd < 0 || sys::file_id(fd) == Some(state_file_id()) {
        return fd;
    }
    // The program closed the number, or put a file of its own there (it
    // closed its inherited descriptors, or `dup2`ed over them): leave the
    // number to it and open the file again.
    let mut path = [0u8; MAX_SITES_PATH + 1];
    for (c, byte) in path.iter_mut().zip(&PATH) {
        *c = byte.load(Relaxed);
    }
    let Ok(path) = CStr::from_bytes_until_nul(&path) else {
        return -1;
    };
    // SAFETY: a NUL-terminated path; the descriptor is kept for the process.
    let reopened = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC,
        )
    };
    if reopened < 0 {
        return -1;
    }
    let reopened = sys::move_descriptor_high(reopened);
    let Some(id) = sys::file_id(reopened) else {
        // SAFETY: `reopened` is open and ours.
        unsafe { libc::close(reopened) };
        return -1;
    };
    FILE_DEVICE.store(id.device, Relaxed);
    FILE_INODE.store(id.inode, Relaxed);
    match FD.compare_exchange(fd, reopened, Relaxed, Relaxed) {
        Ok(_) => reopened,
        Err(now) => {
            // Another thread opened it again first.
            // SAFETY: `reopened` is open and ours.
            unsafe { libc::close(reopened) };
            now
        }
    }
}

fn append(line: &[u8]) {
    let fd = state_fd();
    if fd >= 0 {
        // One write: O_APPEND makes it land whole at the end of the file.
        // SAFETY: the pointer and length describe `line`.
        unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    }
}

// ---------------------------------------------------------------------------
// Fates.

extern "C" fn at_exit(status: c_int, _arg: *mut c_void) {
    let mut detail = StackBuf::<32>::new();
    let _ = write!(detail, "exit {status}");
    // A child forked on a test's thread exits 0 when that thread ends,
    // whether the test passed or not: its output tells, if it can be read.
    let told = if status == 0 && FORKED.load(Relaxed) {
        fork::test_failed()
    } else {
        fork::Told::NotATest
    };
    let outcome = match told {
        fork::Told::Failed => {
            detail = StackBuf::new();
            let _ = detail.write_str("the test failed");
            Outcome::Failed
        }
        fork::Told::Unread => {
            detail = StackBuf::new();
            let _ = detail.write_str("its output could not be read");
            Outcome::Unknown
        }
        fork::Told::Passed | fork::Told::NotATest if status == 0 => Outcome::Handled,
        fork::Told::Passed | fork::Told::NotATest => Outcome::Failed,
    };
    write_fate(outcome, detail.as_bytes());
}

/// Called first by the crash module's signal handler: the fate of this
/// process's site, if it failed one. Async-signal-safe: no allocation.
fn on_fatal_signal(sig: c_int, fault_address: usize) {
    let mut detail = StackBuf::<64>::new();
    let outcome = if sig == libc::SIGABRT {
        let _ = detail.write_str("SIGABRT");
        Outcome::Aborted
    } else {
        let _ = write!(detail, "{} at {fault_address:#x}", sys::signal_name(sig));
        Outcome::Crashed
    };
    write_fate(outcome, detail.as_bytes());
}

fn write_fate(outcome: Outcome, detail: &[u8]) {
    let id = FAILED_ID.load(Relaxed);
    let pid = sys::getpid();
    // A forked child inherits the id: only the process that failed the site
    // writes its fate, once.
    if id == 0 || pid != FAILED_PID.load(Relaxed) || FATE_WRITTEN.swap(true, Relaxed) {
        return;
    }
    let mut shown = StackBuf::<{ 4 * Shown::MAX + 3 }>::new();
    let _ = write!(shown, "{}", Shown(detail));
    let fate = Line::Fate {
        id,
        pid: pid.unsigned_abs(),
        outcome,
        detail: Cow::Borrowed(shown.as_str()),
    };
    let mut line = StackBuf::<160>::new();
    let _ = fate.write_to(&mut line);
    append(line.finish_line());
    fork::fate_written(pid);
}

// ---------------------------------------------------------------------------
// The site line.

/// Appends the site line of stack `id`: `chain` its resolved frames up to
/// the test, `panic` whether the allocation serves a panic's message. The
/// line is built in memory allocated under the in-reclaim mark (served,
/// never injected).
fn write_site(
    id: u64,
    frames: &[usize],
    chain: &str,
    panic: bool,
    op: Op,
    size: usize,
    align: usize,
) {
    // `where`: the chain's first frames.
    let place = match chain.match_indices(" <- ").nth(WHERE_FRAMES - 1) {
        Some((at, _)) => &chain[..at],
        None => chain,
    };
    let mut cut = chain.len();
    while cut > CHAIN_BYTES {
        cut = chain[..cut].rfind(" <- ").unwrap_or(0);
    }
    // The fields written by hand, in one buffer; then the line.
    let mut text = String::with_capacity(256 + cut + frames.len() * 48);
    let binary = push(
        &mut text,
        format_args!(
            "{}",
            Clean(modules().first().map_or(&b""[..], |m| m.name()))
        ),
    );
    let place = push(&mut text, format_args!("{}", Clean(place.as_bytes())));
    let raw_frames = text.len();
    for (i, &ip) in frames.iter().enumerate() {
        let (module, offset) = locate(ip);
        let name = module.as_ref().map_or(&b"?"[..], |m| m.name());
        let comma = if i == 0 { "" } else { "," };
        let _ = write!(text, "{comma}{}+{offset:#x}", Clean(name));
    }
    let raw_frames = raw_frames..text.len();
    let chain = push(
        &mut text,
        format_args!("{}", Clean(&chain.as_bytes()[..cut])),
    );
    let mut what = StackBuf::<80>::new();
    let _ = write!(what, "{}", Asked { op, size, align });
    // `panic`, the path it was found after (`after=ID+ID`), `forked`.
    let mut facts = StackBuf::<{ 6 + MAX_AFTER * 17 + 8 + 7 + 18 }>::new();
    if panic {
        let _ = facts.write_str("panic");
    }
    let after = AFTER_LEN.load(Relaxed);
    for (i, id) in AFTER[..after].iter().enumerate() {
        let lead = match (i, panic) {
            (0, false) => "after=",
            (0, true) => ",after=",
            _ => "+",
        };
        let _ = write!(facts, "{lead}{}", StackId(id.load(Relaxed)));
    }
    if FORKED.load(Relaxed) {
        let lead = if facts.as_str().is_empty() { "" } else { "," };
        // And the process that forked it: the runner gives the child its
        // parent's test.
        let _ = write!(facts, "{lead}forked,parent={}", fork::parent());
    }
    if facts.as_str().is_empty() {
        let _ = facts.write_str("-");
    }
    // The full name std knows, not the kernel's 15 bytes of it.
    let mut thread = StackBuf::<{ 4 * Shown::MAX + 3 }>::new();
    crate::record::with_thread_name(|name| {
        let _ = write!(thread, "{}", Shown(name));
    });
    let site = Line::Site {
        id,
        pid: sys::getpid().unsigned_abs(),
        what: Cow::Borrowed(what.as_str()),
        thread: Cow::Borrowed(thread.as_str()),
        binary: Cow::Borrowed(&text[binary]),
        place: Cow::Borrowed(&text[place]),
        frames: Cow::Borrowed(&text[raw_frames]),
        facts: Cow::Borrowed(facts.as_str()),
        chain: Cow::Borrowed(&text[chain]),
    };
    let mut line = String::with_capacity(text.len() + 256);
    let _ = site.write_to(&mut line);
    line.push('\n');
    append(line.as_bytes());
    fork::site_written(sys::getpid());
}

/// Writes `args` at the end of `text`; where it lies.
fn push(text: &mut String, args: core::fmt::Arguments<'_>) -> Range<usize> {
    let start = text.len();
    let _ = text.write_fmt(args);
    start..text.len()
}

// ---------------------------------------------------------------------------
// The known stacks: a lock-free table in an anonymous mapping.

static KNOWN: Table = Table::new();
static FILE_WAS_EMPTY: AtomicBool = AtomicBool::new(false);

/// Lines of the state file hold at least this many bytes.
const SHORTEST_LINE: usize = 24;
/// Room for the stacks a process adds to what its file lists.
const NEW_STACKS: usize = 16_384;

/// Makes a table sized for the file and fills it with the file's ids,
/// reading it with `read(2)` (a file truncated meanwhile just ends early).
/// Inside the allocator: no allocation.
fn load_known(path: &CStr) -> bool {
    // SAFETY: a NUL-terminated path; closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is open, `st` writable.
    let stat_ok = unsafe { libc::fstat(fd, &mut st) } == 0;
    let regular = stat_ok && st.st_mode & libc::S_IFMT == libc::S_IFREG;
    #[allow(clippy::unnecessary_cast)] // off_t is 32-bit on some targets
    let size = st.st_size.max(0) as u64 as usize;
    // A reconfiguration may race with readers of the old table: it is kept.
    // SAFETY: not unmapping the old table.
    let loaded = regular && unsafe { KNOWN.create(size / SHORTEST_LINE + NEW_STACKS, false) };
    if loaded {
        FILE_WAS_EMPTY.store(size == 0, Relaxed);
        read_ids(fd);
    }
    // SAFETY: `fd` is open and ours.
    unsafe { libc::close(fd) };
    loaded
}

/// Feeds every line's kind and id to the table. Only a line's first bytes
/// matter; the rest of a long line is skipped.
fn read_ids(fd: c_int) {
    let mut chunk = [0u8; 4096];
    let mut head = [0u8; 40];
    let mut head_len = 0;
    loop {
        // SAFETY: reads at most `chunk.len()` bytes into `chunk`.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n < 0 && sys::errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        for &b in &chunk[..n as usize] {
            if b == b'\n' {
                match state::id_of_line(&head[..head_len]) {
                    state::Known::Stack(id) => {
                        KNOWN.insert(id, 0, false);
                    }
                    state::Known::Retry(id) => {
                        KNOWN.remove(id);
                    }
                    state::Known::Other => {}
                }
                head_len = 0;
            } else if head_len < head.len() {
                head[head_len] = b;
                head_len += 1;
            }
        }
    }
}
