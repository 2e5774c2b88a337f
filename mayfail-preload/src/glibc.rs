//! glibc's own malloc implementation, under the names it exports for
//! replacements to call (`__libc_malloc` and its siblings), and [`Glibc`]:
//! the inner allocator the engine wraps.
//!
//! A leaf: it calls glibc and nothing else, and never allocates through the
//! interposed functions, locks or panics.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

unsafe extern "C" {
    /// glibc's `malloc`.
    pub fn __libc_malloc(size: usize) -> *mut c_void;
    /// glibc's `free`.
    pub fn __libc_free(ptr: *mut c_void);
    /// glibc's `calloc`.
    pub fn __libc_calloc(count: usize, size: usize) -> *mut c_void;
    /// glibc's `realloc`.
    pub fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    /// glibc's `memalign`.
    pub fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

/// The alignment every block of glibc's `malloc` has (`MALLOC_ALIGNMENT`:
/// that of `max_align_t`).
pub const MALLOC_ALIGNMENT: usize = core::mem::align_of::<libc::max_align_t>();

/// glibc's allocator as a `GlobalAlloc`, for C's calls rather than Rust's:
///
/// - a size of zero is allowed (it is `malloc(0)`, which C defines);
/// - `realloc` and `dealloc` ignore the layout they are given: glibc knows
///   each block's size, and C's `realloc` keeps only the fundamental
///   alignment, as glibc's does. The engine is handed a layout whose size is
///   the block's `malloc_usable_size` and whose alignment is 1 (see
///   [`interpose`](crate::interpose)).
#[derive(Clone, Copy, Debug, Default)]
pub struct Glibc;

// SAFETY: every method is glibc's implementation of the same operation,
// which returns blocks of at least the size asked for, aligned to at least
// `MALLOC_ALIGNMENT`, or to `layout.align()` through `__libc_memalign` when
// that is larger; null on failure, leaving a realloc's block untouched.
// Nothing unwinds.
unsafe impl GlobalAlloc for Glibc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGNMENT {
            // SAFETY: glibc's malloc takes any size.
            unsafe { __libc_malloc(layout.size()).cast() }
        } else {
            // SAFETY: `Layout` guarantees a power-of-two alignment, which is
            // what glibc's memalign expects.
            unsafe { __libc_memalign(layout.align(), layout.size()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGNMENT {
            // SAFETY: glibc's calloc takes any size; 1 x size cannot overflow.
            unsafe { __libc_calloc(1, layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract for `alloc_zeroed`.
            let block = unsafe { self.alloc(layout) };
            if !block.is_null() {
                // SAFETY: a fresh block of `layout.size()` writable bytes.
                unsafe { block.write_bytes(0, layout.size()) };
            }
            block
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, _layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract: `ptr` is a live block of glibc's.
        unsafe { __libc_realloc(ptr.cast(), new_size).cast() }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller's contract: `ptr` is a live block of glibc's.
        unsafe { __libc_free(ptr.cast()) }
    }
}
