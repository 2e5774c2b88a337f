//! `cargo mayfail` (or plain `mayfail`): run a program or a whole test suite
//! under injected allocation failures, with `mayfail::MayFail` as its global
//! allocator.
//!
//! This package installs one program under two names: `cargo-mayfail`, which
//! cargo runs for `cargo mayfail ...` (passing `mayfail` as the first
//! argument, which is dropped), and `mayfail`. Each subcommand has its own
//! file under `commands/`; exit codes are named in [`exit_codes`].
//!
//! - `mayfail run [--retries N] [--inject SPEC] -- CMD ARGS...` runs `CMD`
//!   with `MAYFAIL_RETRIES` / `MAYFAIL_INJECT` set and passes its exit status
//!   through (a death by signal `S` exits `128 + S`, as shells do).
//! - `mayfail sites [OPTIONS] -- CMD ARGS...` walks every allocation site of
//!   `CMD` (mallocfail's and Failgrind's method): it runs `CMD` again and
//!   again with `MAYFAIL_INJECT=sites=STATE`, under which each process fails
//!   the first allocation whose call stack is not in the state file yet (one
//!   per process, so the process's fate is that site's outcome) and appends
//!   the site and its fate to the file, until a run finds no new site.
//! - `mayfail report [--state FILE]` prints the report of a state file again.
//!
//! A program that declares `mayfail::MayFail` as its global allocator is
//! served by it; any other dynamically linked glibc program (a script and
//! what it runs too) by the preload library (`mayfail-preload`), by
//! default, through cargo's target runner for cargo commands.
//!
//! ## Decisions of `sites`
//!
//! - One new site per process per run: the process's fate (exit status,
//!   `SIGABRT`, `SIGSEGV`) is then that site's outcome. A `cargo test` with
//!   several test binaries fails one site in each binary per run (use
//!   `--no-fail-fast`, or cargo stops at the first binary that fails).
//! - Stack ids are hashes of module-relative return addresses (see the
//!   library's `sites` module): stable across runs of one build, despite ASLR; a
//!   rebuild changes them, and a resumed state then finds the sites anew.
//! - Symbols are resolved by the process that fails a site, right then
//!   (`where` in the state file); the runner never needs the binaries.
//! - Stacks whose innermost frame outside std/alloc/core/mayfail is in the
//!   Rust runtime, libtest or libc are recorded as `runtime` and skipped, so
//!   the walk costs one run per site of the program, not per start-up
//!   allocation of std (`--all-stacks` counts them).
//! - Stop: a run that fails no new site and meets no new runtime stack has
//!   walked every stack of the command: nothing is left, and its time is the
//!   steady cost of sites mode, reported against the baseline.
//! - `--jobs N`: N copies per run, copy `k` with `sites-skip=k`. Concurrent
//!   `cargo test` invocations do run their tests in parallel.
//! - Ctrl-C / `SIGTERM`: forwarded to the command's process group (it runs
//!   in its own, so that timeouts reach cargo's test binaries too); sites
//!   the interrupted run failed get a `retry` line and are failed again on
//!   resume. Every line of the state file is written whole, with one write.
//! - A corrupt state file is refused (exit 2) and never written to; a last
//!   line cut short (a full disk) is not corruption: `sites` drops it.
//! - A process a run started that ends badly with no site to blame is
//!   recorded (`unattributed`), reported, and keeps the exit status from 0;
//!   a walk no process reported to exits 6.
//! - The state file is a regular file or absent (a symbolic link to a
//!   regular file is followed); anything else is refused (exit 2) before it
//!   is read. `sites` opens it for appending before anything runs (a file it
//!   cannot write: exit 3) and holds an exclusive `flock` on it for the whole
//!   walk; `report` takes a shared one. A second walk is refused with exit 5
//!   ([`exit_codes::STATE_IN_USE`]), naming the holder's pid.
//! - Every process of a run ends with it: the runner is a child subreaper
//!   (Linux), so descendants that left the command's process group
//!   (`setsid`) are re-parented to it, and it kills and reaps whatever is
//!   left before writing the run's `end` line. Site lines written outside
//!   any run are not reported and are failed again (`retry`).
//! - `sites` and `report` print one summary, computed from the state file
//!   alone (`report::summarize`): its time is every recorded run's, summed.
//! - Replay lines are built from the command's arguments with
//!   `mayfail::state::quote_command`; a `run` line whose command does not
//!   read back as that quoter wrote it makes the state file corrupt.

mod commands;
pub mod exit_codes;
mod failure;
mod findings;
mod json;
mod library_cache;
mod model;
mod process;
mod progress;
mod report;
mod returns;
mod state;

use std::ffi::OsString;
use std::io::Write;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use failure::Failure;

/// The word cargo puts first when it runs `cargo-mayfail` for `cargo mayfail`.
const CARGO_SUBCOMMAND: &str = "mayfail";

/// The hint under every bad-input message.
const USAGE_HINT: &str =
    "usage: mayfail run|sites|test|report [OPTIONS] -- CMD ARGS...   (mayfail --help)";

/// How the program was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// As `cargo-mayfail`: `cargo mayfail ARGS` runs `cargo-mayfail mayfail
    /// ARGS`; `cargo-mayfail ARGS` is accepted too.
    CargoSubcommand,
    /// As `mayfail ARGS`.
    Plain,
}

#[derive(Parser, Debug)]
#[command(
    name = "mayfail",
    version,
    about = "Runs a program or a test suite under injected allocation failures and walks \
             every allocation site of it",
    long_about = "Runs a program or a test suite under injected allocation failures and walks \
                  every allocation site of it. A program that declares mayfail::MayFail as its \
                  global allocator is reached as it is; any other dynamically linked glibc \
                  program through the preload library (libmayfail_preload.so), by default: \
                  cargo commands' test binaries, scripts, any other program (--no-preload: \
                  never).",
    after_help = exit_codes::HELP,
    subcommand_required = true,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Run(commands::run::RunArgs),
    Sites(commands::sites::SitesArgs),
    Report(commands::report::ReportArgs),
    Test(commands::test::TestArgs),
    #[command(hide = true)]
    PreloadRun(commands::preload::PreloadRunArgs),
}

/// Runs the program with `args` (the first one is the program's own name)
/// and returns its exit code (see [`exit_codes`]).
pub fn main_with_args(invocation: Invocation, args: Vec<OsString>) -> i32 {
    // Run by cargo as rustdoc, to keep the doctests a walk compiles.
    if let Some(code) = commands::walk::doctests::as_rustdoc(&args) {
        return code;
    }
    let mut args = args;
    let mut command = Cli::command();
    if invocation == Invocation::CargoSubcommand {
        if args.get(1).is_some_and(|arg| arg == CARGO_SUBCOMMAND) {
            args.remove(1);
        }
        command = command.bin_name("cargo mayfail");
    }
    let parsed = command
        .try_get_matches_from(&args)
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help, --version: print them, exit 0.
            let _ = error.print();
            return exit_codes::SUCCESS;
        }
        Err(error) => return report_failure(&Failure::BadInput(argument_error(&error))),
    };
    let separator_given = args.iter().any(|arg| arg == "--");
    let outcome = match cli.command {
        Command::Run(run) => commands::run::execute(run, separator_given),
        Command::Sites(sites) => commands::sites::execute(
            sites,
            separator_given,
            invocation == Invocation::CargoSubcommand,
        ),
        Command::Report(report) => commands::report::execute(report),
        Command::Test(test) => commands::test::execute(test),
        Command::PreloadRun(run) => commands::preload::execute(run),
    };
    match outcome {
        Ok(code) => code,
        Err(failure) => report_failure(&failure),
    }
}

/// Prints `failure` (one line, then the usage for bad input) and returns
/// its exit code.
fn report_failure(failure: &Failure) -> i32 {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "mayfail: {failure}");
    if failure.wants_usage() {
        let _ = writeln!(stderr, "{USAGE_HINT}");
    }
    failure.exit_code()
}

/// One line for a bad command line: which argument, and what it accepts.
fn argument_error(error: &clap::Error) -> String {
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(value)) => Some(value.clone()),
        Some(ContextValue::Strings(values)) => values.first().cloned(),
        _ => None,
    };
    // `--jobs <N>` -> `--jobs`
    let option = || {
        context(ContextKind::InvalidArg)
            .map(|arg| arg.split([' ', '=']).next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    match error.kind() {
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            "no subcommand: give run, sites, test or report".to_owned()
        }
        ErrorKind::InvalidSubcommand => format!(
            "unknown subcommand \"{}\": give run, sites, test or report",
            context(ContextKind::InvalidSubcommand).unwrap_or_default()
        ),
        ErrorKind::UnknownArgument => {
            let argument = option();
            if argument.starts_with('-') {
                format!("unknown option {argument} (see --help for the options)")
            } else {
                format!(
                    "missing `--` before the command \"{argument}\": mayfail ... -- CMD ARGS..."
                )
            }
        }
        ErrorKind::InvalidValue
            if context(ContextKind::InvalidValue)
                .unwrap_or_default()
                .is_empty() =>
        {
            format!("{} needs a value", option())
        }
        ErrorKind::ValueValidation => {
            let reason = std::error::Error::source(error)
                .map(ToString::to_string)
                .unwrap_or_else(|| "has a bad value".to_owned());
            format!("{} {reason}", option())
        }
        ErrorKind::ArgumentConflict
            if context(ContextKind::PriorArg) == context(ContextKind::InvalidArg) =>
        {
            format!("{} is given twice", option())
        }
        _ => {
            // clap's own first line, without its `error: ` prefix.
            let text = error.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_owned()
        }
    }
}
