//! `MayFail<MiMalloc>` with the crate defaults, idle.

#[global_allocator]
static GLOBAL: mayfail::MayFail<mimalloc::MiMalloc> = mayfail::MayFail::new(mimalloc::MiMalloc);

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), None)
}
