//! The latest injected failure of each thread: what failed, where in the
//! thread's sequence, why, and the raw return addresses of its stack.
//!
//! Written by the injection decision at the moment it fails an allocation;
//! read by the crash report (in a signal handler), by the sweep's child and
//! by verbose lines. One `const`-initialised thread-local without a
//! destructor, of fixed size: capturing never allocates, locks or panics
//! (the stack walk is libgcc's unwinder).

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{Ordering::SeqCst, compiler_fence};

use crate::request::Op;
use crate::symbols;
use crate::sys;
use crate::text::{Shown, StackBuf};

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
    pub(crate) depth: usize,
    pub(crate) frames: [usize; MAX_FRAMES],
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
pub(crate) fn with_record<R>(f: impl FnOnce(&mut Record) -> R) -> Option<R> {
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
pub(crate) fn capture(
    op: Op,
    size: usize,
    align: usize,
    number: u64,
    cause: Cause,
    from_env: bool,
    seed: u64,
) {
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
        r.depth = symbols::walk(&mut r.frames);
        compiler_fence(SeqCst);
        r.valid = true;
    });
}

/// "alloc of 64 bytes (align 8) on thread 'name', its allocation #17, by fail-nth"
pub(crate) fn describe<const N: usize>(line: &mut StackBuf<N>, r: &Record) {
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
