//! `libmayfail_preload.so`: mayfail's engine for programs that were not
//! written for it.
//!
//! Loaded with `LD_PRELOAD`, the library interposes glibc's malloc family
//! (`malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`) and serves each call
//! through one `static` [`mayfail::MayFail`] wrapped around the
//! implementation the program would have without it: glibc's, or the one it
//! is linked with (jemalloc...), found directly in that object's symbol
//! table, never through the global scope. So everything that
//! reads the environment works as in a program that declares `MayFail`
//! itself: `MAYFAIL_RETRIES` and the other knobs, `MAYFAIL_INJECT` with all
//! its attributes, the `sites=` walk of `cargo mayfail sites`, the crash
//! report and its replay line; one default differs: the retry knob's is 0
//! ([`interpose::DEFAULT_RETRIES`]: C expects null from `malloc` when there
//! is no memory), which `MAYFAIL_RETRIES` still overrides. A Rust program
//! on the default allocator
//! (`System`) allocates through `malloc`, so it is reached unmodified; so is
//! C code, and glibc's own internal allocations.
//!
//! ```text
//!  caller ──► malloc (a jump, no frame) ──► interpose::malloc
//!                                             │ gate: engine on? not re-entered?
//!                                   no ◄──────┤ yes
//!                    inner::malloc            ▼
//!                                           MayFail<Inner>::alloc ──► inner::malloc
//! ```
//!
//! The modules: [`elf`] (the next definition of a name after this library,
//! read from the loaded objects' symbol tables), [`inner`] (the wrapped
//! implementation's functions and the inner allocator over them), [`gate`] (when the engine runs: from the library's constructor on,
//! never re-entered on a thread, never in a program that has mayfail linked
//! in), [`interpose`] (each C function's semantics), [`exports`] (the
//! exported symbols). What this library cannot reach is in `gate`'s docs
//! and the guide.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!("mayfail-preload interposes glibc's malloc: Linux with glibc only");

pub mod elf;
pub mod exports;
pub mod gate;
pub mod inner;
pub mod interpose;
