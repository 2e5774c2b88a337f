//! The C functions' semantics, as glibc gives them, around the engine.
//!
//! Every call first asks the [`gate`] whether the engine may
//! serve it; if not, the wrapped implementation's own function serves it
//! ([`inner`]: glibc's, or the one the program is linked with). The engine
//! is one `static` [`MayFail`] over [`Inner`]. The [`Layout`] it is handed:
//!
//! - `malloc(n)`, `calloc`: size `n` (the product for `calloc`), alignment
//!   1; `malloc` aligns every block to `MALLOC_ALIGNMENT` anyway. A size of
//!   zero is passed as zero: [`Inner`] serves it as `malloc(0)` does.
//! - The aligned functions: the size and the (checked, adjusted) alignment.
//! - `free(p)`, `realloc(p, n)`: the size of a C block is not known, so the
//!   old layout is the implementation's `malloc_usable_size(p)` with
//!   alignment 1. [`Inner`] ignores it (the implementation knows its
//!   blocks); the heap limit's count (`MAYFAIL_LIMIT`) takes it off, and
//!   every block served is counted at its usable size too, once the engine
//!   has served it.
//!
//! What this asks of the engine beyond `GlobalAlloc`'s contract is stated
//! once, on [`Inner`] ("The contract with the engine").
//!
//! Every failure returns null (or `ENOMEM` from `posix_memalign`) with
//! `errno` set to `ENOMEM`, including the failures the engine injects;
//! sizes above `isize::MAX` fail so without reaching the engine, as they
//! do in glibc. `realloc(p, 0)` frees `p` and returns null, leaving `errno`
//! alone, as glibc does. `malloc_usable_size` is not interposed: the blocks
//! are the wrapped implementation's, so its own answer is the right one.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_void};

use mayfail::MayFail;

use crate::gate;
use crate::inner::{self, Inner, MALLOC_ALIGNMENT};

/// The engine: its retry knob's default is 0 (see [`DEFAULT_RETRIES`]).
static ENGINE: MayFail<Inner> = MayFail::new(Inner).with_retries(DEFAULT_RETRIES);

/// The library's default for the retry knob: 0, a real failure returns
/// null at once, as it does without the library. `MAYFAIL_RETRIES` still
/// sets it (`-1` retries until memory is freed, `N` at most `N` times).
///
/// Why not the crate's `-1`: the callers here are C code, and C's contract
/// is that `malloc` returns null when there is no memory. C programs check
/// for it (or crash where they do not, which is what a walk finds); they
/// register no reclaimer, so a thread that retries waits for memory that
/// only the process itself could free: a program that fills a
/// `RLIMIT_AS` with `malloc` until it returns null would hang for ever
/// instead of stopping. A count `N` would only delay the same null by the
/// backoff's pauses. Injected failures are final whatever the knob
/// (except `transient=Y` ones), so walks and sweeps do not depend on it.
pub const DEFAULT_RETRIES: isize = 0;

/// Sets `errno` to `ENOMEM` and returns null.
#[cold]
fn out_of_memory() -> *mut c_void {
    set_errno(libc::ENOMEM);
    core::ptr::null_mut()
}

fn set_errno(value: c_int) {
    // SAFETY: glibc's errno location is the calling thread's, always valid.
    unsafe { *libc::__errno_location() = value };
}

/// `null` means failure: sets `errno`.
#[inline]
fn checked(block: *mut u8) -> *mut c_void {
    if block.is_null() {
        out_of_memory()
    } else {
        block.cast()
    }
}

/// [`checked`], for a block the engine served for `asked` bytes: the heap
/// limit's count (`MAYFAIL_LIMIT`) is corrected to the block's usable size,
/// which is what its `free` can name.
#[inline]
fn counted(block: *mut u8, asked: usize) -> *mut c_void {
    if !block.is_null() {
        // SAFETY: a live block of the wrapped implementation, just returned.
        mayfail::__count_usable(asked, || unsafe { inner::usable_size(block.cast()) });
    }
    checked(block)
}

/// The layout the engine is given for a live C block (see the module's
/// docs).
///
/// # Safety
///
/// `ptr` is a live block of the wrapped implementation.
#[inline]
unsafe fn layout_of(ptr: *mut c_void) -> Layout {
    // SAFETY: the caller's contract.
    let size = unsafe { inner::usable_size(ptr) };
    // A block's usable size is below isize::MAX; alignment 1 never rounds.
    Layout::from_size_align(size, 1).unwrap_or(Layout::new::<u8>())
}

/// C's `malloc`.
///
/// # Safety
///
/// None beyond C's.
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    let Some(_inside) = gate::enter() else {
        // SAFETY: malloc takes any size.
        return unsafe { inner::malloc(size) };
    };
    let Ok(layout) = Layout::from_size_align(size, 1) else {
        return out_of_memory();
    };
    // SAFETY: the engine forwards the layout to `Inner`, which accepts any
    // size, zero included (see `Inner`).
    counted(unsafe { ENGINE.alloc(layout) }, size)
}

/// C's `free`.
///
/// # Safety
///
/// `ptr` is null or a live block of this process's malloc family.
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    let Some(_inside) = gate::enter() else {
        // SAFETY: the caller's contract; every block is the implementation's.
        return unsafe { inner::free(ptr) };
    };
    // SAFETY: the caller's contract; `Inner` frees the block, whatever the
    // layout says.
    unsafe { ENGINE.dealloc(ptr.cast(), layout_of(ptr)) }
}

/// C's `calloc`: null with `ENOMEM` when `count * size` overflows.
///
/// # Safety
///
/// None beyond C's.
pub unsafe extern "C" fn calloc(count: usize, size: usize) -> *mut c_void {
    let Some(_inside) = gate::enter() else {
        // SAFETY: calloc checks the product itself.
        return unsafe { inner::calloc(count, size) };
    };
    let Some(layout) = count
        .checked_mul(size)
        .and_then(|total| Layout::from_size_align(total, 1).ok())
    else {
        return out_of_memory();
    };
    // SAFETY: as for `malloc`.
    counted(unsafe { ENGINE.alloc_zeroed(layout) }, layout.size())
}

/// C's `realloc`: `realloc(NULL, n)` is `malloc(n)`; `realloc(p, 0)` frees
/// `p` and returns null without touching `errno`, as glibc does; a failure
/// leaves `p` untouched.
///
/// # Safety
///
/// `ptr` is null or a live block of this process's malloc family.
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: none needed beyond C's.
        return unsafe { malloc(size) };
    }
    if size == 0 {
        // SAFETY: the caller's contract.
        unsafe { free(ptr) };
        return core::ptr::null_mut();
    }
    let Some(_inside) = gate::enter() else {
        // SAFETY: the caller's contract; every block is the implementation's.
        return unsafe { inner::realloc(ptr, size) };
    };
    if size > isize::MAX as usize {
        return out_of_memory();
    }
    // SAFETY: the caller's contract; `size` is non-zero and at most
    // isize::MAX, which alignment 1 never rounds past; `Inner` reallocates
    // the block, whatever the old layout says.
    counted(
        unsafe { ENGINE.realloc(ptr.cast(), layout_of(ptr), size) },
        size,
    )
}

/// C's `reallocarray`: `realloc(ptr, count * size)`, or null with `ENOMEM`
/// (and `ptr` untouched) when the product overflows.
///
/// # Safety
///
/// As for [`realloc`].
pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: the caller's contract.
        Some(total) => unsafe { realloc(ptr, total) },
        None => out_of_memory(),
    }
}

/// A block of `size` bytes aligned to `align`, a power of two.
fn aligned(align: usize, size: usize) -> *mut c_void {
    let Some(_inside) = gate::enter() else {
        // SAFETY: memalign takes any power-of-two alignment.
        return unsafe { inner::memalign(align, size) };
    };
    let Ok(layout) = Layout::from_size_align(size, align) else {
        return out_of_memory();
    };
    // SAFETY: as for `malloc`; `Inner` serves alignments above
    // MALLOC_ALIGNMENT with memalign.
    counted(unsafe { ENGINE.alloc(layout) }, size)
}

/// C's `posix_memalign`: `EINVAL` unless `align` is a power of two and a
/// multiple of `sizeof(void *)`; `ENOMEM` (also in `errno`) on failure;
/// `*out` is written only on success.
///
/// # Safety
///
/// `out` is valid for a write.
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    let word = core::mem::size_of::<*mut c_void>();
    if !align.is_multiple_of(word) || !(align / word).is_power_of_two() {
        return libc::EINVAL;
    }
    let block = aligned(align, size);
    if block.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller's contract.
    unsafe { out.write(block) };
    0
}

/// C's `aligned_alloc`: null with `EINVAL` unless `align` is a power of two
/// (C17's rule, which glibc follows from 2.38 on); any size.
///
/// # Safety
///
/// None beyond C's.
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    }
    aligned(align, size)
}

/// C's `memalign`, glibc's way: an alignment up to `MALLOC_ALIGNMENT` is
/// `malloc`'s; one above `SIZE_MAX / 2 + 1` is `EINVAL`; any other that is
/// not a power of two is rounded up to the next one.
///
/// # Safety
///
/// None beyond C's.
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    if align <= MALLOC_ALIGNMENT {
        // SAFETY: none needed beyond C's.
        return unsafe { malloc(size) };
    }
    match align.checked_next_power_of_two() {
        Some(align) => aligned(align, size),
        None => {
            set_errno(libc::EINVAL);
            core::ptr::null_mut()
        }
    }
}

/// The page size.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// C's `valloc`: page-aligned.
///
/// # Safety
///
/// None beyond C's.
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    aligned(page_size(), size)
}

/// C's `pvalloc`: page-aligned, the size rounded up to whole pages (null
/// with `ENOMEM` if that overflows).
///
/// # Safety
///
/// None beyond C's.
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page_size();
    match size.checked_add(page - 1) {
        Some(rounded) => aligned(page, rounded & !(page - 1)),
        None => out_of_memory(),
    }
}
