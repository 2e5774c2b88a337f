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
//!
//! The reserve belongs to one allocator: the `MayFail` value that served the
//! process's first allocation (the global allocator, in practice: std
//! allocates before `main`). Its block comes from that value's inner
//! allocator and only goes back to it; another `MayFail` value (a local one
//! over another inner allocator) logs its final failures without a reserve.
//! The owner is identified by its address, so it must not move or be dropped
//! while the process runs, which a `static` guarantees.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The size of the reserve.
pub(crate) const RESERVE_BYTES: usize = 64 * 1024;

// SAFETY of the unchecked constructor: 16 is a power of two and 64 KiB
// rounded up to it does not overflow `isize`.
const LAYOUT: Layout = match Layout::from_size_align(RESERVE_BYTES, 16) {
    Ok(layout) => layout,
    Err(_) => panic!("the reserve layout is valid"),
};

static RESERVE: AtomicPtr<u8> = AtomicPtr::new(ptr::null_mut());
/// The address of the allocator the reserve belongs to (0: none yet).
static OWNER: AtomicUsize = AtomicUsize::new(0);

/// Sets the reserve aside, once per process, for the first allocator that
/// asks (`owner` is its address).
pub(crate) fn fill_once<A: GlobalAlloc>(owner: usize, inner: &A) {
    if OWNER.load(Ordering::Relaxed) == 0
        && OWNER
            .compare_exchange(0, owner, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
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

/// Gives the reserve back to `inner` (if it is there and belongs to the
/// allocator at `owner`), runs `f`, then tries to set it aside again. For
/// any other allocator, just runs `f`.
#[cfg(feature = "log")]
pub(crate) fn spend<A: GlobalAlloc>(owner: usize, inner: &A, f: impl FnOnce()) {
    if OWNER.load(Ordering::Relaxed) != owner {
        f();
        return;
    }
    let block = RESERVE.swap(ptr::null_mut(), Ordering::AcqRel);
    if !block.is_null() {
        // SAFETY: only blocks allocated by `inner` with `LAYOUT` are stored.
        unsafe { inner.dealloc(block, LAYOUT) };
    }
    f();
    refill(inner);
}
