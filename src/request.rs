//! What was asked of the inner allocator: the operation ([`Op`]) and the
//! request that can be attempted again as the same operation ([`Request`]).
//!
//! A leaf: it depends on nothing else in the crate; nothing here allocates,
//! locks or panics.

use core::alloc::{GlobalAlloc, Layout};
#[cfg(feature = "inject")]
use core::fmt;

/// The operation, for the injection decision and messages.
#[cfg(feature = "inject")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Alloc,
    AllocZeroed,
    Realloc,
}

#[cfg(feature = "inject")]
impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Alloc => "alloc",
            Op::AllocZeroed => "alloc_zeroed",
            Op::Realloc => "realloc",
        }
    }
}

/// What was asked, for messages, reports and the state file:
/// `alloc of 64 bytes (align 8)`.
#[cfg(feature = "inject")]
pub(crate) struct Asked {
    pub(crate) op: Op,
    pub(crate) size: usize,
    pub(crate) align: usize,
}

#[cfg(feature = "inject")]
impl fmt::Display for Asked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} bytes (align {})",
            self.op.name(),
            self.size,
            self.align
        )
    }
}

/// What to do with one allocation.
// `alloc` matches every verdict; only injection returns `Fail` and
// `Transient`.
#[cfg_attr(not(feature = "inject"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it.
    Pass,
    /// Return null, without retries.
    Fail,
    /// Fail this attempt only: the retry policy takes over.
    Transient,
}

/// The operation that failed, to be attempted again as the same operation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Request {
    Alloc,
    AllocZeroed,
    Realloc { ptr: *mut u8, new_size: usize },
}

impl Request {
    /// The operation, for injection and messages.
    #[cfg(feature = "inject")]
    #[inline(always)]
    pub(crate) fn op(self) -> Op {
        match self {
            Request::Alloc => Op::Alloc,
            Request::AllocZeroed => Op::AllocZeroed,
            Request::Realloc { .. } => Op::Realloc,
        }
    }

    /// The size the inner allocator was asked for.
    #[inline(always)]
    pub(crate) fn size(self, layout: Layout) -> usize {
        match self {
            Request::Realloc { new_size, .. } => new_size,
            _ => layout.size(),
        }
    }

    /// Calls the inner allocator.
    ///
    /// # Safety
    ///
    /// The caller's `GlobalAlloc` contract for this operation: `layout` has a
    /// non-zero size; for `Realloc`, `ptr` is a live block of `inner` with
    /// `layout`, and `new_size` is non-zero and does not overflow `isize`
    /// when rounded up to `layout.align()`.
    #[inline(always)]
    pub(crate) unsafe fn attempt<A: GlobalAlloc>(self, inner: &A, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds the contract of each operation (see above).
        unsafe {
            match self {
                Request::Alloc => inner.alloc(layout),
                Request::AllocZeroed => inner.alloc_zeroed(layout),
                Request::Realloc { ptr, new_size } => inner.realloc(ptr, layout, new_size),
            }
        }
    }
}
