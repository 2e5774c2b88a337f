//! # Crate map
//!
//! - [`MayFail`]: the global allocator (the hot path, `alloc.rs`).
//! - The retry policy's knobs: [`retries`] / [`set_retries`],
//!   [`small_limit`] / [`set_small_limit`], [`stall_ms`] / [`set_stall_ms`],
//!   with the defaults [`DEFAULT_RETRIES`], [`DEFAULT_SMALL_LIMIT`],
//!   [`DEFAULT_STALL_MS`].
//! - Scopes: [`nofail`], [`noretry`], [`nowarn`] and their guard forms
//!   ([`ScopeGuard`]); [`in_reclaim`].
//! - The heap limit: [`set_limit`] / [`limit`], [`Limit`],
//!   [`MayFail::with_limit`], [`set_limit_headroom`] / [`limit_headroom`],
//!   `MAYFAIL_LIMIT`, `MAYFAIL_LIMIT_HEADROOM`.
//! - Reclaimers: [`add_reclaimer`], [`remove_reclaimer`], [`Reclaimer`].
//! - Counters: [`stats`], [`Stats`].
//! - Fault injection (feature `inject`): [`configure_injection`] (its
//!   grammar), [`check_injection`], [`disable_injection`], [`fail_nth`],
//!   [`fail_nth_pending`], [`make_it_fail`].
//! - The sweep of one operation (feature `sweep`): [`sweep`], [`Sweep`],
//!   [`SweepReport`], [`Site`], [`Point`], [`Outcome`].
//! - The site walk's state file, shared with `cargo mayfail` (feature
//!   `sites`): [`state`].
//! - Real memory pressure for tests and demos (feature `pressure`):
//!   `pressure`.
//!
//! ## Features
//!
//! All on by default. A service that wants only the retry policy in
//! production can turn them off: `mayfail = { version = "0.1",
//! default-features = false }` keeps `MayFail`, the knobs, scopes,
//! reclaimers and counters, and depends on `libc` alone.
//!
//! | feature | what it adds | needs |
//! |---|---|---|
//! | `inject` | `MAYFAIL_INJECT`, [`configure_injection`], `fail_nth`, the crash report | `backtrace` |
//! | `sweep` | [`sweep`], [`Sweep`] | `inject` |
//! | `sites` | `sites=` / `stack=` modes for `cargo mayfail sites` | `inject` |
//! | `pressure` | `pressure`: real exhaustion under `RLIMIT_AS` for tests | |
//! | `log` | the final failure of an allocation is logged through `log` | `log` |
//!
//! ## No locks, no lazy statics
//!
//! An allocator is re-entered by whatever it calls and may run inside a
//! signal handler, so mayfail takes no lock and runs no blocking
//! initialisation: every piece of state is a `static` atomic or a
//! `const`-initialised thread-local without a destructor. That is why it does
//! not use `spin` or `once_cell`: a spin lock held by an interrupted thread
//! deadlocks the handler, and a lazy initialiser that allocates re-enters the
//! allocator it initialises.
//!
//! ---
//!
#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!(
    "mayfail supports Linux with glibc only (it uses RLIMIT_AS, /proc, pthread_getname_np \
     and glibc's on_exit)"
);

// The layers, bottom up (docs/ARCHITECTURE.md): leaves first, then the knobs
// and the retry policy, then injection and what registers with it.
mod cgroup;
mod engaged;
#[cfg(feature = "inject")]
mod hash;
mod outcome;
mod pass;
mod request;
mod scope;
mod stats;
mod sys;
#[cfg(any(feature = "sweep", feature = "sites"))]
mod table;
mod text;

mod backoff;
mod config;
mod kswapd;
mod limit;
mod reclaim;
mod report;
mod reserve;

mod policy;
mod watchdog;

#[cfg(feature = "inject")]
mod configure;
#[cfg(feature = "inject")]
mod crash;
#[cfg(feature = "inject")]
mod hook;
#[cfg(feature = "inject")]
mod inject;
#[cfg(feature = "inject")]
mod modules;
#[cfg(feature = "inject")]
mod record;
#[cfg(feature = "inject")]
mod rule;
#[cfg(feature = "sites")]
mod sites;
#[cfg(feature = "inject")]
mod spec;
#[cfg(feature = "sites")]
pub mod state;
#[cfg(feature = "sweep")]
mod sweep;
#[cfg(feature = "inject")]
mod symbols;
#[cfg(feature = "sweep")]
mod track;

mod startup;

#[macro_use]
mod arch;
mod alloc;

#[cfg(feature = "pressure")]
pub mod pressure;

pub use crate::alloc::MayFail;
pub use crate::config::{
    DEFAULT_RETRIES, DEFAULT_SMALL_LIMIT, DEFAULT_STALL_MS, RETRY_FOREVER, retries, set_retries,
    set_small_limit, set_stall_ms, small_limit, stall_ms,
};
#[cfg(feature = "inject")]
pub use crate::configure::{
    ConfigError, check_injection, configure_injection, disable_injection, fail_nth,
    fail_nth_pending,
};
#[doc(hidden)]
pub use crate::limit::__count_usable;
pub use crate::limit::{
    DEFAULT_HEADROOM_PERCENT, DEFAULT_SOFT_PERCENT, Limit, MIN_HEADROOM, limit, limit_headroom,
    set_limit, set_limit_headroom,
};
pub use crate::outcome::{Outcome, UnknownOutcome};
pub use crate::reclaim::{
    MAX_RECLAIMERS, Reclaimer, ReclaimersFull, add_reclaimer, remove_reclaimer,
};
pub use crate::scope::{
    ScopeGuard, in_reclaim, nofail, nofail_guard, noretry, noretry_guard, nowarn, nowarn_guard,
};
#[cfg(feature = "inject")]
pub use crate::scope::{make_it_fail, make_it_fail_guard};
pub use crate::stats::{Stats, stats};
#[cfg(feature = "sweep")]
pub use crate::sweep::{Point, Site, Sweep, SweepReport, sweep};
