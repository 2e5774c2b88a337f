//! `mayfail run`: one run of a command with the library's variables set.

use std::ffi::OsString;
use std::process::Command;

use clap::Args;

use crate::failure::Failure;

/// Runs CMD with MAYFAIL_RETRIES and MAYFAIL_INJECT set, and exits with its
/// status (128+S if signal S killed it)
#[derive(Args, Debug)]
#[command(
    long_about = "Runs CMD with MAYFAIL_RETRIES and MAYFAIL_INJECT set, and exits with its \
                  status (128+S if signal S killed it). Rust backtraces are off \
                  (RUST_BACKTRACE=0, whatever the environment says): a failure injected \
                  inside std's backtrace printer would deadlock CMD.",
    after_help = "Example: mayfail run --inject probability=1,times=5 -- cargo test"
)]
pub(crate) struct RunArgs {
    /// MAYFAIL_RETRIES for CMD: -1 (retry forever), 0 (never) or a count N.
    /// Unset by default: CMD keeps its own default, that of the MayFail it
    /// declares (-1 unless it chose), 0 under the preload library (C's null)
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = super::retries)]
    retries: Option<i64>,
    /// MAYFAIL_INJECT for CMD: comma-separated key=value pairs
    /// (probability=5,times=2...)
    #[arg(long, value_name = "SPEC", value_parser = super::injection_spec)]
    inject: Option<String>,
    #[command(flatten)]
    preload: super::preload::PreloadChoice,
    /// The command to run and its arguments, after `--`
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs the command; returns its shell status.
pub(crate) fn execute(args: RunArgs, separator_given: bool) -> Result<i32, Failure> {
    let argv = super::command_to_run(args.command, separator_given)?;
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    if let Some(retries) = args.retries {
        command.env("MAYFAIL_RETRIES", retries.to_string());
    }
    if let Some(spec) = args.inject {
        command.env("MAYFAIL_INJECT", spec);
    }
    if let Some((variable, value)) = args.preload.environment(&argv)? {
        command.env(variable, value);
    }
    super::without_backtraces(&mut command);
    super::run_to_end(&mut command, &argv[0])
}
