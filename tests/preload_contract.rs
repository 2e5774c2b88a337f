//! What the preload library (`mayfail-preload`) relies on of `MayFail`
//! beyond the `GlobalAlloc` contract, pinned here: its inner allocator
//! serves C's calls, so `MayFail` must hand it a zero-size layout as it is
//! (`malloc(0)`), and hand a `realloc` or a `dealloc` the pointer, the
//! layout and the new size unchanged, never allocating a new block and
//! copying with a layout that is not the block's (the library gives the
//! block's usable size with alignment 1, whatever its real alignment).
//! With a heap limit and under an injected transient failure, the same.
//!
//! The inner allocator here records every call it gets and serves it with
//! C's functions, as the library's does.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;

use mayfail::{Limit, MayFail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Alloc {
        size: usize,
        align: usize,
    },
    Zeroed {
        size: usize,
        align: usize,
    },
    Realloc {
        ptr: usize,
        layout: (usize, usize),
        new_size: usize,
    },
    Dealloc {
        ptr: usize,
        layout: (usize, usize),
    },
}

static CALLS: Mutex<Vec<Call>> = Mutex::new(Vec::new());

fn record(call: Call) {
    CALLS.lock().unwrap_or_else(|e| e.into_inner()).push(call);
}

/// Every call since the last look.
fn calls() -> Vec<Call> {
    std::mem::take(&mut *CALLS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// C's functions, as the preload library's inner allocator (alignments up
/// to malloc's own only: the callers here ask for no more).
struct CFunctions;

// SAFETY: malloc, calloc, realloc and free, which return blocks aligned
// for any fundamental type, or null.
unsafe impl GlobalAlloc for CFunctions {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(Call::Alloc {
            size: layout.size(),
            align: layout.align(),
        });
        // SAFETY: malloc takes any size.
        unsafe { libc::malloc(layout.size()).cast() }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(Call::Zeroed {
            size: layout.size(),
            align: layout.align(),
        });
        // SAFETY: calloc takes any size.
        unsafe { libc::calloc(1, layout.size()).cast() }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(Call::Realloc {
            ptr: ptr as usize,
            layout: (layout.size(), layout.align()),
            new_size,
        });
        // SAFETY: `ptr` is a live block of C's malloc (the test's).
        unsafe { libc::realloc(ptr.cast(), new_size).cast() }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(Call::Dealloc {
            ptr: ptr as usize,
            layout: (layout.size(), layout.align()),
        });
        // SAFETY: `ptr` is a live block of C's malloc.
        unsafe { libc::free(ptr.cast()) }
    }
}

static ENGINE: MayFail<CFunctions> = MayFail::new(CFunctions).with_retries(3);
static LIMITED: MayFail<CFunctions> = MayFail::new(CFunctions)
    .with_retries(3)
    .with_limit(Limit::Bytes(1 << 30));

/// A zero-size request reaches the inner allocator as it is, and its block
/// goes back with the layout given.
fn zero_sizes_pass_through(engine: &MayFail<CFunctions>) {
    let zero = Layout::from_size_align(0, 1).unwrap();
    // SAFETY: the preload library's use: C's malloc(0), served by C.
    let block = unsafe { engine.alloc(zero) };
    assert!(!block.is_null());
    // SAFETY: as above.
    let zeroed = unsafe { engine.alloc_zeroed(zero) };
    assert!(!zeroed.is_null());
    // SAFETY: blocks just served, with the layout they were served with.
    unsafe {
        engine.dealloc(block, zero);
        engine.dealloc(zeroed, zero);
    }
    assert_eq!(
        calls(),
        [
            Call::Alloc { size: 0, align: 1 },
            Call::Zeroed { size: 0, align: 1 },
            Call::Dealloc {
                ptr: block as usize,
                layout: (0, 1)
            },
            Call::Dealloc {
                ptr: zeroed as usize,
                layout: (0, 1)
            },
        ]
    );
}

/// A block made elsewhere with a larger alignment, resized through the
/// engine with the layout the library gives (usable size, alignment 1):
/// one inner `realloc` with exactly those arguments, contents kept.
fn realloc_hands_the_block_over(engine: &MayFail<CFunctions>) -> usize {
    // SAFETY: a power-of-two alignment.
    let block: *mut u8 = unsafe { libc::memalign(64, 100).cast() };
    assert!(!block.is_null());
    // SAFETY: 100 writable bytes.
    unsafe { block.write_bytes(0xa5, 100) };
    // SAFETY: a live block of C's malloc.
    let usable = unsafe { libc::malloc_usable_size(block.cast()) };
    let layout = Layout::from_size_align(usable, 1).unwrap();
    // SAFETY: the preload library's use: the block is C's, the layout its
    // usable size with alignment 1.
    let grown = unsafe { engine.realloc(block, layout, 4096) };
    assert!(!grown.is_null());
    // SAFETY: at least 4096 bytes, the first 100 copied by realloc.
    let kept = unsafe { std::slice::from_raw_parts(grown, 100) };
    assert!(kept.iter().all(|&b| b == 0xa5));
    let seen = calls();
    // SAFETY: a live block of C's malloc.
    unsafe { libc::free(grown.cast()) };
    let expected = Call::Realloc {
        ptr: block as usize,
        layout: (usable, 1),
        new_size: 4096,
    };
    assert!(seen.iter().all(|&call| call == expected), "{seen:?}");
    seen.len()
}

/// The engine's first allocations, which set its reserve aside (from its
/// inner allocator), out of the way.
fn warm_up(engine: &MayFail<CFunctions>) {
    let layout = Layout::new::<u64>();
    // SAFETY: a non-zero size; the block goes back at once.
    unsafe { engine.dealloc(engine.alloc(layout), layout) };
    calls();
}

#[test]
fn the_inner_allocator_gets_c_calls_as_the_preload_library_makes_them() {
    warm_up(&ENGINE);
    warm_up(&LIMITED);
    zero_sizes_pass_through(&ENGINE);
    assert_eq!(realloc_hands_the_block_over(&ENGINE), 1);
    // With a heap limit counting the bytes, the same calls.
    zero_sizes_pass_through(&LIMITED);
    assert_eq!(realloc_hands_the_block_over(&LIMITED), 1);
    // A transient injected failure of the realloc: the retry policy tries
    // the same realloc again, never a new block and a copy.
    #[cfg(feature = "inject")]
    {
        mayfail::configure_injection("probability=100,times=1,transient=Y").unwrap();
        let attempts = realloc_hands_the_block_over(&ENGINE);
        mayfail::disable_injection();
        assert_eq!(attempts, 1, "the injected attempt never reaches it");
        assert_eq!(
            mayfail::stats().injected,
            1,
            "the realloc's first attempt was the one failed"
        );
    }
}
