//! `cargo mayfail test`: a crate's whole test suite, once, under injected
//! allocation failures, with no change to the crate: its test binaries run
//! under the preload library (see `preload`).

use std::ffi::OsString;
use std::process::Command;

use clap::Args;

use super::preload;
use crate::failure::Failure;

/// Runs `cargo test ARGS` with its test binaries under the preload library,
/// MAYFAIL_INJECT and MAYFAIL_RETRIES set; exits with cargo's status
#[derive(Args, Debug)]
#[command(
    long_about = "Runs `cargo test ARGS` once with its test binaries under the preload library \
                  (libmayfail_preload.so: named by MAYFAIL_PRELOAD_LIB, found next \
                  to this program, or built once into ~/.cache/mayfail): they are run through cargo's target runner, so cargo, \
                  rustc and build scripts are not. The crate needs no change: Rust code on the \
                  default allocator and C code are both reached, and doctests where cargo hands \
                  its runner to rustdoc (cargo 1.89 and later). A test binary that declares mayfail::MayFail itself keeps its \
                  own: it injects, the library steps aside. Rust backtraces are off \
                  (RUST_BACKTRACE=0, whatever the environment says): a failure injected \
                  inside std's backtrace printer would deadlock the test. Exits with cargo's \
                  status (128+S if signal S killed it).",
    after_help = "Example: cargo mayfail test --inject probability=1,times=20,report=Y -- --no-fail-fast"
)]
pub(crate) struct TestArgs {
    /// MAYFAIL_RETRIES for the tests: -1 (retry forever), 0 (never) or a count N
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = super::retries)]
    retries: Option<i64>,
    /// MAYFAIL_INJECT for the tests: comma-separated key=value pairs
    /// (probability=5,times=2...)
    #[arg(long, value_name = "SPEC", value_parser = super::injection_spec)]
    inject: Option<String>,
    /// Arguments of `cargo test` (after `--`, or after the options above)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CARGO TEST ARGS"
    )]
    cargo_args: Vec<OsString>,
}

/// Runs the suite; returns cargo's shell status.
pub(crate) fn execute(args: TestArgs) -> Result<i32, Failure> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut argv = vec![cargo, "test".into()];
    argv.extend(args.cargo_args);
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    // `cargo` is named by its path when cargo started us: wired as cargo.
    let mut as_cargo = argv.clone();
    as_cargo[0] = "cargo".into();
    let (variable, value) = preload::environment(&as_cargo)?;
    command.env(variable, value);
    if let Some(retries) = args.retries {
        command.env("MAYFAIL_RETRIES", retries.to_string());
    }
    if let Some(spec) = args.inject {
        command.env("MAYFAIL_INJECT", spec);
    }
    super::without_backtraces(&mut command);
    super::run_to_end(&mut command, &argv[0])
}
