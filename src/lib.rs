#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
//!
//! # Crate map
//!
//! - [`MayFail`]: the global allocator (the hot path, `alloc.rs`).
//! - The knobs: [`retries`] / [`set_retries`], [`small_limit`] /
//!   [`set_small_limit`], [`stall_ms`] / [`set_stall_ms`], with the defaults
//!   [`DEFAULT_RETRIES`], [`DEFAULT_SMALL_LIMIT`], [`DEFAULT_STALL_MS`].
//! - Scopes: [`nofail`], [`noretry`] and their guard forms [`nofail_guard`],
//!   [`noretry_guard`], [`nowarn`], [`nowarn_guard`] ([`ScopeGuard`]);
//!   [`in_reclaim`].
//! - Reclaimers: [`add_reclaimer`], [`remove_reclaimer`], [`Reclaimer`],
//!   [`ReclaimersFull`], [`MAX_RECLAIMERS`].
//! - Fault injection: [`configure_injection`], [`check_injection`],
//!   [`disable_injection`], [`ConfigError`], [`fail_nth`],
//!   [`fail_nth_pending`], [`make_it_fail`], [`make_it_fail_guard`].
//! - The sweep of one operation: [`sweep`], [`Sweep`], [`SweepReport`],
//!   [`Site`], [`Point`], [`Outcome`].
//! - Counters: [`stats`], [`Stats`].
//! - Real memory pressure for tests and demos: [`pressure`].

mod alloc;
mod backoff;
mod config;
mod configure;
mod crash;
mod engaged;
mod hash;
mod hook;
mod inject;
mod outcome;
mod policy;
mod reclaim;
mod record;
mod report;
mod request;
mod reserve;
mod scope;
mod sites; // `sites=` / `stack=` injection modes, for the `mayfail` runner
mod spec;
pub mod state;
mod stats;
mod sweep;
mod symbols;
mod sys;
mod table;
mod text;
mod track;

#[cfg(target_os = "linux")]
pub mod pressure;

pub use crate::alloc::MayFail;
pub use crate::config::{
    DEFAULT_RETRIES, DEFAULT_SMALL_LIMIT, DEFAULT_STALL_MS, RETRY_FOREVER, retries, set_retries,
    set_small_limit, set_stall_ms, small_limit, stall_ms,
};
pub use crate::configure::{
    ConfigError, check_injection, configure_injection, disable_injection, fail_nth,
    fail_nth_pending,
};
pub use crate::outcome::{Outcome, UnknownOutcome};
pub use crate::reclaim::{
    MAX_RECLAIMERS, Reclaimer, ReclaimersFull, add_reclaimer, remove_reclaimer,
};
pub use crate::scope::{
    ScopeGuard, in_reclaim, make_it_fail, make_it_fail_guard, nofail, nofail_guard, noretry,
    noretry_guard, nowarn, nowarn_guard,
};
pub use crate::stats::{Stats, stats};
pub use crate::sweep::{Point, Site, Sweep, SweepReport, sweep};
