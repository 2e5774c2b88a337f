//! `MayFail<MiMalloc>` with the crate defaults, idle.

#[global_allocator]
static GLOBAL: mayfail::MayFail<mimalloc::MiMalloc> = mayfail::MayFail::new(mimalloc::MiMalloc);

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(None)
}
