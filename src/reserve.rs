//! The emergency reserve: memory set aside for mayfail's own reporting.
//!
//! When an allocation finally fails, memory is exhausted, yet the warning
//! goes through `log`, whose implementation may allocate (a formatting
//! buffer, a thread-local registered with the C library). Like the kernel's
//! reserves for `PF_MEMALLOC` tasks, mayfail keeps one 64 KiB block from the
//! inner allocator, taken on the first allocation of the process, and gives it
//! back to the inner allocator just before it logs; afterwards it tries to take
//! it again. Taking and giving back never block: the block is swapped in and
//! out of one atomic pointer.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// The size of the reserve.
pub(crate) const RESERVE_BYTES: usize = 64 * 1024;

// SAFETY of the unchecked constructor: 16 is a power of two and 64 KiB
// rounded up to it does not overflow `isize`.
const LAYOUT: Layout = match Layout::from_size_align(RESERVE_BYTES, 16) {
    Ok(layout) => layout,
    Err(_) => panic!("the reserve layout is valid"),
};

static RESERVE: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
static FILLED_ONCE: AtomicU8 = AtomicU8::new(0);

/// Sets the reserve aside, once per process.
pub(crate) fn fill_once<A: GlobalAlloc>(inner: &A) {
    if FILLED_ONCE.load(Ordering::Relaxed) == 0 && FILLED_ONCE.swap(1, Ordering::Relaxed) == 0 {
        refill(inner);
    }
}

fn refill<A: GlobalAlloc>(inner: &A) {
    // SAFETY: `LAYOUT` has a non-zero size.
    let block = unsafe { inner.alloc(LAYOUT) };
    if block.is_null() {
        return;
    }
    if RESERVE
        .compare_exchange(ptr::null_mut(), block, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        // Another thread refilled first.
        // SAFETY: `block` was just allocated by `inner` with `LAYOUT`.
        unsafe { inner.dealloc(block, LAYOUT) };
    }
}

/// Gives the reserve back to `inner` (if it is there), runs `f`, then tries to
/// set it aside again.
pub(crate) fn spend<A: GlobalAlloc>(inner: &A, f: impl FnOnce()) {
    let block = RESERVE.swap(ptr::null_mut(), Ordering::AcqRel);
    if !block.is_null() {
        // SAFETY: only blocks allocated by `inner` with `LAYOUT` are stored.
        unsafe { inner.dealloc(block, LAYOUT) };
    }
    f();
    refill(inner);
}
