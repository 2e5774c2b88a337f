//! Bare `mimalloc::MiMalloc`: the baseline of `MayFail<MiMalloc>`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), None)
}
