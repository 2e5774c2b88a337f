//! Bare `std::alloc::System` (glibc malloc): the baseline of every `System` configuration.

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), None)
}
