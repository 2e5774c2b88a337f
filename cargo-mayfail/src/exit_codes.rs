//! The exit codes of `mayfail` and `cargo mayfail`, named.
//!
//! `mayfail run` is the exception: it exits with its command's own status
//! (`128 + S` when a signal `S` killed it), as a shell does, and uses the
//! codes here only for what happens before the command starts (bad input,
//! command not found, cannot execute).

/// `sites`: no site found is a bug (crashed, fallible-api-aborted,
/// error-path-aborted, hung, leaked, unknown) that `--baseline` does not
/// list, and every process of every run that ended badly had a site to
/// blame. Sites that aborted at an infallible allocation, failed a test or
/// were handled do not count. `report`: the report was printed and written
/// (and, with `--baseline`, no bug site lies outside the baseline).
pub const SUCCESS: i32 = 0;

/// `sites`: at least one site is a bug (crashed, fallible-api-aborted,
/// error-path-aborted, hung, leaked or unknown) that `--baseline` does not
/// list: the report lists them first. Or a process a run started ended
/// badly (killed by `--timeout`, a status not declared handled, a signal)
/// with no site to blame: the report lists those runs apart, as
/// `unattributed`. Or, with the per-test engine, a test failed or timed out
/// without injection and was left out of the walk (`left_out`). Or the
/// walk stopped before it found everything (`--max-runs` reached while runs
/// still found new sites): it has not looked everywhere.
/// `report --baseline FILE`: a bug site outside the baseline.
pub const UNHANDLED_SITES: i32 = 1;

/// Bad input: an unknown subcommand or option, a value out of range, a
/// missing `--` or command, an unusable `--state` path (one that is not a
/// regular file, or a symbolic link to one, or absent), a state file, log
/// or report that is another of them (`--state walk.json`), a state file
/// resumed with another command or other `--handled-exit` statuses, or a
/// state file that is corrupt (it is then left exactly as it was; a last
/// line cut short is not corruption: it is dropped). One line says
/// which input and what it accepts, a second one shows the usage. Also a
/// preload library that is needed but missing and could not be built: one
/// line names what failed and `MAYFAIL_PRELOAD_LIB`, without the usage.
pub const BAD_INPUT: i32 = 2;

/// An I/O error: a file that exists could not be read or written (the
/// state file, its `.log`, a report, the preload library's cache), or
/// waiting for the command failed. One line names the file and the error;
/// the input itself was fine, so the same command may well work once the
/// file system does. A state file that cannot be written is found before
/// anything runs: `sites` opens it for appending first.
pub const IO_ERROR: i32 = 3;

/// `sites`: the command failed, timed out or was killed without any
/// injected failure (the baseline run), so no site was walked: its
/// failures would have been blamed on the sites. Its output is in the
/// state file's `.log`.
pub const BASELINE_FAILED: i32 = 4;

/// The state file is in use: another `mayfail sites` holds its lock (a
/// `report` is refused too while a walk holds it). One line names the file
/// and the holder's pid when the system says. Nothing was run or written;
/// the same command works once the other walk has ended. Not bad input
/// (the path is right) nor an I/O error (nothing failed): a script may
/// wait and try again on this code alone.
pub const STATE_IN_USE: i32 = 5;

/// `sites`: no process of the command reported to the walk in any run
/// (neither a site, nor a stack of the runtime, nor one of another
/// `--shard`), so nothing was injected and nothing walked: a walk never
/// exits 0 without having looked. One line says so. With the preload
/// library, the reason is usually said before the walk (a static program,
/// a setuid one), else the program allocates without `malloc`; without
/// it, the program's allocator is not `mayfail::MayFail` (give
/// `--preload`).
pub const NOTHING_REACHED: i32 = 6;

/// The command exists but could not be executed (permission denied, not
/// an executable), as in a shell.
pub const CANNOT_EXECUTE: i32 = 126;

/// The command was not found, as in a shell. One line names it.
pub const COMMAND_NOT_FOUND: i32 = 127;

/// `sites`: interrupted by Ctrl-C (`SIGINT`) or `SIGTERM`, which were
/// forwarded to the command. The state file is consistent: run the same
/// command again to resume.
pub const INTERRUPTED: i32 = 130;

/// The exit-code table of the top-level `--help`.
pub(crate) const HELP: &str = "\
Exit status:
    0    no bug site outside --baseline (report: done)
    1    bug sites found that --baseline does not list: crashed,
         fallible-api-aborted, error-path-aborted, hung, leaked or unknown
         (infallible aborts, failed tests and handled sites do not count);
         or a run's process ended badly with no site to blame (unattributed);
         or a test failed without injection and was left out (left_out);
         or the walk stopped (--max-runs) before it found everything
    2    bad input: unknown option, bad value, missing `-- CMD`, corrupt state file
    3    I/O error: a file could not be read or written (its path is named)
    4    the command fails without injected failures (baseline): nothing walked
    5    the state file is in use by another walk (its pid is named)
    6    no allocation reached the preload library or MayFail: nothing walked
  126    the command cannot be executed
  127    the command was not found
  130    interrupted (Ctrl-C, SIGTERM): run the same command again to resume
`mayfail run` exits with its command's status (128+S if signal S killed it).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_table_lists_every_code_with_its_number() {
        for (code, words) in [
            (SUCCESS, "no bug site outside --baseline"),
            (
                UNHANDLED_SITES,
                "bug sites found that --baseline does not list",
            ),
            (BAD_INPUT, "bad input"),
            (IO_ERROR, "I/O error"),
            (
                BASELINE_FAILED,
                "the command fails without injected failures",
            ),
            (STATE_IN_USE, "the state file is in use by another walk"),
            (
                NOTHING_REACHED,
                "no allocation reached the preload library or MayFail",
            ),
            (CANNOT_EXECUTE, "the command cannot be executed"),
            (COMMAND_NOT_FOUND, "the command was not found"),
            (INTERRUPTED, "interrupted"),
        ] {
            let line = format!("{code:>5}    {words}");
            assert!(HELP.contains(&line), "{line:?} is missing from:\n{HELP}");
        }
    }
}
