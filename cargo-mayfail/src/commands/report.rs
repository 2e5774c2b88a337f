//! `mayfail report`: the report of a state file, again.

use clap::Args;

use super::StateFiles;
use crate::exit_codes;
use crate::failure::Failure;
use crate::json;
use crate::state::Access;

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
    // Shared: reports may run together, never while a walk holds the file.
    let file = super::open_state(&paths.state, Access::Report)?;
    let state = super::load(&file, &paths.state)?;
    let summary = crate::report::summarize(&state, &paths.state);
    super::sites::write_reports(&summary, &paths)?;
    print!("{}", crate::report::table(&summary));
    Ok(exit_codes::SUCCESS)
}
