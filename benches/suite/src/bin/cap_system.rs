//! Peer: `cap::Cap<System>` with no limit (`usize::MAX`): one shared atomic per call.

#[global_allocator]
static GLOBAL: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(None)
}
