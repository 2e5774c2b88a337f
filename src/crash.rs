//! The report of the call site that could not cope with an injected failure.
//!
//! On stable Rust, a null on an infallible path (`Vec::push`, `Box::new`)
//! makes std print "memory allocation of N bytes failed" and abort; there is
//! no hook. So every injected failure records, in a thread-local of fixed
//! size, what failed and the raw return addresses of its stack (no lock, no
//! allocation: libgcc's unwinder). While injection is on, handlers for
//! `SIGABRT`, `SIGSEGV` and `SIGBUS` are installed; when the thread that got
//! the injected failure then aborts (or faults near address zero: a likely
//! unchecked null), the handler prints the report to stderr, then hands the
//! signal to the handler that was there before (std's stack-overflow handler,
//! or the default action), so the process still dies of the same signal.
//!
//! The report's first part (what failed, where in the thread's sequence, the
//! replay line) is written with raw `write(2)` from stack buffers. Only then
//! are the addresses turned into names and lines, which allocates (under the
//! thread's in-reclaim mark, so nothing is injected there); should that hang,
//! the first part is out already.

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{
    AtomicU8, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
    compiler_fence,
};

use crate::inject::{self, Cause, Op};
use crate::scope::ReclaimGuard;
use crate::spec::Canonical;
use crate::sys;
use crate::text::{Replayable, ShellWord, Shown, StackBuf};

/// Frames kept per injected failure.
const MAX_FRAMES: usize = 64;
/// Frames printed after trimming.
const PRINTED_FRAMES: usize = 16;
/// Faults below this address after an injected failure are reported as a
/// likely unchecked null.
const NULL_PAGE_LIMIT: usize = 1 << 20;

/// The latest injected failure of one thread.
#[derive(Clone, Copy)]
struct Record {
    valid: bool,
    op: Op,
    size: usize,
    align: usize,
    /// The failed allocation's number on its thread.
    number: u64,
    cause: Cause,
    from_env: bool,
    seed: u64,
    depth: usize,
    frames: [usize; MAX_FRAMES],
}

impl Record {
    const EMPTY: Record = Record {
        valid: false,
        op: Op::Alloc,
        size: 0,
        align: 0,
        number: 0,
        cause: Cause::FailNth,
        from_env: false,
        seed: 0,
        depth: 0,
        frames: [0; MAX_FRAMES],
    };
}

struct RecordCell(UnsafeCell<Record>);

thread_local! {
    static LAST: RecordCell = const { RecordCell(UnsafeCell::new(Record::EMPTY)) };
}

/// Runs `f` on this thread's record.
fn with_record<R>(f: impl FnOnce(&mut Record) -> R) -> Option<R> {
    LAST.try_with(|cell| {
        // SAFETY: the record is only reached through this function, on its
        // own thread, and `f` never calls back into it; a signal handler that
        // interrupts a write may read a half-written record, which `valid`
        // (cleared first, set last) makes it skip.
        f(unsafe { &mut *cell.0.get() })
    })
    .ok()
}

/// Records an injected failure of the current thread, with its stack.
pub(crate) fn capture(op: Op, size: usize, align: usize, number: u64, cause: Cause) {
    let from_env = inject::from_env();
    let (_, seed) = inject::current_spec();
    with_record(|r| {
        r.valid = false;
        // A signal handler on this thread must see `valid` cleared before
        // the record changes, and set only once it is complete.
        compiler_fence(SeqCst);
        r.op = op;
        r.size = size;
        r.align = align;
        r.number = number;
        r.cause = cause;
        r.from_env = from_env;
        r.seed = seed;
        let mut depth = 0;
        let frames = &mut r.frames;
        // SAFETY: on Unix, the unsynchronized walk uses libgcc's unwinder,
        // which is thread-safe and does not allocate; the crate's lock only
        // matters for Windows' dbghelp.
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                frames[depth] = frame.ip() as usize;
                depth += 1;
                depth < MAX_FRAMES
            });
        }
        r.depth = depth;
        compiler_fence(SeqCst);
        r.valid = true;
    });
}

/// The verbose line for the failure just recorded (and its backtrace).
pub(crate) fn describe_injection(with_backtrace: bool) {
    let Some(record) = with_record(|r| *r) else {
        return;
    };
    if !record.valid {
        return;
    }
    // Resolving symbols allocates: serve those allocations without injection.
    let _reclaiming = ReclaimGuard::enter();
    let mut line = StackBuf::<400>::new();
    let _ = write!(line, "mayfail: injected failure: ");
    describe(&mut line, &record);
    sys::write_stderr(line.finish_line());
    if with_backtrace {
        print_backtrace(&record);
    }
}

/// "alloc of 64 bytes (align 8) on thread 'name', its allocation #17, by fail-nth"
fn describe<const N: usize>(line: &mut StackBuf<N>, r: &Record) {
    let mut name_buf = [0u8; 16];
    let name = sys::thread_name(&mut name_buf);
    let tid = sys::gettid();
    let _ = write!(
        line,
        "{} of {} bytes (align {}) on thread '{}' (tid {tid}), its allocation #{}, ",
        r.op.name(),
        r.size,
        r.align,
        Shown(name),
        r.number,
    );
    let _ = match r.cause {
        Cause::FailNth => write!(line, "by fail-nth"),
        Cause::Attributes => write!(line, "by MAYFAIL_INJECT attributes (seed {})", r.seed),
    };
}

// ---------------------------------------------------------------------------
// Signal handlers.

/// `NOT_INSTALLED`, `INSTALLING` (one thread is filling slot 0 and
/// installing), then `INSTALLED_STATE`: `reassert_handlers` acts only then.
static INSTALLED: AtomicU8 = AtomicU8::new(NOT_INSTALLED);
const NOT_INSTALLED: u8 = 0;
const INSTALLING: u8 = 1;
const INSTALLED_STATE: u8 = 2;

const SIGNALS: [libc::c_int; 3] = [libc::SIGABRT, libc::SIGSEGV, libc::SIGBUS];

/// How many handlers per signal we remember: the one found at install time,
/// then those that replaced ours later (see [`reassert_handlers`]).
const MAX_SAVED: usize = 8;

/// The handlers to hand a signal over to, per signal. Append-only: a slot is
/// written once, before its index is published in `HAND_OVER`, so a signal
/// handler never reads a slot that is being written.
struct Saved(UnsafeCell<[[libc::sigaction; MAX_SAVED]; SIGNALS.len()]>);

// SAFETY: see the type's doc: every slot is written once, by the thread that
// claimed it in `USED`, before its index is published with Release; readers
// only read published slots, after an Acquire load.
unsafe impl Sync for Saved {}

static SAVED: Saved = Saved(UnsafeCell::new(
    // SAFETY: an all-zero sigaction is a valid value (SIG_DFL, empty mask).
    unsafe { core::mem::zeroed() },
));

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
/// Slots claimed per signal.
static USED: [AtomicUsize; SIGNALS.len()] = [ZERO; SIGNALS.len()];
/// The slot of the handler to hand over to, per signal (0: the one found at
/// install time).
static HAND_OVER: [AtomicUsize; SIGNALS.len()] = [ZERO; SIGNALS.len()];

fn our_handler() -> usize {
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_signal;
    handler as usize
}

/// Installs the report handlers once per process. Does not allocate.
pub(crate) fn install_handlers() {
    if INSTALLED.load(Acquire) != NOT_INSTALLED
        || INSTALLED
            .compare_exchange(NOT_INSTALLED, INSTALLING, Acquire, Relaxed)
            .is_err()
    {
        return;
    }
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: an all-zero sigaction is valid; we fill in the handler.
        let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
        action.sa_sigaction = our_handler();
        // Not on the alternate stack: std's is a few KiB, and resolving
        // symbols for the report needs far more. The price: while these
        // handlers are installed, a stack overflow is not reported by std.
        action.sa_flags = libc::SA_SIGINFO;
        USED[i].store(1, Relaxed);
        // SAFETY: `action.sa_mask` is a valid sigset. Slot 0 is written by
        // this thread only (it won `INSTALLED`), before our handler, its
        // only reader, is installed.
        unsafe {
            libc::sigemptyset(&mut action.sa_mask);
            let slot = &mut (*SAVED.0.get())[i][0];
            libc::sigaction(sig, &action, slot);
        }
        HAND_OVER[i].store(0, Release);
    }
    INSTALLED.store(INSTALLED_STATE, Release);
}

/// Puts the handlers back in front if someone replaced them since
/// [`install_handlers`], remembering the replacement as the handler to hand
/// over to. Needed because `MAYFAIL_INJECT` is read by the first allocation,
/// which can fall inside std's start-up between its read of the `SIGSEGV`
/// action (still the default) and its write of its stack-overflow handler,
/// which then silently replaces ours. Called on each injected failure; does
/// not allocate. At most `MAX_SAVED - 1` times per signal.
pub(crate) fn reassert_handlers() {
    if INSTALLED.load(Acquire) != INSTALLED_STATE {
        return;
    }
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: an all-zero sigaction is valid; sigaction fills it.
        let mut current: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: reads the current action into `current`.
        unsafe { libc::sigaction(sig, core::ptr::null(), &mut current) };
        if current.sa_sigaction == our_handler() {
            continue;
        }
        let slot = USED[i].fetch_add(1, Relaxed);
        if slot >= MAX_SAVED {
            continue;
        }
        let mut action = current;
        action.sa_sigaction = our_handler();
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `slot` was claimed by this call alone and is not published
        // yet, so nothing reads it while it is written.
        unsafe {
            (*SAVED.0.get())[i][slot] = current;
            libc::sigemptyset(&mut action.sa_mask);
        }
        HAND_OVER[i].store(slot, Release);
        // SAFETY: `action` is a valid sigaction.
        unsafe { libc::sigaction(sig, &action, core::ptr::null_mut()) };
    }
}

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    let index = SIGNALS.iter().position(|&s| s == sig).unwrap_or(0);
    let fault_address = if sig == libc::SIGABRT || info.is_null() {
        0
    } else {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        unsafe { (*info).si_addr() as usize }
    };
    // [sites] The fate of the site this process failed in `sites` mode.
    crate::sites::on_fatal_signal(sig, fault_address);
    let record = with_record(|r| {
        let copy = *r;
        // Report once: a second signal in the same thread passes through.
        r.valid = false;
        copy
    });
    if let Some(record) = record
        && record.valid
        && (sig == libc::SIGABRT || fault_address < NULL_PAGE_LIMIT)
        && !crate::sweep::in_child()
    {
        print_report(sig, fault_address, &record);
    }
    // Hand over to what was there before: install it, and let the signal
    // happen again (a fault re-executes; an abort is raised again, pending
    // until this handler returns). If our handler is not the installed one,
    // a handler that replaced ours called us as its "previous": hand over to
    // the one found at install time, never back to the caller, or the two
    // would pass the signal to each other for ever.
    // SAFETY: an all-zero sigaction is valid; sigaction fills it.
    let mut current: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: reads the current action into `current`.
    unsafe { libc::sigaction(sig, core::ptr::null(), &mut current) };
    let slot = if current.sa_sigaction == our_handler() {
        HAND_OVER[index].load(Acquire)
    } else {
        0
    };
    // SAFETY: published slots are never written again (see `Saved`).
    unsafe {
        let target = &(*SAVED.0.get())[index][slot];
        libc::sigaction(sig, target, core::ptr::null_mut());
        if sig == libc::SIGABRT {
            libc::raise(sig);
        }
    }
}

fn print_report(sig: libc::c_int, fault_address: usize, r: &Record) {
    let _reclaiming = ReclaimGuard::enter();
    // Resolving symbols allocates. If the C allocator itself aborted while
    // holding its lock (heap corruption detected by glibc), that would hang
    // for ever: let SIGALRM end the process after 10 s instead.
    // SAFETY: alarm is async-signal-safe and has no preconditions.
    unsafe { libc::alarm(10) };
    let mut line = StackBuf::<300>::new();
    let _ = if sig == libc::SIGABRT {
        if aborting_from_alloc_error() {
            write!(
                line,
                "mayfail: the process is aborting after an injected allocation failure: std's \
                 handle_alloc_error, an infallible allocation path"
            )
        } else {
            write!(
                line,
                "mayfail: the process is aborting, not from handle_alloc_error; the last \
                 injected failure on this thread was handled at the time"
            )
        }
    } else {
        let name = sys::signal_name(sig);
        write!(
            line,
            "mayfail: the process crashed ({name} at address {fault_address:#x}) after an \
             injected allocation failure: likely an unchecked null, a memory-safety bug"
        )
    };
    sys::write_stderr(line.finish_line());

    let mut line = StackBuf::<400>::new();
    let _ = write!(line, "mayfail:   failed on purpose: ");
    describe(&mut line, r);
    sys::write_stderr(line.finish_line());
    print_replay(r);
    print_backtrace(r);
    // SAFETY: as above; cancels the alarm.
    unsafe { libc::alarm(0) };
}

/// Whether the current stack (inside the `SIGABRT` handler) goes through
/// std's allocation-error handler. Resolving names allocates.
fn aborting_from_alloc_error() -> bool {
    let mut frames = [0usize; 48];
    let mut depth = 0;
    // SAFETY: as in `capture`; libgcc's unwinder walks through the signal
    // frame to the code that called `abort`.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            frames[depth] = frame.ip() as usize;
            depth += 1;
            depth < frames.len()
        });
    }
    let mut found = false;
    for &ip in &frames[..depth] {
        backtrace::resolve(ip as *mut core::ffi::c_void, |symbol| {
            if let Some(name) = symbol.name().and_then(|n| n.as_str()) {
                found |= ALLOC_ERROR_FRAMES.iter().any(|f| name.contains(f));
            }
        });
        if found {
            break;
        }
    }
    found
}

/// Symbols of std's path from a failed allocation to the abort.
const ALLOC_ERROR_FRAMES: [&str; 3] = [
    "handle_alloc_error",
    "rust_oom",
    "__rust_alloc_error_handler",
];

fn print_replay(r: &Record) {
    let mut line = StackBuf::<4096>::new();
    let _ = write!(line, "mayfail:   replay: ");
    // [sites] A failure of `sites=` or `stack=` mode replays by its stack id.
    if r.cause == Cause::Attributes
        && r.from_env
        && let Some(id) = crate::sites::failed_stack()
    {
        let _ = write!(line, "MAYFAIL_INJECT='stack={id:016x}' ");
        write_command_line(&mut line);
        sys::write_stderr(line.finish_line());
        return;
    }
    if r.cause == Cause::Attributes && r.from_env {
        let mut name_buf = [0u8; 16];
        let name = sys::thread_name(&mut name_buf);
        let transient = if inject::transient() {
            ",transient=Y"
        } else {
            ""
        };
        let _ = write!(
            line,
            "MAYFAIL_INJECT='nth={},thread={}{transient}' ",
            r.number,
            Replayable(name)
        );
    }
    write_command_line(&mut line);
    if r.cause == Cause::FailNth || !r.from_env {
        let _ = write!(line, "   (the program sets up this injection itself)");
    }
    sys::write_stderr(line.finish_line());
    if r.cause == Cause::Attributes && r.from_env {
        let (spec, seed) = inject::current_spec();
        let mut line = StackBuf::<1024>::new();
        let _ = write!(
            line,
            "mayfail:   same run: MAYFAIL_INJECT='{}' with the same command",
            Canonical { spec: &spec, seed }
        );
        sys::write_stderr(line.finish_line());
    }
}

/// The command line of this process, shell-quoted, read from
/// `/proc/self/cmdline` without allocating.
fn write_command_line<const N: usize>(line: &mut StackBuf<N>) {
    let mut buf = [0u8; 2048];
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/self/cmdline".as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return;
    }
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: writes at most the rest of `buf`.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
    }
    // SAFETY: `fd` is open.
    unsafe { libc::close(fd) };
    // Every argument ends with a NUL: an empty argument is an empty field.
    let args = buf[..len].strip_suffix(&[0]).unwrap_or(&buf[..len]);
    for (i, arg) in args.split(|&b| b == 0).enumerate() {
        let _ = write!(line, "{}{}", if i == 0 { "" } else { " " }, ShellWord(arg));
    }
}

/// Frames of these crates and symbols are allocation machinery, not the
/// caller: they are trimmed from the top of the backtrace. Matched after any
/// leading `<` of a qualified path.
const TRIMMED: [&str; 9] = [
    "backtrace::",
    "mayfail::",
    "__rust",
    "__rdl",
    "__rg_",
    "alloc::",
    "core::",
    "std::",
    "hashbrown::",
];

/// Whether a demangled symbol belongs to the allocation machinery. A
/// qualified path `<Type as Trait>::f` does when its type does, or when its
/// type is a bare generic parameter (`<T as alloc::...>`) and its trait does.
pub(crate) fn is_machinery(name: &str) -> bool {
    // A crate name with a disambiguator (`gimli[9d27...]::`) is one of std's
    // private dependencies: machinery too.
    let machinery_path = |path: &str| {
        TRIMMED.iter().any(|prefix| path.starts_with(prefix))
            || path
                .split("::")
                .next()
                .is_some_and(|krate| krate.contains('['))
    };
    let inner = name.trim_start_matches('<');
    if machinery_path(inner) {
        return true;
    }
    match inner.split_once(" as ") {
        Some((ty, rest)) => {
            let generic = !ty.is_empty()
                && ty.len() <= 2
                && ty
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            generic && machinery_path(rest.trim_start_matches('<'))
        }
        None => false,
    }
}

/// Writes what this thread's latest injected failure was:
/// `alloc of 64 bytes (align 8)`.
pub(crate) fn write_failure<const N: usize>(line: &mut StackBuf<N>) {
    if let Some(r) = with_record(|r| *r)
        && r.valid
    {
        let _ = write!(
            line,
            "{} of {} bytes (align {})",
            r.op.name(),
            r.size,
            r.align
        );
    }
}

/// Writes the raw return addresses of this thread's latest injected
/// failure, in hex, separated by commas. Does not allocate.
pub(crate) fn write_frames<const N: usize>(line: &mut StackBuf<N>) -> bool {
    let Some(record) = with_record(|r| *r) else {
        return false;
    };
    if !record.valid {
        return false;
    }
    for (i, ip) in record.frames[..record.depth].iter().enumerate() {
        let _ = write!(line, "{}{ip:x}", if i == 0 { "" } else { "," });
    }
    true
}

/// The call site of a stack: its first `depth` frames outside the
/// allocation machinery, as `function (file:line) <- caller (file:line)`.
/// The addresses must belong to this process (or to its parent before a
/// fork, which has the same mappings).
pub(crate) fn site_of(frames: &[usize], depth: usize) -> String {
    let mut site = String::new();
    let mut written = 0;
    let mut trimming = true;
    for &ip in frames {
        if written >= depth {
            break;
        }
        backtrace::resolve(ip as *mut core::ffi::c_void, |symbol| {
            if written >= depth {
                return;
            }
            let name = symbol.name().map(|n| format!("{n:#}"));
            let name = name.as_deref().unwrap_or("<unknown>");
            if trimming && is_machinery(name) {
                return;
            }
            trimming = false;
            if written > 0 {
                site.push_str(" <- ");
            }
            site.push_str(name);
            if let (Some(file), Some(lineno)) = (symbol.filename(), symbol.lineno()) {
                let dir = std::env::current_dir().ok();
                let shown = dir
                    .as_deref()
                    .and_then(|dir| file.strip_prefix(dir).ok())
                    .unwrap_or(file);
                let _ = write!(site, " ({}:{lineno})", shown.display());
            }
            written += 1;
        });
    }
    if written == 0 {
        site.push_str("<no symbols>");
    }
    site
}

fn print_backtrace(r: &Record) {
    sys::write_stderr(
        b"mayfail:   backtrace of the failing allocation (allocation frames of mayfail and std trimmed):\n",
    );
    let mut printed = 0;
    let mut trimming = true;
    for &ip in &r.frames[..r.depth] {
        if printed >= PRINTED_FRAMES {
            break;
        }
        // One return address may stand for several inlined functions,
        // innermost first: keep up to four, with whether each is machinery.
        let mut lines: [(StackBuf<400>, bool); 4] = [const { (StackBuf::new(), false) }; 4];
        let mut count = 0;
        let mut reached_harness = false;
        backtrace::resolve(ip as *mut core::ffi::c_void, |symbol| {
            if count == lines.len() || reached_harness {
                return;
            }
            let name = symbol.name().map(|n| format!("{n:#}"));
            let name = name.as_deref().unwrap_or("<unknown>");
            if name.contains("__rust_begin_short_backtrace") {
                reached_harness = true;
                return;
            }
            let (line, machinery) = &mut lines[count];
            *machinery = is_machinery(name);
            let _ = write!(line, "  {printed:>3}: {name}");
            if let (Some(file), Some(lineno)) = (symbol.filename(), symbol.lineno()) {
                let _ = write!(line, "\n           at {}:{lineno}", file.display());
            }
            count += 1;
        });
        if count == 0 {
            if trimming {
                continue;
            }
            let mut line = StackBuf::<64>::new();
            let _ = write!(line, "  {printed:>3}: {ip:#x}");
            sys::write_stderr(line.finish_line());
            printed += 1;
            continue;
        }
        let skip = if trimming {
            lines[..count]
                .iter()
                .take_while(|(_, machinery)| *machinery)
                .count()
        } else {
            0
        };
        if skip == count {
            continue;
        }
        trimming = false;
        for (line, _) in &mut lines[skip..count] {
            sys::write_stderr(line.finish_line());
        }
        printed += 1;
        if reached_harness {
            // Below this, only the runtime or the test harness: std cuts
            // its own backtraces here too.
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_machinery_is_recognised() {
        for name in [
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
            "mayfail::alloc::MayFail<A>::serve_engaged",
            "<mayfail::alloc::MayFail<A> as core::alloc::global::GlobalAlloc>::alloc",
            "__rust_alloc",
            "__rdl_alloc",
            "std::alloc::System::alloc",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "<<alloc::boxed::Box<str> as core::convert::From<&str>>::from as core::ops::FnOnce>::call_once",
            "<T as alloc::slice::<impl [T]>::to_vec_in::ConvertVec>::to_vec",
            "<gimli[9d272e8433f81454]::read::abbrev::Attributes>::push",
        ] {
            assert!(is_machinery(name), "{name}");
        }
        for name in [
            "my_app::cache::insert",
            "inject::vec_push_aborts",
            "<my_app::X as Y>::f",
        ] {
            assert!(!is_machinery(name), "{name}");
        }
    }
}
