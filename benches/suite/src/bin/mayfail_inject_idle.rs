//! `MayFail<System>` with fault injection on but never firing: the
//! attributes `task-filter=Y` with no `make_it_fail` scope open, so every
//! allocation takes the engaged path, counts itself and passes.

#[global_allocator]
static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail::configure_injection("task-filter=Y").expect("a valid injection spec");
    mayfail_bench_suite::main(in_crate::all(), None)
}
