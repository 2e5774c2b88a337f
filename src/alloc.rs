//! The hot path: [`MayFail`] and its `GlobalAlloc` implementation.
//!
//! Every operation is forwarded to the inner allocator as the same operation.
//! Beyond that call and its null check, a successful allocation costs one
//! relaxed load of a read-mostly word (`engaged`: set until the environment
//! has been read, while injection is on, while a thread counts down to a
//! fail-nth, and while a sweep's child tracks blocks) and a branch that is
//! never taken in an idle process: no thread-local access, no shared write,
//! no lock. `dealloc` tests one bit of the same word (set only while a
//! sweep's child tracks frees) and forwards; on x86-64 that test and its
//! out-of-line call are one `asm!` statement, so the code `dealloc` is
//! inlined into sees no branch and no call of ours.
//! The lanes themselves (the tests, and what they do in place) are in
//! `arch`, the x86-64 form beside the portable one.
//! With injection on, an allocation the decision has already let pass (see
//! `scope::take_pass`) is let through in place on x86-64: one `asm!`
//! statement finds the thread's pass from the thread pointer, takes it, and
//! the success path goes on to the inner allocator as when idle.
//! With a heap limit (see `limit`), an allocation is charged to the
//! thread's credit and a free to its freed count in place on x86-64, from
//! the thread pointer, in the same `asm!` statements.
//! Everything else is out of line, behind one call per operation: the
//! engaged path here, the retry policy in `policy`, the injection decision
//! in `inject`, the limit's count in `limit`.

use core::alloc::{GlobalAlloc, Layout};
use std::alloc::System;

use crate::config::{self, Defaults};
#[cfg(feature = "inject")]
use crate::inject;
use crate::limit;
use crate::policy::{self, Cause};
use crate::request::{Request, Verdict};
use crate::reserve;
use crate::startup;
#[cfg(feature = "sweep")]
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

    /// Compiles in a heap limit (see [`set_limit`](crate::set_limit)):
    /// allocations that would take the bytes live through `MayFail` past
    /// it are treated as nulls from the inner allocator, so that the
    /// reclaimers run before the kernel's OOM killer would. `MAYFAIL_LIMIT`
    /// and [`set_limit`](crate::set_limit) override it.
    ///
    /// ```
    /// use mayfail::{Limit, MayFail};
    /// use std::alloc::System;
    ///
    /// #[global_allocator]
    /// static GLOBAL: MayFail<System> = MayFail::system().with_limit(Limit::Percent(80));
    /// # fn main() {}
    /// ```
    ///
    /// # Panics
    ///
    /// If a percentage is outside 1 to 100; in a `static` initialiser this
    /// is a compile-time error.
    pub const fn with_limit(mut self, limit: crate::Limit) -> Self {
        if let crate::Limit::Percent(p) = limit {
            assert!(
                p >= 1 && p <= 100,
                "MayFail::with_limit takes a percentage from 1 to 100"
            );
        }
        self.defaults.limit = crate::limit::encode(limit);
        self
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }

    /// This value's address: which allocator the emergency reserve belongs
    /// to (see `reserve`).
    fn address(&self) -> usize {
        self as *const Self as usize
    }
}

/// The engaged path's fast lane: an allocation the injection decision has
/// already let pass (see `inject::quick_pass`; never while a sweep's child
/// tracks blocks).
#[inline(always)]
fn quick_pass() -> bool {
    #[cfg(feature = "inject")]
    {
        inject::quick_pass()
    }
    #[cfg(not(feature = "inject"))]
    {
        false
    }
}

/// Out-of-line entry points, one per operation: the success path builds no
/// [`Request`] and stores nothing before its branches, and has one call of
/// ours, shared by the two reasons to leave it. The layout goes by value, in
/// the registers the caller already keeps it in (std's allocation paths keep
/// it for their own error path).
impl<A: GlobalAlloc> MayFail<A> {
    /// # Safety
    ///
    /// The caller's contract for `alloc`; unless `engaged`, the inner
    /// allocator returned null.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(&self, layout: Layout, engaged: bool) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`.
        unsafe { self.slow(layout, Request::Alloc, engaged) }
    }

    /// # Safety
    ///
    /// The caller's contract for `alloc_zeroed`; unless `engaged`, the
    /// inner allocator returned null.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_zeroed_slow(&self, layout: Layout, engaged: bool) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`.
        unsafe { self.slow(layout, Request::AllocZeroed, engaged) }
    }

    /// # Safety
    ///
    /// The caller's contract for `realloc`; unless `engaged`, the inner
    /// allocator returned null, leaving `ptr` untouched.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_slow(
        &self,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
        engaged: bool,
    ) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`.
        unsafe { self.slow(layout, Request::Realloc { ptr, new_size }, engaged) }
    }

    /// The slow paths' one body: the engaged path (whose result is final),
    /// or the retry policy for a null the inner allocator returned.
    ///
    /// # Safety
    ///
    /// As for [`Request::attempt`]; unless `engaged`, the inner allocator
    /// returned null for the request (a failed realloc left its block
    /// untouched).
    #[inline(always)]
    unsafe fn slow(&self, layout: Layout, request: Request, engaged: bool) -> *mut u8 {
        // What the limit's in-place lane charges for this request: the size,
        // or a realloc's growth (a shrink never passes in place).
        let in_place = match request {
            Request::Realloc { new_size, .. } => new_size.saturating_sub(layout.size()),
            _ => layout.size(),
        };
        if !engaged {
            // The lane charged what the inner allocator refused: the policy
            // charges each attempt itself.
            if limit::lane_on() {
                limit::uncharge(in_place);
            }
            // SAFETY: the caller's contract.
            return unsafe { self.after_null(layout, request, Cause::Null) };
        }
        if limit::counting() {
            limit::undo_lane(in_place);
            if limit::lane_on() {
                // Nothing engages but the limit's lane, which ran out of
                // credit (or a realloc shrinks): the count's refill is all
                // this request needs of the engaged path.
                // SAFETY: the caller's contract.
                return unsafe { self.serve_counted(layout, request) };
            }
        }
        if quick_pass() {
            // SAFETY: the caller's contract; the fast lane's null goes to the
            // retry policy as any other. (No pass is taken while the limit
            // counts: see `scope::grant`.)
            let block = unsafe { request.attempt(&self.inner, layout) };
            if !block.is_null() {
                return block;
            }
            // SAFETY: the same request, still valid.
            return unsafe { self.after_null(layout, request, Cause::Null) };
        }
        // SAFETY: the caller's contract.
        unsafe { self.serve_engaged(layout, request) }
    }

    /// The retry policy, for this allocator.
    ///
    /// # Safety
    ///
    /// As for `policy::after_null`.
    #[inline(always)]
    unsafe fn after_null(&self, layout: Layout, request: Request, cause: Cause) -> *mut u8 {
        // SAFETY: the caller's contract.
        unsafe {
            policy::after_null(
                self.address(),
                &self.inner,
                &self.defaults,
                layout,
                request,
                cause,
            )
        }
    }

    /// The engaged path: the first allocations of the process (read the
    /// environment), and every allocation while injection is on, a thread
    /// has a fail-nth countdown, a sweep's child tracks blocks or the heap
    /// limit counts out of line, once the fast lanes (see `quick_pass` and
    /// `when_engaged_charging!`) have declined it.
    ///
    /// # Safety
    ///
    /// As for [`Request::attempt`].
    #[cold]
    #[inline(never)]
    unsafe fn serve_engaged(&self, layout: Layout, request: Request) -> *mut u8 {
        startup::start(&self.defaults);
        reserve::fill_once(self.address(), &self.inner);
        #[cfg(feature = "inject")]
        let verdict = inject::decide(request.op(), request.size(layout), layout.align());
        #[cfg(not(feature = "inject"))]
        let verdict = Verdict::Pass;
        let block = match verdict {
            // SAFETY: forwarded under the caller's contract.
            Verdict::Pass => unsafe { self.serve_counted(layout, request) },
            Verdict::Fail => core::ptr::null_mut(),
            // SAFETY: the same request; the inner allocator was not called,
            // so a realloc's block is untouched.
            Verdict::Transient => unsafe { self.after_null(layout, request, Cause::Null) },
        };
        if block.is_null() {
            return block;
        }
        // Blocks mayfail itself takes while reporting are not the operation's.
        #[cfg(feature = "sweep")]
        if track::on() && !crate::scope::in_reclaim() {
            if let Request::Realloc { ptr, .. } = request {
                track::forget(ptr as usize);
            }
            track::record(block as usize, request.size(layout));
        }
        block
    }

    /// Serves a request the injection let pass: charged to the heap limit's
    /// count first while it counts (over the limit, the retry policy takes
    /// over as for a null), then the inner allocator, then the policy if
    /// that returned null.
    ///
    /// # Safety
    ///
    /// As for [`Request::attempt`].
    #[inline(always)]
    unsafe fn serve_counted(&self, layout: Layout, request: Request) -> *mut u8 {
        let (charge, refund) = if limit::counting() {
            let (old, new, realloc) = match request {
                Request::Realloc { new_size, .. } => (layout.size(), new_size, true),
                _ => (0, layout.size(), false),
            };
            let (charge, refund) = limit::delta(old, new, realloc);
            if let Err(over) = limit::charge(charge, limit::exempt()) {
                // SAFETY: the inner allocator was not called: a realloc's
                // block is untouched.
                return unsafe { self.after_null(layout, request, Cause::Limit { over }) };
            }
            (charge, refund)
        } else {
            (0, 0)
        };
        // SAFETY: forwarded under the caller's contract.
        let block = unsafe { request.attempt(&self.inner, layout) };
        if block.is_null() {
            if charge > 0 {
                limit::uncharge(charge);
            }
            // SAFETY: the same request, still valid: a failed realloc left
            // its block untouched.
            return unsafe { self.after_null(layout, request, Cause::Null) };
        }
        if refund > 0 {
            limit::uncharge(refund);
        }
        block
    }
}

/// A block of `size` bytes is being freed while a sweep's child tracks
/// blocks (it is no longer the operation's) or while the heap limit counts
/// (out of line, or its in-place count passed its batch).
#[cold]
#[inline(never)]
pub(crate) extern "C" fn forget_freed(ptr: *mut u8, size: usize) {
    #[cfg(feature = "sweep")]
    if track::on() {
        track::forget(ptr as usize);
    }
    #[cfg(not(feature = "sweep"))]
    let _ = ptr;
    if limit::counting() {
        limit::freed_out_of_line(size);
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
        let mut engaged = false;
        when_engaged_charging!(layout.size(), {
            engaged = !pass_in_place!();
        });
        let mut block = core::ptr::null_mut();
        if !engaged {
            // SAFETY: the caller's contract for `alloc`.
            block = unsafe { self.inner.alloc(layout) };
        }
        if block.is_null() {
            // SAFETY: the caller's contract for `alloc`.
            return unsafe { self.alloc_slow(layout, engaged) };
        }
        block
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let mut engaged = false;
        when_engaged_charging!(layout.size(), {
            engaged = !pass_in_place!();
        });
        let mut block = core::ptr::null_mut();
        if !engaged {
            // SAFETY: the caller's contract for `alloc_zeroed`.
            block = unsafe { self.inner.alloc_zeroed(layout) };
        }
        if block.is_null() {
            // SAFETY: the caller's contract for `alloc_zeroed`.
            return unsafe { self.alloc_zeroed_slow(layout, engaged) };
        }
        block
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let mut engaged = false;
        when_engaged!({
            engaged = !grow_or_pass_in_place!(layout.size(), new_size);
        });
        let mut block = core::ptr::null_mut();
        if !engaged {
            // SAFETY: the caller's contract for `realloc`.
            block = unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        if block.is_null() {
            // SAFETY: the caller's contract for `realloc`; a failed realloc
            // left `ptr` untouched.
            return unsafe { self.realloc_slow(ptr, layout, new_size, engaged) };
        }
        block
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let ptr = forget_if_tracking!(ptr, layout.size());
        // SAFETY: the caller's contract for `dealloc`; blocks come from `inner`.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}

#[cfg(all(test, feature = "inject"))]
mod tests {
    use crate::{engaged, scope};

    /// Grants `passes` under the generation in force and runs `f`; `None`
    /// if the generation moved meanwhile (another test configured
    /// something), when the passes were void anyway, or if another test had
    /// tracking on, when they were withheld from the lanes.
    fn with_passes<R>(passes: u64, f: impl FnOnce() -> R) -> Option<R> {
        use core::sync::atomic::{Ordering::SeqCst, fence};
        // Tracking is switched on or off before the generation moves on: a
        // grant that saw it on either saw it on before the generation was
        // read, or sees the generation move, or sees it still on after.
        let tracking_before = engaged::is_set(engaged::TRACKING);
        fence(SeqCst);
        let generation = engaged::generation();
        scope::grant(
            generation,
            crate::pass::Horizon::Passes {
                passes,
                interval: 0,
            },
        );
        let result = f();
        let tracking_after = engaged::is_set(engaged::TRACKING);
        fence(SeqCst);
        let held = engaged::generation() == generation;
        (!tracking_before && !tracking_after && held).then_some(result)
    }

    #[test]
    fn the_fast_lanes_take_exactly_the_passes_granted_and_count_them() {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        scope::find_state_offset();
        // Other tests of this process move the generation or track blocks
        // for a while (a sweep's children): tried again for up to 10 s.
        for _ in 0..2000 {
            let before = scope::count_allocation(0).number;
            let Some(taken) = with_passes(3, || {
                let mut taken = Vec::with_capacity(8);
                for i in 0..5 {
                    // Alternate the two lanes: they share the passes.
                    taken.push(if i % 2 == 0 {
                        pass_in_place!() || super::quick_pass()
                    } else {
                        super::quick_pass()
                    });
                }
                taken
            }) else {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            };
            assert_eq!(taken, [true, true, true, false, false]);
            // Three passes counted, then this one.
            assert_eq!(scope::count_allocation(0).number, before + 4);
            // A generation change voids what is left.
            scope::grant(
                engaged::generation(),
                crate::pass::Horizon::Passes {
                    passes: 5,
                    interval: 0,
                },
            );
            engaged::new_generation();
            assert!(!pass_in_place!() && !super::quick_pass());
            return;
        }
        panic!("the generation never held still");
    }

    #[test]
    fn passes_granted_while_a_sweep_tracks_blocks_are_never_taken() {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        scope::find_state_offset();
        for _ in 0..100 {
            engaged::set(engaged::TRACKING, true);
            let generation = engaged::generation();
            scope::grant(
                generation,
                crate::pass::Horizon::Passes {
                    passes: 5,
                    interval: 0,
                },
            );
            let taken = pass_in_place!() || super::quick_pass();
            // The track module's own test turns tracking off when it ends.
            let held = engaged::is_set(engaged::TRACKING) && engaged::generation() == generation;
            engaged::set(engaged::TRACKING, false);
            if held {
                assert!(!taken, "a pass granted while tracking was taken");
                return;
            }
        }
        panic!("tracking never held still");
    }

    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[test]
    fn the_in_place_lane_finds_every_threads_own_state() {
        scope::find_state_offset();
        assert_ne!(
            scope::STATE_OFFSET.load(core::sync::atomic::Ordering::Relaxed),
            0,
            "mayfail is linked into this test executable"
        );
        let here = || {
            for _ in 0..100 {
                if let Some(taken) = with_passes(1, || (pass_in_place!(), pass_in_place!())) {
                    return taken;
                }
            }
            panic!("the generation never held still");
        };
        assert_eq!(here(), (true, false));
        assert_eq!(std::thread::spawn(here).join().unwrap(), (true, false));
    }
}
