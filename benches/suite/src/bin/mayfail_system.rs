//! `MayFail<System>` with the crate defaults, idle: nothing fails, injection off.

#[global_allocator]
static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(None)
}
