//! `mayfail report`: the report of a state file, again, or one report for
//! several (the shards of one walk).

use std::path::PathBuf;

use clap::Args;

use super::StateFiles;
use crate::exit_codes;
use crate::failure::Failure;
use crate::json;
use crate::state::Access;

/// Prints the table and writes the JSON and HTML reports of a state file,
/// or of several merged
#[derive(Args, Debug)]
#[command(after_long_help = json::SCHEMA)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    files: StateFiles,
    /// State files to merge into one report (the shards of one walk, `sites
    /// --shard K/N`) instead of --state's; the reports still go to --json
    /// and --html, or next to --state
    #[arg(value_name = "STATE")]
    merge: Vec<PathBuf>,
    #[command(flatten)]
    findings: crate::findings::FindingsArgs,
}

/// Renders the report; exits 0, or 1 with --baseline when a bug site is
/// not in the baseline.
pub(crate) fn execute(args: ReportArgs) -> Result<i32, Failure> {
    let paths = args.files.paths()?;
    let baseline = args.findings.baseline()?;
    let gate = baseline.is_some();
    let sources = if args.merge.is_empty() {
        vec![paths.state.clone()]
    } else {
        args.merge
    };
    paths.refuse_collisions(&sources)?;
    let mut summaries = Vec::new();
    for path in &sources {
        // Shared: reports may run together, never while a walk holds the file.
        let file = super::open_state(path, Access::Report)?;
        let state = super::load(&file, path)?;
        if let Some(line) = &state.torn {
            crate::progress::note!(
                "mayfail: note: the state file {} ends with a line cut short (\"{line}\"; a full \
                 disk, or a writer killed mid-line): left out; `mayfail sites` cuts it off when \
                 it resumes",
                path.display()
            );
        }
        super::note_unknown_lines(&state, path);
        summaries.push(crate::report::summarize(&state, path));
    }
    let summary = if summaries.len() == 1 {
        summaries.remove(0)
    } else {
        crate::report::merge(summaries)
    };
    let summary = args.findings.apply(baseline.as_ref(), summary);
    super::sites::write_reports(&summary, &paths)?;
    args.findings.write(&summary)?;
    crate::progress::print_text(&crate::report::table(&summary));
    Ok(if gate && summary.gating() > 0 {
        exit_codes::UNHANDLED_SITES
    } else {
        exit_codes::SUCCESS
    })
}
