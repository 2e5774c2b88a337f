//! The latest injected failure of each thread: what failed, where in the
//! thread's sequence, why, and the raw return addresses of its stack; and,
//! while the thread is exhausted (a sweep's persistent mode, where every
//! allocation after the n-th fails too), the first failure of that run
//! beside the last, so that a report blames the allocation that reached an
//! infallible path and still names the one that started the run.
//!
//! Written by the injection decision at the moment it fails an allocation;
//! read by the crash report (in a signal handler), by the sweep's child and
//! by verbose lines. One `const`-initialised thread-local without a
//! destructor, of fixed size: capturing never allocates, locks or panics
//! (the stack walk is libgcc's unwinder).

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{Ordering::SeqCst, compiler_fence};

use crate::request::{Asked, Op};
use crate::scope;
use crate::symbols;
use crate::sys;
use crate::text::{Escaped, StackBuf};

/// Frames kept per injected failure.
pub(crate) const MAX_FRAMES: usize = symbols::MAX_FRAMES;

/// Why an allocation was failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The thread's fail-nth countdown reached zero.
    FailNth,
    /// The configured attributes (`MAYFAIL_INJECT`, `configure_injection`).
    Attributes,
}

/// The latest injected failure of one thread.
#[derive(Clone, Copy)]
pub(crate) struct Record {
    pub(crate) valid: bool,
    pub(crate) op: Op,
    pub(crate) size: usize,
    pub(crate) align: usize,
    /// The failed allocation's number on its thread.
    pub(crate) number: u64,
    pub(crate) cause: Cause,
    pub(crate) from_env: bool,
    pub(crate) seed: u64,
    /// Whether the thread was exhausted (persistent mode) when it failed.
    pub(crate) exhausted: bool,
    pub(crate) depth: usize,
    pub(crate) frames: [usize; MAX_FRAMES],
}

impl Record {
    /// What this failure asked for: `alloc of 64 bytes (align 8)`.
    pub(crate) fn asked(&self) -> Asked {
        Asked {
            op: self.op,
            size: self.size,
            align: self.align,
        }
    }

    const EMPTY: Record = Record {
        valid: false,
        op: Op::Alloc,
        size: 0,
        align: 0,
        number: 0,
        cause: Cause::FailNth,
        from_env: false,
        seed: 0,
        exhausted: false,
        depth: 0,
        frames: [0; MAX_FRAMES],
    };
}

/// The two records of a thread: the last injected failure, and the first
/// of the exhausted run it belongs to (the same failure outside one).
struct Records {
    first: Record,
    last: Record,
}

struct RecordCell(UnsafeCell<Records>);

thread_local! {
    static RECORDS: RecordCell = const {
        RecordCell(UnsafeCell::new(Records {
            first: Record::EMPTY,
            last: Record::EMPTY,
        }))
    };
}

/// This thread's records, as a raw pointer: no `&mut` to them is ever made,
/// because a signal handler on the same thread may read them while the
/// thread is in the middle of writing them.
fn records() -> Option<*mut Records> {
    RECORDS.try_with(|cell| cell.0.get()).ok()
}

/// A copy of one record. `p` points into this thread's records.
///
/// # Safety
///
/// `p` must be `addr_of_mut!((*records).first)` or `.last` of this thread's
/// records (see [`records`]).
unsafe fn read(p: *mut Record) -> Record {
    // SAFETY: the caller's pointer is this thread's, alive while the thread
    // is; a volatile read of a plain `Copy` value, possibly half-written by
    // the code a signal handler interrupted, which `valid` (cleared first,
    // set last) tells apart.
    unsafe { core::ptr::read_volatile(p) }
}

/// Writes `new` whole into `p`, valid only once complete.
///
/// # Safety
///
/// As for [`read`].
unsafe fn write(p: *mut Record, new: Record) {
    // SAFETY: `p` is this thread's record (the caller's contract). No
    // reference to it exists; a signal handler on this thread reads it with
    // volatile reads. `valid` is cleared before the record changes and set
    // only once it is complete, with compiler fences between: the handler,
    // on the same thread, sees the writes in program order.
    unsafe {
        core::ptr::addr_of_mut!((*p).valid).write_volatile(false);
        compiler_fence(SeqCst);
        core::ptr::write_volatile(
            p,
            Record {
                valid: false,
                ..new
            },
        );
        compiler_fence(SeqCst);
        core::ptr::addr_of_mut!((*p).valid).write_volatile(true);
    }
}

/// A copy of this thread's latest record (check `valid`).
pub(crate) fn latest() -> Option<Record> {
    let p = records()?;
    // SAFETY: `p` is this thread's records; no reference is made.
    Some(unsafe { read(core::ptr::addr_of_mut!((*p).last)) })
}

/// The latest record, and the first failure of its exhausted run when that
/// was another allocation (persistent mode: the run's first failure was
/// handled or not, and a later one is what the report is about).
#[derive(Clone, Copy)]
pub(crate) struct Taken {
    pub(crate) last: Record,
    pub(crate) first: Option<Record>,
}

/// This thread's records, which are then marked as used (`valid` cleared):
/// a signal handler reports a failure once.
pub(crate) fn take() -> Option<Taken> {
    let p = records()?;
    // SAFETY: `p` is this thread's records; the reads are volatile copies,
    // the writes single `bool`s through the raw pointer, no reference made.
    unsafe {
        let first = read(core::ptr::addr_of_mut!((*p).first));
        let last = read(core::ptr::addr_of_mut!((*p).last));
        core::ptr::addr_of_mut!((*p).last.valid).write_volatile(false);
        core::ptr::addr_of_mut!((*p).first.valid).write_volatile(false);
        let first = (first.valid && last.valid && first.number != last.number).then_some(first);
        Some(Taken { last, first })
    }
}

/// Forgets this thread's records: the next injected failure starts a run
/// of its own even if the thread is exhausted (a sweep starts each run
/// with this).
#[cfg(feature = "sweep")]
pub(crate) fn forget() {
    let _ = take();
}

/// Records an injected failure of the current thread, with its stack. While
/// the thread is exhausted, a failure after one recorded in the same state
/// is a later one of the same run: it replaces the last record and keeps
/// the first.
pub(crate) fn capture(
    op: Op,
    size: usize,
    align: usize,
    number: u64,
    cause: Cause,
    from_env: bool,
    seed: u64,
) {
    let Some(p) = records() else {
        return;
    };
    // Walk first, into the stack: the record is only ever written whole.
    let mut frames = [0usize; MAX_FRAMES];
    let depth = symbols::walk(&mut frames);
    let exhausted = scope::exhausted();
    let new = Record {
        valid: true,
        op,
        size,
        align,
        number,
        cause,
        from_env,
        seed,
        exhausted,
        depth,
        frames,
    };
    // SAFETY: `p` is this thread's records; both fields are written through
    // `write`, which keeps them consistent for a signal handler.
    unsafe {
        let last = read(core::ptr::addr_of_mut!((*p).last));
        let same_run = exhausted && last.valid && last.exhausted && last.number < number;
        if !same_run {
            write(core::ptr::addr_of_mut!((*p).first), new);
        }
        write(core::ptr::addr_of_mut!((*p).last), new);
    }
}

/// Calls `f` with the current thread's name as a report should show it:
/// the kernel keeps 15 bytes of it, so a name that long may be cut, and then
/// the full name std keeps is asked for, under the in-reclaim mark (asking
/// std may allocate the thread's handle; what it allocates there is served,
/// never injected). Shorter names are the kernel's, read without
/// allocating.
pub(crate) fn with_thread_name<T>(f: impl FnOnce(&[u8]) -> T) -> T {
    let mut name_buf = [0u8; 16];
    let kernel = sys::thread_name(&mut name_buf);
    if kernel.len() < sys::KERNEL_NAME_BYTES {
        return f(kernel);
    }
    let _reclaiming = scope::ReclaimGuard::enter();
    let thread = std::panic::catch_unwind(std::thread::current).ok();
    match thread.as_ref().and_then(|t| t.name()) {
        // Only a name the kernel's is the start of: a thread std did not
        // name (one a C library started) has none, or the main thread's.
        Some(full) if full.as_bytes().starts_with(kernel) => f(full.as_bytes()),
        _ => f(kernel),
    }
}

/// "alloc of 64 bytes (align 8) on thread 'name', its allocation #17, by fail-nth"
pub(crate) fn describe<const N: usize>(line: &mut StackBuf<N>, r: &Record) {
    let tid = sys::gettid();
    let _ = write!(line, "{} on thread '", r.asked());
    with_thread_name(|name| {
        let _ = write!(line, "{}", Escaped(name));
    });
    let _ = write!(line, "' (tid {tid}), its allocation #{}, ", r.number);
    let _ = match r.cause {
        Cause::FailNth => write!(line, "by fail-nth"),
        Cause::Attributes => write!(line, "by MAYFAIL_INJECT attributes (seed {})", r.seed),
    };
}

/// Writes what this thread's latest injected failure was:
/// `alloc of 64 bytes (align 8)`.
#[cfg(feature = "sweep")]
pub(crate) fn write_failure<const N: usize>(line: &mut StackBuf<N>) {
    if let Some(r) = latest()
        && r.valid
    {
        let _ = write!(line, "{}", r.asked());
    }
}

/// Writes the raw return addresses of this thread's latest injected
/// failure, in hex, separated by commas. Does not allocate.
#[cfg(feature = "sweep")]
pub(crate) fn write_frames<const N: usize>(line: &mut StackBuf<N>) -> bool {
    let Some(record) = latest() else {
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
