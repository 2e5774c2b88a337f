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
#[cfg(not(all(target_arch = "x86_64", not(miri))))]
use crate::engaged;
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

/// Runs `$engaged` (which must leave the function) when the engaged word is
/// set. On x86-64 the word is tested in place, `cmp dword ptr [rip+WORD], 0`
/// then `jne`: two instructions, and no load of the static's address from
/// the GOT, which a `static` of another crate costs in a position-independent
/// executable. Elsewhere (and under Miri), a relaxed load and a branch.
macro_rules! when_engaged {
    ($engaged:block) => {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        // SAFETY: the instructions read the 4-byte, aligned atomic at the
        // start of `ENGAGED` (a static: always mapped) without a lock prefix,
        // as a relaxed load does, and jump; they write no memory and use no
        // stack. The label block leaves the function.
        unsafe {
            core::arch::asm!(
                "cmp dword ptr [rip + {word}], 0",
                "jne {engaged}",
                word = sym crate::engaged::ENGAGED,
                engaged = label $engaged,
                options(nostack),
            );
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        if engaged::engaged() $engaged
    };
}

/// [`when_engaged!`] for an allocation of `$size` bytes, which the heap
/// limit's in-place lane counts: on x86-64 one `asm!` statement compares the
/// word with `LIMIT_LANE` (`cmp dword ptr [rip+WORD], 1`): below, it is
/// zero and the success path goes on (the same two instructions as
/// `when_engaged!`); above, `$engaged` runs; equal, the lane subtracts
/// `$size` from the thread's credit, found from the thread pointer, and the
/// success path goes on unless that borrows (then `$engaged` runs, and the
/// engaged path undoes the subtraction and charges out of line: see
/// `limit`). Elsewhere (and under Miri), as `when_engaged!`: the engaged
/// path charges.
macro_rules! when_engaged_charging {
    ($size:expr, $engaged:block) => {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        // SAFETY: the instructions read `ENGAGED` and, when it is exactly
        // `LIMIT_LANE`, `STATE_OFFSET` (aligned atomic statics, always
        // mapped, without a lock prefix: relaxed loads). `LIMIT_LANE` is set
        // only once `STATE_OFFSET` holds where every thread's state lies from
        // its thread pointer (see `scope::STATE_OFFSET`), a `const`
        // thread-local that lives as long as the thread; they subtract the
        // size from its `credit` field (an aligned `Cell<u64>` only this
        // thread writes, through copies: no reference to it is alive) in one
        // instruction, as `limit::charge` does through the cell. No stack;
        // the flags and one scratch register clobbered. The label block
        // leaves the function.
        unsafe {
            core::arch::asm!(
                "cmp dword ptr [rip + {word}], {lane}",
                "jb 2f",
                "jne {engaged}",
                "mov {state}, qword ptr [rip + {offset}]",
                "sub qword ptr fs:[{state} + {credit}], {size}",
                "jb {engaged}",
                "2:",
                word = sym crate::engaged::ENGAGED,
                lane = const crate::engaged::LIMIT_LANE,
                offset = sym crate::scope::STATE_OFFSET,
                credit = const crate::scope::CREDIT_AT,
                size = in(reg) $size,
                state = out(reg) _,
                engaged = label $engaged,
                options(nostack),
            );
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        if engaged::engaged() $engaged
    };
}

/// Tells the sweep's leak tracking that `$ptr` is being freed, while a
/// sweep's child tracks blocks, and the heap limit's count that `$size`
/// bytes are, while it counts: the only reasons `dealloc` leaves its success
/// path (the word's low byte). On x86-64 the whole test is one `asm!`
/// statement: `cmp byte ptr [rip+WORD], LIMIT_LANE` and a `jb` over the
/// rest, so the success path is those two instructions and the compiler
/// sees no branch and no call (what it inlines `dealloc` into stays within
/// its inlining budget); the size is an operand, in `rsi`. While the limit
/// counts in place (the low byte is exactly `LIMIT_LANE`), the rest adds
/// `$size` to the thread's freed count from the thread pointer and calls out
/// of line only when the count passes its batch (see `limit`); above it, it
/// calls out of line. Elsewhere (and under Miri), a relaxed load, a branch
/// and a call.
macro_rules! forget_if_tracking {
    ($ptr:expr, $size:expr) => {{
        let ptr: *mut u8 = $ptr;
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        let mut ptr = ptr;
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        // SAFETY: the instructions read the low byte of the aligned atomic
        // `ENGAGED` (the flags frees care about, little-endian; a static:
        // always mapped) as a relaxed load does, and jump; they write no
        // memory and use no stack.
        unsafe {
            core::arch::asm!(
                "cmp byte ptr [rip + {word}], {lane}",
                "jae {busy}",
                word = sym crate::engaged::ENGAGED,
                lane = const crate::engaged::LIMIT_LANE,
                busy = label {
                    // SAFETY: the instructions read the low byte of
                    // `ENGAGED` again, as above. While the limit counts in
                    // place (the byte is exactly `LIMIT_LANE`) they read
                    // `STATE_OFFSET` (an aligned atomic static, a relaxed
                    // load): it is set, before `LIMIT_LANE` ever is, to
                    // where every thread's state lies from its thread
                    // pointer (see `scope::STATE_OFFSET`), a `const`
                    // thread-local that lives as long as the thread; they
                    // add the size to its `freed` field (an aligned
                    // `Cell<i64>` only this thread writes, through copies:
                    // no reference to it is alive) in one instruction, as
                    // `limit::uncharge` does through the cell. Otherwise
                    // (the byte is above `LIMIT_LANE`), and when that sum
                    // turns negative, they move the stack pointer past the
                    // 128-byte red zone and call `forget_freed_thunk`, which
                    // aligns the stack itself, keeps `rdi` (the pointer, an
                    // in-out operand), passes `rsi` (the size) on, and
                    // clobbers no more than the C ABI's caller-saved
                    // registers (`clobber_abi`; the flags too); then they
                    // restore the stack pointer. `nostack` is kept so that
                    // the compiler need not align the stack for them; what
                    // it lets the compiler assume holds in effect: the
                    // return address and the thunk's frame are written only
                    // below the red zone, where the x86-64 System V ABI lets
                    // nothing live (a signal frame may land there at any
                    // time), never inside it or above the stack pointer. The
                    // thunk neither unwinds nor touches the caller's memory.
                    // It has no unwind information, and the caller's own is
                    // off by the moved stack pointer while it runs: a
                    // backtrace taken inside `forget_freed` stops there
                    // (nothing there takes one).
                    unsafe {
                        core::arch::asm!(
                            "cmp byte ptr [rip + {word}], {lane}",
                            "jne 3f",
                            "mov rax, qword ptr [rip + {offset}]",
                            "add qword ptr fs:[rax + {freed}], rsi",
                            "jns 2f",
                            "3:",
                            "lea rsp, [rsp - 128]",
                            "call {thunk}",
                            "lea rsp, [rsp + 128]",
                            "2:",
                            word = sym crate::engaged::ENGAGED,
                            lane = const crate::engaged::LIMIT_LANE,
                            offset = sym crate::scope::STATE_OFFSET,
                            freed = const crate::scope::FREED_AT,
                            thunk = sym forget_freed_thunk,
                            inout("rdi") ptr,
                            inout("rsi") $size => _,
                            clobber_abi("C"),
                            options(nostack),
                        );
                    }
                },
                options(nostack),
            );
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        if engaged::is_set(engaged::TRACKING | engaged::LIMITED | engaged::LIMIT_LANE) {
            forget_freed(ptr, $size);
        }
        ptr
    }};
}

/// [`charge_or_pass_in_place!`] for a `realloc` from `$old` to `$new`
/// bytes: while the heap limit counts in place and nothing else engages,
/// a growth subtracts `$new - $old` from the thread's credit and passes
/// unless that borrows (the engaged path then undoes it); a shrink goes out
/// of line, where its bytes are given back once the inner allocator has
/// shrunk the block. Otherwise, the injection fast lane.
macro_rules! grow_or_pass_in_place {
    ($old:expr, $new:expr) => {{
        #[allow(unused_mut)]
        let mut pass = false;
        #[cfg(all(target_arch = "x86_64", not(miri), feature = "inject"))]
        // SAFETY: as for `charge_or_pass_in_place!`; the growth is worked
        // out in a scratch register first.
        unsafe {
            core::arch::asm!(
                "cmp dword ptr [rip + {word}], {lane}",
                "jne 3f",
                "mov {state}, {new}",
                "sub {state}, {old}",
                "jb 2f",
                "mov {generation}, qword ptr [rip + {offset}]",
                "sub qword ptr fs:[{generation} + {credit}], {state}",
                "jae {pass}",
                "jmp 2f",
                "3:",
                "mov {state}, qword ptr [rip + {offset}]",
                "test {state}, {state}",
                "jz 2f",
                "add {state}, qword ptr fs:[0]",
                "mov {generation:e}, dword ptr [rip + {generation_word}]",
                "cmp dword ptr [{state} + {key}], {generation:e}",
                "jne 2f",
                "sub qword ptr [{state} + {passes}], 1",
                "jns {pass}",
                "2:",
                word = sym crate::engaged::ENGAGED,
                lane = const crate::engaged::LIMIT_LANE,
                offset = sym crate::scope::STATE_OFFSET,
                credit = const crate::scope::CREDIT_AT,
                old = in(reg) $old,
                new = in(reg) $new,
                generation_word = sym crate::engaged::GENERATION,
                state = out(reg) _,
                generation = out(reg) _,
                key = const crate::scope::PASS_KEY_AT,
                passes = const crate::scope::PASSES_AT,
                pass = label { pass = true; },
                options(nostack),
            );
        }
        #[cfg(all(target_arch = "x86_64", not(miri), not(feature = "inject")))]
        // SAFETY: as above, without the injection fast lane.
        unsafe {
            core::arch::asm!(
                "cmp dword ptr [rip + {word}], {lane}",
                "jne 2f",
                "mov {state}, {new}",
                "sub {state}, {old}",
                "jb 2f",
                "mov {scratch}, qword ptr [rip + {offset}]",
                "sub qword ptr fs:[{scratch} + {credit}], {state}",
                "jae {pass}",
                "2:",
                word = sym crate::engaged::ENGAGED,
                lane = const crate::engaged::LIMIT_LANE,
                offset = sym crate::scope::STATE_OFFSET,
                credit = const crate::scope::CREDIT_AT,
                old = in(reg) $old,
                new = in(reg) $new,
                state = out(reg) _,
                scratch = out(reg) _,
                pass = label { pass = true; },
                options(nostack),
            );
        }
        pass
    }};
}

/// Whether this allocation takes the injection fast lane in place: the
/// thread's pass key matches the generation in force and it has a pass left,
/// which it takes (see `scope::take_pass`, whose test this is). On x86-64 one
/// `asm!` statement, which finds the thread's state from the thread pointer
/// (see `scope::STATE_OFFSET`): what the compiler sees of the engaged branch
/// stays small enough for the allocation paths it is inlined into (std's)
/// to stay inlined too, and no address is kept live across the caller's
/// loops. Elsewhere (and under Miri) `false`, and the out-of-line engaged
/// path makes the test.
macro_rules! pass_in_place {
    () => {{
        #[allow(unused_mut)]
        let mut pass = false;
        #[cfg(all(target_arch = "x86_64", not(miri), feature = "inject"))]
        // SAFETY: the instructions read `STATE_OFFSET` and `GENERATION`
        // (aligned atomics in statics, without a lock prefix: relaxed loads).
        // A non-zero offset is where every thread's state lies from its
        // thread pointer (`fs:0` holds it), set only where that holds (see
        // `scope::STATE_OFFSET`); the state is a `const` thread-local that
        // lives as long as the thread, and the offsets are those of its
        // `pass_key: Cell<u32>` and `passes: Cell<i64>` fields, aligned. They
        // read the key and subtract one from the passes in one instruction (a
        // signal handler sees it before or after), as `scope::take_pass` does
        // through the cells; no reference to the state is alive meanwhile
        // (the cells are only used through copies). They use no stack and
        // clobber the flags and two scratch registers.
        unsafe {
            core::arch::asm!(
                "mov {state}, qword ptr [rip + {offset}]",
                "test {state}, {state}",
                "jz 2f",
                "add {state}, qword ptr fs:[0]",
                "mov {generation:e}, dword ptr [rip + {word}]",
                "cmp dword ptr [{state} + {key}], {generation:e}",
                "jne 2f",
                "sub qword ptr [{state} + {passes}], 1",
                "jns {pass}",
                "2:",
                offset = sym crate::scope::STATE_OFFSET,
                word = sym crate::engaged::GENERATION,
                state = out(reg) _,
                generation = out(reg) _,
                key = const crate::scope::PASS_KEY_AT,
                passes = const crate::scope::PASSES_AT,
                pass = label { pass = true; },
                options(nostack),
            );
        }
        pass
    }};
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
extern "C" fn forget_freed(ptr: *mut u8, size: usize) {
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

/// The call `forget_if_tracking!` makes from the middle of `dealloc`, where
/// the stack may be misaligned: it saves `rdi` (the pointer, which the caller
/// still needs; `rsi`, the size, is passed on) and aligns the stack for
/// `forget_freed`, a C-ABI function
/// that clobbers only caller-saved registers and never unwinds (a panic in an
/// `extern "C"` function aborts).
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[unsafe(naked)]
unsafe extern "C" fn forget_freed_thunk() {
    core::arch::naked_asm!(
        "push rbp",
        "mov rbp, rsp",
        "push rdi",
        "and rsp, -16",
        "call {forget}",
        "mov rdi, [rbp - 8]",
        "mov rsp, rbp",
        "pop rbp",
        "ret",
        forget = sym forget_freed,
    )
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
        for _ in 0..100 {
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
