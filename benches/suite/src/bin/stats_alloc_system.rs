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

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(Some(counts))
}
