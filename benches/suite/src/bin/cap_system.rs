//! Peer: `cap::Cap<System>` with no limit (`usize::MAX`): one shared atomic per call.

#[global_allocator]
static GLOBAL: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// The workloads compiled in this crate, as a user's code is.
mod in_crate {
    include!("../workload_code.rs");
}

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(in_crate::all(), None)
}
