//! `MayFail<System>` with the crate defaults, idle: nothing fails, injection off.

#[global_allocator]
static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), None)
}
