//! Bare `std::alloc::System` (glibc malloc): the baseline of every `System` configuration.

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(None)
}
