//! The progress of a walk on stderr: on a terminal, a live status line
//! (the run under way, runs done, sites found, outcomes so far, time per
//! run) under the lines that stay; otherwise the lines that stay only,
//! plain, one per event, for logs and CI.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::seconds;

/// `println!` that never panics: a closed or full standard output (`| head
/// -1`, a full disk) must not stop a walk or lose its state, so what cannot
/// be written is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` that never panics (see [`say`]).
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub(crate) use {note, say};

/// Writes `text` as it is to standard output, dropping what cannot be
/// written (see [`say`]).
pub(crate) fn print_text(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Where the progress of `sites` goes.
pub(crate) struct Progress {
    /// The live status line, when stderr is a terminal.
    status: Option<ProgressBar>,
    runs_done: u64,
    total_run_ms: u64,
}

impl Progress {
    /// A live status line if stderr is a terminal, plain lines if not.
    pub(crate) fn on_stderr() -> Progress {
        let status = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                    .expect("the template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            status,
            runs_done: 0,
            total_run_ms: 0,
        }
    }

    /// Whether the live status line is shown.
    #[cfg(test)]
    fn is_live(&self) -> bool {
        self.status.is_some()
    }

    /// A line that stays: `mayfail: ` and `text`.
    pub(crate) fn line(&self, text: &str) {
        match &self.status {
            Some(bar) => bar.println(format!("mayfail: {text}")),
            None => note!("mayfail: {text}"),
        }
    }

    /// The baseline (the command without injection) starts.
    pub(crate) fn baseline_started(&self) {
        if let Some(bar) = &self.status {
            bar.set_message("baseline under way: the command without injection");
        }
    }

    /// Run `run` starts; `sites` were found so far, `outcomes` says how
    /// they ended (`2 crashed, 1 handled`).
    pub(crate) fn run_started(&self, run: u64, sites: usize, outcomes: &str) {
        let Some(bar) = &self.status else {
            return;
        };
        let per_run = match self.runs_done {
            0 => String::new(),
            n => format!("; {} s per run", seconds(self.total_run_ms / n)),
        };
        bar.set_message(format!(
            "run {run} under way; {} runs done, {sites} sites ({outcomes}){per_run}",
            self.runs_done
        ));
    }

    /// A run ended after `elapsed_ms`; `text` is its line that stays.
    pub(crate) fn run_ended(&mut self, elapsed_ms: u64, text: &str) {
        self.runs_done += 1;
        self.total_run_ms += elapsed_ms;
        self.line(text);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.status {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_is_shown_only_on_a_terminal() {
        assert_eq!(
            Progress::on_stderr().is_live(),
            std::io::stderr().is_terminal()
        );
    }
}
