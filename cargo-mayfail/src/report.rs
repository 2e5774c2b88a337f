//! The report of `mayfail sites`: sites grouped by stack id, worst first, as
//! a terminal table and a self-contained HTML page (the JSON file for
//! machines is [`crate::json`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use mayfail::state::{quote_command, quote_word};
use serde::Serialize;

use crate::state::{Outcome, StackId, State};

/// One frame of a site's `where`: `function (file:line)`.
#[derive(Clone, Debug, Serialize)]
pub struct Frame {
    pub function: String,
    pub location: Option<String>,
}

/// A frame's `file:line` as the report shows it (the JSON keeps the full
/// path): relative to the current directory (the workspace's), a registry
/// crate's as `name-version/src/file.rs`, std's from `library/`.
pub fn short_location(location: &str) -> String {
    let cwd = std::env::current_dir().ok();
    if let Some(dir) = cwd.as_deref().and_then(|d| d.to_str())
        && let Some(rest) = location.strip_prefix(dir)
        && let Some(rest) = rest.strip_prefix('/')
    {
        return rest.to_owned();
    }
    for marker in ["/registry/src/", "/git/checkouts/"] {
        if let Some(at) = location.find(marker) {
            let rest = &location[at + marker.len()..];
            let skip = match marker {
                "/registry/src/" => rest.find('/').map_or(0, |slash| slash + 1),
                _ => 0,
            };
            return rest[skip..].to_owned();
        }
    }
    if let Some(rest) = location.strip_prefix("/rustc/")
        && let Some(slash) = rest.find('/')
    {
        return rest[slash + 1..].to_owned();
    }
    location.to_owned()
}

/// One site: every process that failed it, merged.
#[derive(Clone, Debug)]
pub struct Site {
    pub id: u64,
    pub outcome: Outcome,
    pub detail: String,
    /// How many processes failed it (more than one when copies ran at once).
    pub seen: usize,
    pub first_run: u64,
    pub what: String,
    pub thread: String,
    pub binary: String,
    pub frames: Vec<Frame>,
    pub raw_frames: String,
    pub replay: String,
    /// The test whose process first failed it (per-test walks).
    pub test: Option<String>,
}

/// What the report says about a whole walk.
#[derive(Debug, Default)]
pub struct Summary {
    pub command: String,
    pub state: String,
    pub runs: u64,
    pub stopped: String,
    pub elapsed_ms: u64,
    pub baseline_ms: Option<u64>,
    pub last_run_ms: Option<u64>,
    pub runtime_stacks: usize,
    pub sites: Vec<Site>,
    /// Processes of runs that ended badly with no site to blame: the walk
    /// is not all handled while any is listed.
    pub unattributed: Vec<Unattributed>,
    /// Tests that fail without injection, left out of the walk.
    pub left_out: Vec<LeftOut>,
    /// Exit statuses counted as handled besides 0 (`1,7`), or empty.
    pub handled_exit: String,
}

/// A test that fails without injection, left out of a per-test walk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeftOut {
    pub test: String,
    pub detail: String,
}

/// A process a run started that ended badly with no site to blame.
#[derive(Clone, Debug, Serialize)]
pub struct Unattributed {
    pub run: u64,
    pub pid: u32,
    #[serde(serialize_with = "outcome_name")]
    pub outcome: Outcome,
    pub detail: String,
}

fn outcome_name<S: serde::Serializer>(outcome: &Outcome, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(outcome.name())
}

impl Site {
    /// Counts `seen` more processes that failed this site; the worst
    /// outcome, with its detail, stands.
    fn absorb(&mut self, seen: usize, outcome: Outcome, detail: String) {
        self.seen += seen;
        if outcome < self.outcome {
            self.outcome = outcome;
            self.detail = detail;
        }
    }
}

impl Summary {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.sites.iter().filter(|s| s.outcome == outcome).count()
    }

    /// `2 crashed, 1 handled`
    pub fn counts(&self) -> String {
        let parts: Vec<String> = Outcome::ALL
            .iter()
            .map(|&o| (o, self.count(o)))
            .filter(|&(_, n)| n > 0)
            .map(|(o, n)| format!("{n} {o}"))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// `without injection 0.03 s, last run under sites mode 0.10 s (3.3x)`
    pub fn cost(&self) -> Option<String> {
        let (base, last) = (self.baseline_ms?, self.last_run_ms?);
        let ratio = last as f64 / base.max(1) as f64;
        Some(format!(
            "without injection {} s, last run under sites mode {} s ({ratio:.1}x)",
            seconds(base),
            seconds(last)
        ))
    }
}

/// The report of the walk recorded in `state` (at `path`): the one summary
/// that `sites` prints at its end and `report` prints again, computed from
/// the state file alone. Its time is every recorded run's, summed.
pub fn summarize(state: &State, path: &Path) -> Summary {
    Summary {
        // The first run's: a per-test walk's later runs walk its doctests.
        command: state
            .runs
            .first()
            .map_or_else(String::new, |r| r.command.clone()),
        state: path.display().to_string(),
        runs: state.runs.len() as u64,
        stopped: why_stopped(state),
        elapsed_ms: state.total_ms(),
        baseline_ms: state.baseline.as_ref().map(|(ms, _)| *ms),
        last_run_ms: state
            .runs
            .iter()
            .rev()
            .find(|r| r.how.as_deref() == Some("done"))
            .and_then(|r| r.elapsed_ms),
        runtime_stacks: state.runtime_stacks,
        sites: sites(state),
        unattributed: state
            .unattributed
            .iter()
            .map(|u| Unattributed {
                run: u.run,
                pid: u.pid,
                outcome: u.outcome,
                detail: u.detail.clone(),
            })
            .collect(),
        handled_exit: state.handled_exit_text(),
        left_out: state
            .left_out
            .iter()
            .map(|(test, detail)| LeftOut {
                test: test.display(),
                detail: detail.clone(),
            })
            .collect(),
    }
}

/// One report for the walks of several state files (the shards of one walk,
/// `sites --shard K/N`): their sites together (a stack id found by more than
/// one keeps its worst outcome), their runs and times summed (the time is
/// the work of every shard, not the wall-clock time of shards run at once),
/// and why each stopped.
pub fn merge(summaries: Vec<Summary>) -> Summary {
    let mut merged = Summary {
        state: summaries
            .iter()
            .map(|s| s.state.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        ..Summary::default()
    };
    let mut reasons: Vec<String> = Vec::new();
    for s in summaries {
        if merged.command.is_empty() {
            merged.command = s.command;
        }
        merged.runs += s.runs;
        merged.elapsed_ms += s.elapsed_ms;
        merged.baseline_ms = merged.baseline_ms.or(s.baseline_ms);
        merged.last_run_ms = merged.last_run_ms.max(s.last_run_ms);
        merged.runtime_stacks += s.runtime_stacks;
        merged.unattributed.extend(s.unattributed);
        merged.left_out.extend(s.left_out);
        if merged.handled_exit.is_empty() {
            merged.handled_exit = s.handled_exit;
        }
        let reason = format!("{}: {}", s.state, s.stopped);
        reasons.push(reason);
        for site in s.sites {
            match merged.sites.iter_mut().find(|m| m.id == site.id) {
                Some(m) => m.absorb(site.seen, site.outcome, site.detail),
                None => merged.sites.push(site),
            }
        }
    }
    merged.stopped = reasons.join("; ");
    merged.sites.sort_by_key(|s| (s.outcome, s.first_run, s.id));
    merged
}

/// Why the walk in `state` stopped, from its last run, by the rule `sites`
/// stops by: a run that failed no new site and met no new runtime stack
/// (or did not end normally) leaves nothing to find.
pub fn why_stopped(state: &State) -> String {
    let Some(last) = state.runs.last() else {
        return "no run recorded yet".to_owned();
    };
    let found_new = state.live().any(|r| r.run == last.number);
    match last.how.as_deref() {
        None => format!(
            "run {} never ended (the runner was killed): run the same command again to resume",
            last.number
        ),
        Some("interrupted") => "interrupted (resume with the same command)".to_owned(),
        Some(WALKED) => "every test ran to its end with no new site".to_owned(),
        Some("done") if !found_new && last.runtime_stacks == 0 => {
            "a run found no new site".to_owned()
        }
        Some(how) if !found_new && how != "done" => format!("a run found no new site ({how})"),
        Some(_) => "not finished: the last run found something new (run the same command \
                    again to go on)"
            .to_owned(),
    }
}

/// The `how` of a per-test walk's run that walked every test to its end.
pub const WALKED: &str = "walked";

/// The shell command that fails stack `id` again: `MAYFAIL_INJECT=stack=ID
/// CMD ARGS...`, every word quoted by the library's shell quoter.
pub fn replay_line(id: u64, argv: &[OsString]) -> String {
    let value = format!("stack={}", StackId(id));
    let mut line = format!("MAYFAIL_INJECT={}", quote_word(value.as_ref()));
    if let Some((program, args)) = argv.split_first() {
        let program = quote_word(program);
        line.push(' ');
        if program.contains('=') && !program.starts_with(['\'', '$']) {
            // A bare `A=b` after an assignment would be one more assignment:
            // quoted, it is the command. Bare words hold no quote.
            let _ = write!(line, "'{program}'");
        } else {
            line.push_str(&program);
        }
        if !args.is_empty() {
            line.push(' ');
            line.push_str(&quote_command(args));
        }
    }
    line
}

/// A raw frame, `module+0xoffset`, as its module and offset (`?` is a
/// module the process could not name).
fn raw_frame(frame: &str) -> (&str, &str) {
    match frame.rsplit_once('+') {
        Some(("?", offset)) => ("an unknown module", offset),
        Some((module, offset)) => (module, offset),
        None => ("an unknown module", frame),
    }
}

/// For each site whose shown frames are another site's too: the raw
/// frames (index from 0, text) where it first differs from each of them.
fn telling_frames(sites: &[Site]) -> Vec<Vec<(usize, String)>> {
    let same = |a: &Site, b: &Site| {
        a.frames.len() == b.frames.len()
            && a.frames
                .iter()
                .zip(&b.frames)
                .all(|(x, y)| x.function == y.function && x.location == y.location)
    };
    sites
        .iter()
        .map(|site| {
            let own: Vec<&str> = site.raw_frames.split(',').collect();
            let mut telling: Vec<(usize, String)> = Vec::new();
            for other in sites.iter().filter(|o| o.id != site.id && same(site, o)) {
                let theirs: Vec<&str> = other.raw_frames.split(',').collect();
                let at = (0..own.len())
                    .find(|&i| theirs.get(i) != Some(&own[i]))
                    .unwrap_or(own.len().saturating_sub(1));
                if let Some(frame) = own.get(at)
                    && !telling.iter().any(|(i, _)| *i == at)
                {
                    telling.push((at, (*frame).to_owned()));
                }
            }
            telling.sort();
            telling.truncate(3);
            telling
        })
        .collect()
}

pub fn seconds(ms: u64) -> String {
    format!("{}.{:02}", ms / 1000, ms % 1000 / 10)
}

/// Splits `f (a.rs:1) <- g (b.rs:2)` into frames.
fn frames(place: &str) -> Vec<Frame> {
    place
        .split(" <- ")
        .map(
            |frame| match frame.strip_suffix(')').and_then(|f| f.rsplit_once(" (")) {
                Some((function, location)) => Frame {
                    function: function.to_owned(),
                    location: Some(location.to_owned()),
                },
                None => Frame {
                    function: frame.to_owned(),
                    location: None,
                },
            },
        )
        .collect()
}

/// Merges the records of `state` by stack id, worst first. A site's replay
/// runs the command of the run that first failed it.
pub fn sites(state: &State) -> Vec<Site> {
    let mut sites: Vec<Site> = Vec::new();
    for r in state.live() {
        let (outcome, detail) = r
            .fate
            .clone()
            .unwrap_or((Outcome::Unknown, "no fate recorded yet".to_owned()));
        match sites.iter_mut().find(|s| s.id == r.id) {
            Some(site) => site.absorb(1, outcome, detail),
            None => sites.push(Site {
                id: r.id,
                outcome,
                detail,
                seen: 1,
                first_run: r.run,
                what: r.what.clone(),
                thread: r.thread.clone(),
                binary: r.binary.clone(),
                frames: frames(&r.place),
                raw_frames: r.frames.clone(),
                replay: {
                    let walked = state
                        .run(r.run)
                        .or(state.runs.last())
                        .map_or(&[][..], |run| &run.argv);
                    match &r.test {
                        // Runs that test alone.
                        Some(test) => replay_line(r.id, &test.replay_command(walked)),
                        None => replay_line(r.id, walked),
                    }
                },
                test: r.test.as_ref().map(crate::state::Test::display),
            }),
        }
    }
    worst_first(&mut sites);
    sites
}

/// The report's order: worst outcome first, then by the run that found it.
fn worst_first(sites: &mut [Site]) {
    sites.sort_by_key(|s| (s.outcome, s.first_run, s.id));
}

/// The terminal table.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mayfail sites: {} sites in {} runs, {} s ({}); stopped: {}",
        s.sites.len(),
        s.runs,
        seconds(s.elapsed_ms),
        s.counts(),
        s.stopped
    );
    if let Some(cost) = s.cost() {
        let _ = writeln!(out, "  {cost}");
    }
    let _ = writeln!(
        out,
        "  {} stacks of the Rust runtime and test harness were not counted as sites",
        s.runtime_stacks
    );
    if !s.handled_exit.is_empty() {
        let _ = writeln!(
            out,
            "  exit statuses {} count as handled (--handled-exit)",
            s.handled_exit
        );
    }
    if !s.unattributed.is_empty() {
        let _ = writeln!(
            out,
            "  {} process{} of the runs ended badly with no site to blame (not all handled):",
            s.unattributed.len(),
            if s.unattributed.len() == 1 { "" } else { "es" }
        );
        for u in &s.unattributed {
            let _ = writeln!(
                out,
                "    run {}: {}, {} (pid {})",
                u.run,
                u.outcome.name(),
                u.detail,
                u.pid
            );
        }
    }
    if !s.left_out.is_empty() {
        let _ = writeln!(
            out,
            "  {} test{} fail without injection and were left out of the walk (not all handled):",
            s.left_out.len(),
            if s.left_out.len() == 1 { "" } else { "s" }
        );
        for left in &s.left_out {
            let _ = writeln!(out, "    {}: {}", left.test, left.detail);
        }
    }
    if s.sites.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "  {:<8} {:>4}  site (first frames in user code)",
        "outcome", "seen"
    );
    let pad = " ".repeat(17);
    let telling = telling_frames(&s.sites);
    for (site, telling) in s.sites.iter().zip(&telling) {
        for (i, frame) in site.frames.iter().enumerate() {
            let location = frame
                .location
                .as_deref()
                .map(|l| format!(" ({})", short_location(l)))
                .unwrap_or_default();
            if i == 0 {
                let _ = writeln!(
                    out,
                    "  {:<8} {:>4}  {}{location}",
                    site.outcome.name(),
                    site.seen,
                    frame.function
                );
            } else {
                let _ = writeln!(out, "{pad}  <- {}{location}", frame.function);
            }
        }
        for (index, frame) in telling {
            let (module, offset) = raw_frame(frame);
            let _ = writeln!(
                out,
                "{pad}  (told apart by raw frame #{}: offset {offset} in {module})",
                index + 1
            );
        }
        let _ = writeln!(
            out,
            "{pad}{}; {} in {}; stack {}",
            site.detail,
            site.what,
            site.binary,
            StackId(site.id)
        );
        if let Some(test) = &site.test {
            let _ = writeln!(out, "{pad}test: {test}");
        }
        let _ = writeln!(out, "{pad}replay: {}", site.replay);
    }
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A self-contained HTML page: no scripts, no external resources.
pub fn html(s: &Summary) -> String {
    let mut out = String::new();
    let title = format!("mayfail sites: {} sites ({})", s.sites.len(), s.counts());
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>\n\
         body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}\n\
         table {{ border-collapse: collapse; width: 100%; }}\n\
         th, td {{ border-bottom: 1px solid #ddd; padding: .4em .6em; text-align: left; vertical-align: top; }}\n\
         th {{ background: #f4f4f4; }}\n\
         code, pre {{ font: 12px/1.4 ui-monospace, monospace; }}\n\
         pre {{ margin: 0; }}\n\
         .replay {{ white-space: pre; overflow-x: auto; max-width: 40em; }}\n\
         .frames td {{ border: 0; padding: 0 .6em 0 0; font: 12px/1.4 ui-monospace, monospace; }}\n\
         .outcome {{ font-weight: bold; border-radius: 3px; padding: 0 .4em; }}\n\
         .crashed {{ background: #b00020; color: #fff; }}\n\
         .aborted {{ background: #e65100; color: #fff; }}\n\
         .hung {{ background: #6a1b9a; color: #fff; }}\n\
         .failed {{ background: #f9a825; }}\n\
         .unknown {{ background: #9e9e9e; color: #fff; }}\n\
         .handled {{ background: #2e7d32; color: #fff; }}\n\
         .loc {{ color: #555; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n",
        html_escape(&title),
        html_escape(&title)
    );
    let _ = writeln!(
        out,
        "<p>Command: <code>{}</code><br>{} runs, {} s, stopped: {}<br>State file: <code>{}</code></p>",
        html_escape(&s.command),
        s.runs,
        seconds(s.elapsed_ms),
        html_escape(&s.stopped),
        html_escape(&s.state)
    );
    if let Some(cost) = s.cost() {
        let _ = writeln!(out, "<p>{}</p>", html_escape(&cost));
    }
    let _ = writeln!(
        out,
        "<p>Each site is a distinct call stack whose allocation was failed once, in a run of \
         its own; its outcome is how that process ended. {} stacks of the Rust runtime and test \
         harness were not counted.</p>",
        s.runtime_stacks
    );
    if !s.unattributed.is_empty() {
        let _ = writeln!(
            out,
            "<p>Processes of the runs that ended badly with no site to blame (not all \
             handled):</p>\n<ul>"
        );
        for u in &s.unattributed {
            let _ = writeln!(
                out,
                "<li>run {}: <span class=\"outcome {}\">{}</span> {}</li>",
                u.run,
                u.outcome.name(),
                u.outcome.name(),
                html_escape(&u.detail)
            );
        }
        let _ = writeln!(out, "</ul>");
    }
    let _ = writeln!(
        out,
        "<table>\n<thead><tr><th>outcome</th><th>seen</th><th>site (first frames in user code)</th>\
         <th>failed allocation</th><th>replay</th></tr></thead>\n<tbody>"
    );
    for site in &s.sites {
        let mut raw = String::new();
        for (i, frame) in site
            .raw_frames
            .split(',')
            .filter(|f| !f.is_empty())
            .enumerate()
        {
            let (module, offset) = raw_frame(frame);
            let _ = write!(
                raw,
                "<tr><td>#{}</td><td>{}</td><td>{}</td></tr>",
                i + 1,
                html_escape(module),
                html_escape(offset)
            );
        }
        let mut frames = String::new();
        for (i, f) in site.frames.iter().enumerate() {
            let _ = write!(
                frames,
                "{}<code>{}</code>",
                if i == 0 { "" } else { "<br>&larr; " },
                html_escape(&f.function)
            );
            if let Some(location) = &f.location {
                let _ = write!(
                    frames,
                    " <span class=\"loc\">{}</span>",
                    html_escape(&short_location(location))
                );
            }
        }
        let _ = writeln!(
            out,
            "<tr id=\"stack-{:016x}\"><td><span class=\"outcome {}\">{}</span><br>{}</td>\
             <td>{}</td><td>{}<br>stack <code>{:016x}</code><details><summary>raw frames \
             (module, offset)</summary><table class=\"frames\">{}</table></details></td>\
             <td>{}<br>in <code>{}</code>, thread <code>{}</code>, run {}</td>\
             <td><pre class=\"replay\">{}</pre></td></tr>",
            site.id,
            site.outcome.name(),
            site.outcome.name(),
            html_escape(&site.detail),
            site.seen,
            frames,
            site.id,
            raw,
            html_escape(&site.what),
            html_escape(&site.binary),
            html_escape(&site.thread),
            site.first_run,
            html_escape(&site.replay)
        );
    }
    let _ = writeln!(out, "</tbody>\n</table>\n</body>\n</html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_locations_leave_out_the_registry_and_toolchain_hashes() {
        assert_eq!(
            short_location(
                "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/fallible_collections-0.5.2/src/vec.rs:261"
            ),
            "fallible_collections-0.5.2/src/vec.rs:261"
        );
        assert_eq!(
            short_location("/rustc/0123abcd/library/alloc/src/string.rs:10"),
            "library/alloc/src/string.rs:10"
        );
        let here = std::env::current_dir().unwrap().join("src/lib.rs:3");
        assert_eq!(short_location(here.to_str().unwrap()), "src/lib.rs:3");
    }

    #[test]
    fn places_split_into_functions_and_locations() {
        let f = frames("a::f (src/a.rs:1) <- <X as (Y)>::g (b.rs:2) <- h");
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].function, "<X as (Y)>::g");
        assert_eq!(f[1].location.as_deref(), Some("b.rs:2"));
        assert_eq!(
            (f[2].function.as_str(), f[2].location.as_deref()),
            ("h", None)
        );
    }

    #[test]
    fn a_replay_line_quotes_every_word_and_keeps_the_command_a_command() {
        let argv: Vec<OsString> = ["A=b", "x y", ""].iter().map(Into::into).collect();
        assert_eq!(
            replay_line(0xab, &argv),
            "MAYFAIL_INJECT=stack=00000000000000ab 'A=b' 'x y' ''"
        );
        assert_eq!(
            replay_line(0xab, &["cargo".into()]),
            "MAYFAIL_INJECT=stack=00000000000000ab cargo"
        );
    }

    #[test]
    fn html_escapes_what_it_must() {
        assert_eq!(
            html_escape("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }
}
