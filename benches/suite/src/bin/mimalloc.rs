//! Bare `mimalloc::MiMalloc`: the baseline of `MayFail<MiMalloc>`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mayfail_bench_suite::main(None)
}
