//! Peer: `alloc_chaos::ChaosAllocator<System>` (0.1.0), idle (no `check`
//! running): per allocation, a `SeqCst` store to a shared flag, a
//! `thread::panicking()` call and a load of the mode byte; deallocation is
//! passed straight through.

#[global_allocator]
static GLOBAL: alloc_chaos::ChaosAllocator = alloc_chaos::ChaosAllocator::system();

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), None)
}
