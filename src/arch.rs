//! The allocator's in-place lanes: what `alloc.rs`'s success path does
//! when the engaged word is set, without a call, and the portable path
//! beside each.
//!
//! On x86-64 (outside Miri) each lane is one `asm!` statement that tests the
//! engaged word in place (no load of its address from the GOT) and, for the
//! injection's passes and the heap limit's count, reaches the thread's state
//! from the thread pointer: at `scope::STATE_OFFSET` from it, at the field
//! offsets `scope` derives with `core::mem::offset_of!` from its `repr(C)`
//! layout (`scope::PASS_KEY_AT`, `PASSES_AT`, `CREDIT_AT`, `FREED_AT`);
//! never hand-written numbers. Elsewhere each lane is a relaxed load and a
//! branch to the out-of-line engaged path, which does the same work through
//! the cells (`pass::Ledger::take`, `limit::charge`, `limit::uncharge`).
//!
//! The lanes are macros, so that their label blocks (where the success path
//! leaves) stay in the function that uses them. They must be declared
//! before `alloc` (`#[macro_use]`). Nothing here allocates, locks or
//! panics; nothing writes shared memory.

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
        if crate::engaged::engaged() $engaged
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
        if crate::engaged::engaged() $engaged
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
                            thunk = sym crate::arch::forget_freed_thunk,
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
        if crate::engaged::is_set(
            crate::engaged::TRACKING | crate::engaged::LIMITED | crate::engaged::LIMIT_LANE,
        ) {
            crate::alloc::forget_freed(ptr, $size);
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
                "mov {generation:e}, dword ptr [rip + {generation_word}]",
                "cmp dword ptr fs:[{state} + {key}], {generation:e}",
                "jne 2f",
                "sub qword ptr fs:[{state} + {passes}], 1",
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
        // thread pointer (the `fs` segment's base), set only where that
        // holds (see `scope::STATE_OFFSET`): they address the fields
        // `fs`-relative; the state is a `const` thread-local that
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
                "mov {generation:e}, dword ptr [rip + {word}]",
                "cmp dword ptr fs:[{state} + {key}], {generation:e}",
                "jne 2f",
                "sub qword ptr fs:[{state} + {passes}], 1",
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

/// The call `forget_if_tracking!` makes from the middle of `dealloc`, where
/// the stack may be misaligned: it saves `rdi` (the pointer, which the caller
/// still needs; `rsi`, the size, is passed on) and aligns the stack for
/// `forget_freed`, a C-ABI function
/// that clobbers only caller-saved registers and never unwinds (a panic in an
/// `extern "C"` function aborts).
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[unsafe(naked)]
pub(crate) unsafe extern "C" fn forget_freed_thunk() {
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
        forget = sym crate::alloc::forget_freed,
    )
}
