//! `mayfail report`: the report of a state file, again.

use std::time::Duration;

use clap::Args;

use super::StateFiles;
use crate::exit_codes;
use crate::failure::Failure;
use crate::json;

/// Prints the table and writes the JSON and HTML reports of a state file
#[derive(Args, Debug)]
#[command(after_long_help = json::SCHEMA)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    files: StateFiles,
}

/// Renders the report; exits 0.
pub(crate) fn execute(args: ReportArgs) -> Result<i32, Failure> {
    let paths = args.files.paths()?;
    if !paths.state.exists() {
        return Err(Failure::bad_input(format!(
            "no state file at {} (give --state FILE, written by `mayfail sites`)",
            paths.state.display()
        )));
    }
    let state = super::load(&paths.state)?;
    let command = state
        .runs
        .last()
        .map_or("CMD".to_owned(), |r| r.command.clone());
    let elapsed: u64 = state.runs.iter().filter_map(|r| r.elapsed_ms).sum();
    let stopped = match state.runs.last().and_then(|r| r.how.as_deref()) {
        Some(how) => format!("the last run ended: {how}"),
        None => "no run ended".to_owned(),
    };
    let summary = super::sites::summarize(
        &state,
        &paths,
        &command,
        stopped,
        Duration::from_millis(elapsed),
    );
    super::sites::write_reports(&summary, &paths)?;
    print!("{}", crate::report::table(&summary));
    Ok(exit_codes::SUCCESS)
}
