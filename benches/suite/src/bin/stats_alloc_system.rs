//! Peer: `stats_alloc::StatsAlloc<System>`: two `SeqCst` shared counters per
//! call. Also the configuration that counts allocator calls for the
//! callgrind table.

use stats_alloc::StatsAlloc;
use std::alloc::System;

#[global_allocator]
static GLOBAL: StatsAlloc<System> = StatsAlloc::system();

fn counts() -> [usize; 3] {
    let s = GLOBAL.stats();
    [s.allocations, s.deallocations, s.reallocations]
}

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), Some(counts))
}
