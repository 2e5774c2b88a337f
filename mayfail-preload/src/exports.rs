//! The exported symbols: `malloc`, `free`, `calloc`, `realloc`,
//! `reallocarray`, `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`,
//! `pvalloc`.
//!
//! On x86-64 each is a naked function that jumps to its
//! [`interpose`] function: it leaves no frame, so a
//! backtrace of an allocation goes from the caller straight into
//! `mayfail_preload::` frames, which the site walk and the crash report
//! trim as allocation machinery, and names the caller's line. Elsewhere
//! each is an ordinary function that calls it (one more frame, named after
//! the C function, left in reports).

use core::ffi::{c_int, c_void};

use crate::interpose;

macro_rules! export {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        #[doc = concat!("`", stringify!($name), "`: see [`interpose::", stringify!($name), "`].")]
        ///
        /// # Safety
        ///
        /// C's contract for this function.
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($(_: $ty),*) -> $ret {
            // The arguments stay in their registers and the stack is as the
            // caller left it: a jump hands the call over whole.
            core::arch::naked_asm!("jmp {target}", target = sym interpose::$name)
        }

        #[doc = concat!("`", stringify!($name), "`: see [`interpose::", stringify!($name), "`].")]
        ///
        /// # Safety
        ///
        /// C's contract for this function.
        #[cfg(not(target_arch = "x86_64"))]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
            // SAFETY: the caller's contract, passed on.
            unsafe { interpose::$name($($arg),*) }
        }
    )*};
}

export! {
    fn malloc(size: usize) -> *mut c_void;
    fn free(ptr: *mut c_void) -> ();
    fn calloc(count: usize, size: usize) -> *mut c_void;
    fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void;
    fn reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void;
    fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int;
    fn aligned_alloc(align: usize, size: usize) -> *mut c_void;
    fn memalign(align: usize, size: usize) -> *mut c_void;
    fn valloc(size: usize) -> *mut c_void;
    fn pvalloc(size: usize) -> *mut c_void;
}
