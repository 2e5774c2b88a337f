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

/// This thread's record, as a raw pointer: no `&mut` to it is ever made,
/// because a signal handler on the same thread may read it while the
/// thread is in the middle of writing it.
fn record() -> Option<*mut Record> {
    LAST.try_with(|cell| cell.0.get()).ok()
}

/// A copy of this thread's latest record (check `valid`).
pub(crate) fn latest() -> Option<Record> {
    // SAFETY: the pointer is this thread's record, alive while the thread
    // is; a volatile read of a plain `Copy` value, possibly half-written by
    // the code this signal handler interrupted, which `valid` (cleared
    // first, set last) tells apart.
    record().map(|p| unsafe { core::ptr::read_volatile(p) })
}

/// A copy of this thread's latest record, which is then marked as used
/// (`valid` cleared): a signal handler reports a failure once.
pub(crate) fn take() -> Option<Record> {
    let p = record()?;
    // SAFETY: as in `latest`; the write is a single `bool` through the raw
    // pointer, no reference is made.
    unsafe {
        let copy = core::ptr::read_volatile(p);
        core::ptr::addr_of_mut!((*p).valid).write_volatile(false);
        Some(copy)
    }
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
    let Some(p) = record() else {
        return;
    };
    // Walk first, into the stack: the record is only ever written whole.
    let mut frames = [0usize; MAX_FRAMES];
    let depth = symbols::walk(&mut frames);
    let new = Record {
        valid: false,
        op,
        size,
        align,
        number,
        cause,
        from_env,
        seed,
        depth,
        frames,
    };
    // SAFETY: `p` is this thread's record. No reference to it exists (see
    // `record`); a signal handler on this thread reads it with volatile
    // reads. `valid` is cleared before the record changes and set only once
    // it is complete, with compiler fences between: the handler, on the same
    // thread, sees the writes in program order.
    unsafe {
        core::ptr::addr_of_mut!((*p).valid).write_volatile(false);
        compiler_fence(SeqCst);
        core::ptr::write_volatile(p, new);
        compiler_fence(SeqCst);
        core::ptr::addr_of_mut!((*p).valid).write_volatile(true);
    }
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
    if let Some(r) = latest()
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
