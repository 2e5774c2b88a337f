//! The hot path: [`MayFail`] and its `GlobalAlloc` implementation.
//!
//! Every operation is forwarded to the inner allocator as the same operation.
//! Beyond that call and its null check, a successful allocation costs one
//! relaxed load of a read-mostly word (`engaged`: set until the environment
//! has been read, while injection is on, and while a thread counts down to a
//! fail-nth) and a branch that is never taken in an idle process: no
//! thread-local access, no shared write, no lock. `dealloc` adds the same
//! load and branch (a sweep's child tracks frees on the engaged path).
//! Everything else is out of line: the engaged path here, the retry policy in
//! `policy`, the injection decision in `inject`.

use core::alloc::{GlobalAlloc, Layout};
use std::alloc::System;

use crate::config::{self, Defaults};
use crate::inject::{self, Verdict};
use crate::policy::{self, Request};
use crate::reserve;
use crate::track;

/// A global allocator that wraps `A` and applies the "too small to fail"
/// retry policy when `A` returns null.
///
/// ```
/// #[global_allocator]
/// static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// # fn main() {}
/// ```
///
/// The builder methods compile a program's own defaults in; the
/// environment (`MAYFAIL_RETRIES`, `MAYFAIL_SMALL`, `MAYFAIL_STALL_MS`) and
/// then the run-time setters still override them:
///
/// ```
/// use mayfail::MayFail;
/// use std::alloc::System;
///
/// #[global_allocator]
/// static GLOBAL: MayFail<System> = MayFail::system().with_retries(3).with_small_limit(4096);
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct MayFail<A> {
    inner: A,
    defaults: Defaults,
}

impl MayFail<System> {
    /// Wraps the system allocator, with the crate's defaults: retry small
    /// allocations forever, small means at most 32 KiB, warn after 10 s.
    pub const fn system() -> Self {
        Self::new(System)
    }
}

impl<A> MayFail<A> {
    /// Wraps `inner`, with the crate's defaults (see [`MayFail::system`]).
    pub const fn new(inner: A) -> Self {
        MayFail {
            inner,
            defaults: Defaults::CRATE,
        }
    }

    /// Compiles in the default for the retry knob: `-1` retry until success,
    /// `0` never retry, `N` at most `N` retries. `MAYFAIL_RETRIES` and
    /// [`set_retries`](crate::set_retries) override it.
    ///
    /// # Panics
    ///
    /// If `n < -1`; in a `static` initialiser this is a compile-time error.
    pub const fn with_retries(mut self, n: isize) -> Self {
        assert!(
            n >= config::RETRY_FOREVER,
            "MayFail::with_retries takes -1 (forever), 0 (never) or a count N >= 1"
        );
        self.defaults.retries = n;
        self
    }

    /// Compiles in the default small limit, in bytes: failed allocations up
    /// to this size are retried. `MAYFAIL_SMALL` and
    /// [`set_small_limit`](crate::set_small_limit) override it.
    pub const fn with_small_limit(mut self, bytes: usize) -> Self {
        self.defaults.small_limit = if bytes > isize::MAX as usize {
            isize::MAX as usize
        } else {
            bytes
        };
        self
    }

    /// Compiles in the default stall threshold in milliseconds (`0`: never
    /// warn). `MAYFAIL_STALL_MS` and [`set_stall_ms`](crate::set_stall_ms)
    /// override it.
    pub const fn with_stall_ms(mut self, ms: u64) -> Self {
        self.defaults.stall_ms = if ms == u64::MAX { u64::MAX - 1 } else { ms };
        self
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

impl<A: GlobalAlloc> MayFail<A> {
    /// One operation: the inner call, its null check, and the engaged check.
    ///
    /// # Safety
    ///
    /// As for [`Request::attempt`].
    #[inline(always)]
    unsafe fn serve(&self, layout: Layout, request: Request) -> *mut u8 {
        if config::engaged() {
            // SAFETY: forwarded under the caller's contract.
            return unsafe { self.serve_engaged(layout, request) };
        }
        // SAFETY: forwarded under the caller's contract.
        let block = unsafe { request.attempt(&self.inner, layout) };
        if block.is_null() {
            // SAFETY: the same request, still valid: a failed realloc left
            // its block untouched.
            return unsafe { policy::after_null(&self.inner, layout, request) };
        }
        block
    }

    /// The engaged path: the first allocations of the process (read the
    /// environment), and every allocation while injection is on or a thread
    /// has a fail-nth countdown.
    ///
    /// # Safety
    ///
    /// As for [`Request::attempt`].
    #[cold]
    #[inline(never)]
    unsafe fn serve_engaged(&self, layout: Layout, request: Request) -> *mut u8 {
        config::start(&self.defaults);
        reserve::fill_once(&self.inner);
        let block = match inject::decide(request.op(), request.size(layout), layout.align()) {
            Verdict::Pass => {
                // SAFETY: forwarded under the caller's contract.
                let block = unsafe { request.attempt(&self.inner, layout) };
                if block.is_null() {
                    // SAFETY: as in `serve`.
                    unsafe { policy::after_null(&self.inner, layout, request) }
                } else {
                    block
                }
            }
            Verdict::Fail => core::ptr::null_mut(),
            // SAFETY: as in `serve`; the inner allocator was not called, so a
            // realloc's block is untouched.
            Verdict::Transient => unsafe { policy::after_null(&self.inner, layout, request) },
        };
        // Blocks mayfail itself takes while reporting are not the operation's.
        if !block.is_null() && track::on() && !crate::scope::in_reclaim() {
            if let Request::Realloc { ptr, .. } = request {
                track::forget(ptr as usize);
            }
            track::record(block as usize, request.size(layout));
        }
        block
    }

    /// `dealloc` while engaged: a sweep's child tracks frees.
    ///
    /// # Safety
    ///
    /// The caller's contract for `dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_engaged(&self, ptr: *mut u8, layout: Layout) {
        if track::on() {
            track::forget(ptr as usize);
        }
        // SAFETY: the caller's contract for `dealloc`; blocks come from `inner`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}

// SAFETY: every method forwards to the inner allocator's same method with the
// caller's arguments, so `A`'s guarantees carry over; retries repeat the same
// call, and a null is only returned when the inner allocator returned null
// (for realloc, leaving the old block untouched, as `A` guarantees). Nothing
// here unwinds: the slow path catches reclaimer panics.
unsafe impl<A: GlobalAlloc> GlobalAlloc for MayFail<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`.
        unsafe { self.serve(layout, Request::Alloc) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`.
        unsafe { self.serve(layout, Request::AllocZeroed) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`.
        unsafe { self.serve(layout, Request::Realloc { ptr, new_size }) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if config::engaged() {
            // SAFETY: the caller's contract for `dealloc`.
            return unsafe { self.dealloc_engaged(ptr, layout) };
        }
        // SAFETY: the caller's contract for `dealloc`; blocks come from `inner`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}
