//! Peer: `alloc_chaos::ChaosAllocator<System>` (0.1.0), idle (no `check`
//! running): per allocation, a `SeqCst` store to a shared flag, a
//! `thread::panicking()` call and a load of the mode byte; deallocation is
//! passed straight through.
//!
//! A program installs this allocator to call `alloc_chaos::check` in its
//! tests, so this binary can call it too (`MAYFAIL_BENCH_CHAOS_CHECK` set,
//! which the driver never does). Without a call, link-time optimisation sees
//! that nothing ever changes the mode and deletes the test with the store:
//! the LTO build would measure an allocator with no switch at all.

#[global_allocator]
static GLOBAL: alloc_chaos::ChaosAllocator = alloc_chaos::ChaosAllocator::system();

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    if std::env::var_os("MAYFAIL_BENCH_CHAOS_CHECK").is_some() {
        let report = alloc_chaos::check(|| {
            let _ = Vec::<u8>::new().try_reserve(64);
        });
        eprintln!("{report:?}");
    }
    mayfail_bench_suite::main(in_crate::all(), None)
}
