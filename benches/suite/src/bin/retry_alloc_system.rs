//! Peer: `retry_alloc::RetryAlloc<System>` with its defaults (10 retries, 50 ms apart): a null check per allocation.

#[global_allocator]
static GLOBAL: retry_alloc::RetryAlloc<std::alloc::System> =
    retry_alloc::RetryAlloc::new(std::alloc::System);

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), None)
}
