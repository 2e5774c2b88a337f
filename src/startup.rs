//! The first allocation's work: register the allocator's compiled defaults,
//! read the environment (`MAYFAIL_RETRIES`, `MAYFAIL_SMALL`,
//! `MAYFAIL_STALL_MS`, `MAYFAIL_LIMIT`, and `MAYFAIL_INJECT` with the
//! `inject` feature), start the heap limit's count if a limit is set, then
//! take the "not started" reason off the engaged word.
//!
//! Runs inside the allocator, on its engaged path: it never allocates or
//! panics, and takes no lock but the loader's (once, on x86-64, to tell
//! whether mayfail is linked into the executable: see
//! `scope::STATE_OFFSET`).
//!
//! It also carries the ELF note that tells the preload library
//! (`mayfail-preload`) that a program has mayfail linked in: that program's
//! own `MayFail` injects, and the preload library only passes C allocations
//! to glibc, so that no allocation is failed, counted or reported twice. The
//! note is an `SHT_NOTE` section (owner `mayfail`, type 1, a 4-byte format
//! version 1), which the linker puts in a `PT_NOTE` segment the loader maps
//! and `strip` keeps; [`start_once`] refers to it so that the linker keeps
//! it wherever mayfail's start-up is linked.

use crate::config::{self, Defaults};
use crate::engaged::{self, NOT_STARTED};

/// Runs the start-up until it has completed once.
#[inline]
pub(crate) fn start(defaults: &Defaults) {
    if engaged::is_set(NOT_STARTED) {
        start_once(defaults);
    }
}

// The note, 4-byte aligned as ELF notes are: name size, description size,
// type, the name with its NUL padded to 4 bytes, the description.
core::arch::global_asm!(
    ".pushsection .note.mayfail,\"a\",@note",
    ".balign 4",
    // Weak and hidden: two copies of the crate in one program link, and no
    // shared library exports it.
    ".weak mayfail_note_engine",
    ".hidden mayfail_note_engine",
    "mayfail_note_engine:",
    ".long 8",
    ".long 4",
    ".long 1",
    ".asciz \"mayfail\"",
    ".balign 4",
    ".long 1",
    ".popsection",
);

unsafe extern "C" {
    /// The note above.
    static mayfail_note_engine: u8;
}

#[cold]
fn start_once(defaults: &Defaults) {
    // A use of the note's address, so that the linker's garbage collection
    // keeps its section wherever this function is linked. (Miri does not
    // model linker-defined statics; nothing there reads the note.)
    #[cfg(not(miri))]
    core::hint::black_box(&raw const mayfail_note_engine);
    // Likewise for the constructor that registers the fork handlers.
    #[cfg(all(feature = "inject", not(miri)))]
    core::hint::black_box(&raw const crate::symbols::FORK_HANDLERS_AT_START);
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    crate::scope::find_state_offset();
    config::register_defaults(defaults);
    config::read_env_once();
    // After the state offset: whether the limit's in-place lanes can run.
    crate::limit::start(defaults.limit);
    #[cfg(feature = "inject")]
    let injection_read = crate::configure::read_env_once();
    #[cfg(not(feature = "inject"))]
    let injection_read = true;
    if config::env_read() && injection_read {
        engaged::set(NOT_STARTED, false);
    }
}
