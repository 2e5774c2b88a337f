//! Function slots through which upper layers register with the core: the
//! injection decision calls the site walk's stack filter and the observers of
//! an injected failure, the crash report calls the site walk's fate writer,
//! without naming those modules. One mechanism for every such slot.
//!
//! A slot exists only where the layer rule needs it (docs/ARCHITECTURE.md:
//! a lower layer calling an upper one, which may not even be compiled);
//! each slot's comment names who fills it. A call within a layer, or
//! downwards, is a direct call.
//!
//! A leaf: it depends on nothing else in the crate. A slot is one atomic
//! word holding a function pointer: setting and reading it never allocate,
//! lock or panic, and work inside the allocator and signal handlers.

use core::marker::PhantomData;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Function pointer types a [`Hook`] may hold.
///
/// # Safety
///
/// Implemented only for `fn` pointer types, which are one word, never null,
/// and valid for the whole program.
pub(crate) unsafe trait FnPointer: Copy {}

// SAFETY: each is a plain `fn` pointer type.
unsafe impl FnPointer for fn() {}
// SAFETY: a plain `fn` pointer type.
unsafe impl FnPointer for fn(u8) {}
// SAFETY: a plain `fn` pointer type.
unsafe impl FnPointer for fn(libc::c_int, usize) {}

/// One slot: empty, or a function of type `F`.
pub(crate) struct Hook<F> {
    slot: AtomicUsize,
    _type: PhantomData<F>,
}

impl<F: FnPointer> Hook<F> {
    const WORD: () = assert!(size_of::<F>() == size_of::<usize>());

    /// An empty slot.
    pub(crate) const fn new() -> Self {
        let () = Self::WORD;
        Hook {
            slot: AtomicUsize::new(0),
            _type: PhantomData,
        }
    }

    /// Puts `f` in the slot (or empties it).
    // Unused with `inject` alone: only the site walk and the sweep register.
    #[cfg_attr(not(any(feature = "sweep", feature = "sites")), allow(dead_code))]
    pub(crate) fn set(&self, f: Option<F>) {
        // SAFETY: `F` is a one-word `fn` pointer (see `FnPointer` and the
        // size assertion); its bits are a non-zero address.
        let raw = f.map_or(0, |f| unsafe { core::mem::transmute_copy::<F, usize>(&f) });
        self.slot.store(raw, Ordering::Release);
    }

    /// The function in the slot.
    #[inline]
    pub(crate) fn get(&self) -> Option<F> {
        let raw = self.slot.load(Ordering::Acquire);
        // SAFETY: a non-zero word was stored by `set` from an `F`.
        (raw != 0).then(|| unsafe { core::mem::transmute_copy::<usize, F>(&raw) })
    }
}

/// A few slots filled in order of registration; a function is registered
/// once however often it is added.
pub(crate) struct Hooks<F, const N: usize> {
    slots: [Hook<F>; N],
}

impl<F: FnPointer, const N: usize> Hooks<F, N> {
    /// No function registered.
    pub(crate) const fn new() -> Self {
        Hooks {
            slots: [const { Hook::new() }; N],
        }
    }

    /// Registers `f` in the first empty slot; `false` if every slot holds
    /// another function.
    pub(crate) fn add(&self, f: F) -> bool {
        // SAFETY: as in `Hook::set`.
        let raw = unsafe { core::mem::transmute_copy::<F, usize>(&f) };
        self.slots.iter().any(|slot| {
            match slot
                .slot
                .compare_exchange(0, raw, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => true,
                Err(current) => current == raw,
            }
        })
    }

    /// The registered functions, in order.
    pub(crate) fn each(&self, mut call: impl FnMut(F)) {
        for slot in &self.slots {
            match slot.get() {
                Some(f) => call(f),
                None => return,
            }
        }
    }
}
