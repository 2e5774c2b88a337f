//! The malloc implementation the engine wraps, [`Inner`]: the one the
//! program would have without this library. That is glibc's, unless the
//! program is linked with another (jemalloc, tcmalloc, mimalloc's override)
//! or another is preloaded after this library: then it is that one, so
//! that every block, whoever allocated it (the program through this
//! library, or through that implementation's own extensions such as
//! `mallocx`), is freed, resized and measured by the implementation that
//! made it.
//!
//! Its functions (`malloc`, `free`, `calloc`, `realloc`, `memalign`,
//! `malloc_usable_size`) are found once, at the first call, as the next
//! definitions of those names after this library in the order calls are
//! bound ([`elf::next_definition`]), never
//! through the global scope: a call to `malloc_usable_size` or
//! `__libc_malloc` from here would bind to the first object that defines
//! it, which need not be the one that made the block. When they do not all
//! come from one object, the engine does not serve (the
//! [`gate`](crate::gate) says so) and each function passes its calls to
//! the next definition of its own name, as if this library were absent.
//!
//! A leaf below the gate: never allocates through the interposed functions,
//! locks or panics.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{CStr, c_char, c_void};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::elf;

/// The alignment every block of `malloc` has (`MALLOC_ALIGNMENT` in glibc:
/// that of `max_align_t`).
pub const MALLOC_ALIGNMENT: usize = core::mem::align_of::<libc::max_align_t>();

unsafe extern "C" {
    /// glibc's `malloc`, bound at link time: used only if no definition of
    /// `malloc` follows this library (it cannot happen in a process that
    /// loaded glibc).
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(ptr: *mut c_void);
    fn __libc_calloc(count: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

/// The functions, by index.
const MALLOC: usize = 0;
const FREE: usize = 1;
const CALLOC: usize = 2;
const REALLOC: usize = 3;
const MEMALIGN: usize = 4;
const USABLE_SIZE: usize = 5;
const NAMES: [&CStr; 6] = [
    c"malloc",
    c"free",
    c"calloc",
    c"realloc",
    c"memalign",
    c"malloc_usable_size",
];

/// Each function's address, once found.
static FUNCTIONS: [AtomicPtr<c_void>; 6] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 6];
/// Set (release) once every entry of `FUNCTIONS` is stored.
static FOUND: AtomicBool = AtomicBool::new(false);
/// Whether all six come from one object.
static WHOLE: AtomicBool = AtomicBool::new(false);
/// The index in `NAMES` of a function missing from `malloc`'s object.
static MISSING: AtomicUsize = AtomicUsize::new(usize::MAX);
/// The name of the object `malloc` comes from.
static OBJECT_NAME: AtomicPtr<c_char> = AtomicPtr::new(core::ptr::null_mut());

/// Finds the functions (any thread may; they all find the same).
#[cold]
#[inline(never)]
fn find() {
    let this = find as *const c_void;
    let malloc = elf::next_definition(NAMES[MALLOC], this);
    let fallbacks: [*mut c_void; 6] = [
        __libc_malloc as *mut c_void,
        __libc_free as *mut c_void,
        __libc_calloc as *mut c_void,
        __libc_realloc as *mut c_void,
        __libc_memalign as *mut c_void,
        libc::malloc_usable_size as *mut c_void,
    ];
    let mut whole = malloc.is_some();
    for (index, name) in NAMES.iter().enumerate() {
        let found = elf::next_definition(name, this);
        let from_malloc_object =
            matches!((found, malloc), (Some(f), Some(m)) if f.object == m.object);
        if whole && !from_malloc_object {
            whole = false;
            MISSING.store(index, Ordering::Relaxed);
        }
        let address = found.map_or(fallbacks[index], |f| f.address);
        FUNCTIONS[index].store(address, Ordering::Relaxed);
    }
    if let Some(malloc) = malloc {
        OBJECT_NAME.store(malloc.object_name.cast_mut(), Ordering::Relaxed);
    }
    WHOLE.store(whole, Ordering::Relaxed);
    FOUND.store(true, Ordering::Release);
}

/// Function `index`'s address.
#[inline]
fn function(index: usize) -> *mut c_void {
    if !FOUND.load(Ordering::Acquire) {
        find();
    }
    FUNCTIONS[index].load(Ordering::Relaxed)
}

/// Whether the engine may serve over these functions: they all come from
/// the object that defines `malloc`. If not, the name of that object and of
/// the function it lacks.
pub fn whole() -> Result<(), (&'static CStr, &'static CStr)> {
    function(MALLOC);
    if WHOLE.load(Ordering::Relaxed) {
        return Ok(());
    }
    let missing = NAMES[MISSING.load(Ordering::Relaxed).min(NAMES.len() - 1)];
    Err((object_name(), missing))
}

/// The name of the object whose `malloc` is wrapped (`libc.so.6`,
/// `libjemalloc.so.2`...), or an empty string.
pub fn object_name() -> &'static CStr {
    function(MALLOC);
    let name = OBJECT_NAME.load(Ordering::Relaxed);
    if name.is_null() {
        return c"";
    }
    // SAFETY: a NUL-terminated name in an object that stays loaded (the
    // program's malloc is never unloaded while the program runs).
    unsafe { CStr::from_ptr(name) }
}

/// The implementation's `malloc`.
///
/// # Safety
///
/// C's contract.
#[inline]
pub unsafe fn malloc(size: usize) -> *mut c_void {
    // SAFETY: the address of a function of this type (`find`).
    let f: unsafe extern "C" fn(usize) -> *mut c_void =
        unsafe { core::mem::transmute(function(MALLOC)) };
    // SAFETY: the caller's contract.
    unsafe { f(size) }
}

/// The implementation's `free`.
///
/// # Safety
///
/// `ptr` is null or a live block of this implementation.
#[inline]
pub unsafe fn free(ptr: *mut c_void) {
    // SAFETY: the address of a function of this type (`find`).
    let f: unsafe extern "C" fn(*mut c_void) = unsafe { core::mem::transmute(function(FREE)) };
    // SAFETY: the caller's contract.
    unsafe { f(ptr) }
}

/// The implementation's `calloc`.
///
/// # Safety
///
/// C's contract.
#[inline]
pub unsafe fn calloc(count: usize, size: usize) -> *mut c_void {
    // SAFETY: the address of a function of this type (`find`).
    let f: unsafe extern "C" fn(usize, usize) -> *mut c_void =
        unsafe { core::mem::transmute(function(CALLOC)) };
    // SAFETY: the caller's contract.
    unsafe { f(count, size) }
}

/// The implementation's `realloc`.
///
/// # Safety
///
/// `ptr` is null or a live block of this implementation.
#[inline]
pub unsafe fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: the address of a function of this type (`find`).
    let f: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void =
        unsafe { core::mem::transmute(function(REALLOC)) };
    // SAFETY: the caller's contract.
    unsafe { f(ptr, size) }
}

/// The implementation's `memalign`.
///
/// # Safety
///
/// `align` is a power of two.
#[inline]
pub unsafe fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: the address of a function of this type (`find`).
    let f: unsafe extern "C" fn(usize, usize) -> *mut c_void =
        unsafe { core::mem::transmute(function(MEMALIGN)) };
    // SAFETY: the caller's contract.
    unsafe { f(align, size) }
}

/// The implementation's `malloc_usable_size`.
///
/// # Safety
///
/// `ptr` is a live block of this implementation.
#[inline]
pub unsafe fn usable_size(ptr: *mut c_void) -> usize {
    // SAFETY: the address of a function of this type (`find`).
    let f: unsafe extern "C" fn(*mut c_void) -> usize =
        unsafe { core::mem::transmute(function(USABLE_SIZE)) };
    // SAFETY: the caller's contract.
    unsafe { f(ptr) }
}

/// The wrapped implementation as a `GlobalAlloc`, for C's calls rather than
/// Rust's:
///
/// - a size of zero is allowed (it is `malloc(0)`, which C defines);
/// - `realloc` and `dealloc` ignore the layout they are given: the
///   implementation knows each block's size, and C's `realloc` keeps only
///   the fundamental alignment. The engine is handed a layout whose size is
///   the block's `malloc_usable_size` and whose alignment is 1 (see
///   [`interpose`](crate::interpose)).
///
/// # The contract with the engine
///
/// This goes beyond `GlobalAlloc`'s contract (a zero size, and a layout
/// that is not the block's, are the caller's undefined behaviour there), so
/// the library relies on what `MayFail<Inner>` does with them, and this is
/// the one place that says it:
///
/// 1. `MayFail` hands a zero-size layout to `Inner` as it is (it never reads
///    or writes the block, nor rejects the size).
/// 2. `MayFail::realloc` and `dealloc` hand `Inner` the pointer, the layout
///    and the new size as they came, with a heap limit or without, and its
///    retry policy repeats the same `realloc` (for an injected transient
///    failure too): never a new block and a copy, which would use the
///    layout as the block's.
/// 3. So `Inner::realloc` is only ever asked with a layout of alignment 1,
///    which C's `realloc` honours (checked in debug builds).
///
/// The `mayfail` package's `tests/preload_contract.rs` pins 1 and 2 with an
/// inner allocator that records the calls it gets.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inner;

// SAFETY: every method is the implementation's own function for the same
// operation, which returns blocks of at least the size asked for, aligned
// to at least `MALLOC_ALIGNMENT`, or to `layout.align()` through `memalign`
// when that is larger; null on failure, leaving a realloc's block
// untouched. Nothing unwinds.
unsafe impl GlobalAlloc for Inner {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGNMENT {
            // SAFETY: malloc takes any size.
            unsafe { malloc(layout.size()).cast() }
        } else {
            // SAFETY: `Layout` guarantees a power-of-two alignment.
            unsafe { memalign(layout.align(), layout.size()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGNMENT {
            // SAFETY: calloc takes any size; 1 x size cannot overflow.
            unsafe { calloc(1, layout.size()).cast() }
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
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        debug_assert!(
            layout.align() <= MALLOC_ALIGNMENT,
            "C's realloc keeps only malloc's alignment: see the contract on Inner"
        );
        // SAFETY: the caller's contract: `ptr` is a live block of ours.
        unsafe { realloc(ptr.cast(), new_size).cast() }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller's contract: `ptr` is a live block of ours.
        unsafe { free(ptr.cast()) }
    }
}
