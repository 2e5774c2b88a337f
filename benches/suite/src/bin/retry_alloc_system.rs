//! Peer: `retry_alloc::RetryAlloc<System>` with its defaults (10 retries, 50 ms apart): a null check per allocation.

#[global_allocator]
static GLOBAL: retry_alloc::RetryAlloc<std::alloc::System> =
    retry_alloc::RetryAlloc::new(std::alloc::System);

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(None)
}
