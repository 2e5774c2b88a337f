//! The first allocation's work: register the allocator's compiled defaults,
//! read the environment (`MAYFAIL_RETRIES`, `MAYFAIL_SMALL`,
//! `MAYFAIL_STALL_MS`, and `MAYFAIL_INJECT` with the `inject` feature), then
//! take the "not started" reason off the engaged word.
//!
//! Runs inside the allocator, on its engaged path: it never allocates, locks
//! or panics.

use crate::config::{self, Defaults};
use crate::engaged::{self, NOT_STARTED};

/// Runs the start-up until it has completed once.
#[inline]
pub(crate) fn start(defaults: &Defaults) {
    if engaged::is_set(NOT_STARTED) {
        start_once(defaults);
    }
}

#[cold]
fn start_once(defaults: &Defaults) {
    config::register_defaults(defaults);
    config::read_env_once();
    #[cfg(feature = "inject")]
    let injection_read = crate::configure::read_env_once();
    #[cfg(not(feature = "inject"))]
    let injection_read = true;
    if config::env_read() && injection_read {
        engaged::set(NOT_STARTED, false);
    }
}
