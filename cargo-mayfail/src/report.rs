//! The report of `mayfail sites`: sites grouped by stack id, worst first, as
//! a terminal table and a self-contained HTML page (the JSON file for
//! machines is [`crate::json`]).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use mayfail::state::{quote_command, quote_word};

use crate::findings::Class;
use crate::model::{Frame, LeftOut, Show, Site, Summary, Unattributed};
use crate::state::{Outcome, StackId, State};

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

/// Each distinct text once, with how many times it occurs, most frequent
/// first.
pub(crate) fn counted(texts: &[String]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for text in texts {
        match counts.iter_mut().find(|(t, _)| t == text) {
            Some((_, n)) => *n += 1,
            None => counts.push((text.clone(), 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts
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
        no_fork: counted(&state.no_fork),
        view: Default::default(),
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
        for (reason, n) in s.no_fork {
            match merged.no_fork.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, count)) => *count += n,
                None => merged.no_fork.push((reason, n)),
            }
        }
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

/// How a walk stopped, from its last run, by the rule `sites` stops by: a
/// run that failed no new site and met no new runtime stack (or did not end
/// normally) leaves nothing to find.
enum Stop<'a> {
    NoRun,
    /// The runner was killed during this run.
    NeverEnded(u64),
    Interrupted,
    /// The per-test engine ran every test to its end.
    Walked,
    /// A run found nothing new.
    NothingNew,
    /// A run that did not end normally (`timeout`...) found nothing new.
    NothingNewAfter(&'a str),
    /// The last run found something new: stopped by `--max-runs`.
    NotFinished,
}

fn stop_of(state: &State) -> Stop<'_> {
    let Some(last) = state.runs.last() else {
        return Stop::NoRun;
    };
    let found_new = state.live().any(|r| r.run == last.number);
    match last.how.as_deref() {
        None => Stop::NeverEnded(last.number),
        Some("interrupted") => Stop::Interrupted,
        Some(WALKED) => Stop::Walked,
        Some("done") if !found_new && last.runtime_stacks == 0 => Stop::NothingNew,
        Some(how) if !found_new && how != "done" => Stop::NothingNewAfter(how),
        Some(_) => Stop::NotFinished,
    }
}

/// Why the walk in `state` stopped (see [`Stop`]).
pub fn why_stopped(state: &State) -> String {
    match stop_of(state) {
        Stop::NoRun => "no run recorded yet".to_owned(),
        Stop::NeverEnded(run) => format!(
            "run {run} never ended (the runner was killed): run the same command again to resume"
        ),
        Stop::Interrupted => "interrupted (resume with the same command)".to_owned(),
        Stop::Walked => "every test ran to its end with no new site".to_owned(),
        Stop::NothingNew => "a run found no new site".to_owned(),
        Stop::NothingNewAfter(how) => format!("a run found no new site ({how})"),
        Stop::NotFinished => "not finished: the last run found something new (run the same \
                              command again to go on)"
            .to_owned(),
    }
}

/// Whether the walk in `state` stopped because nothing was left to find: a
/// walk stopped by `--max-runs` (or killed, or interrupted) has not looked
/// everywhere, and never counts as all handled.
pub fn finished(state: &State) -> bool {
    matches!(
        stop_of(state),
        Stop::Walked | Stop::NothingNew | Stop::NothingNewAfter(_)
    )
}

/// The `how` of a per-test walk's run that walked every test to its end.
pub const WALKED: &str = "walked";

/// How a printed command names this runner: by its name where `PATH`
/// finds this very program under it, else by its path.
#[derive(Clone, Debug)]
pub struct Runner {
    /// `mayfail`, or the quoted path of this program.
    pub plain: String,
    /// `cargo mayfail` when cargo finds this program's `cargo-mayfail` in
    /// `PATH`, else `plain`.
    pub cargo: String,
}

impl Runner {
    /// This program's names, looked up once.
    pub fn this() -> &'static Runner {
        static RUNNER: OnceLock<Runner> = OnceLock::new();
        RUNNER.get_or_init(|| {
            let exe = std::env::current_exe().ok();
            let dir = exe.as_deref().and_then(Path::parent);
            let same = |name: &str, file: &Path| {
                crate::process::program_path(name.as_ref())
                    .and_then(|found| found.canonicalize().ok())
                    .zip(file.canonicalize().ok())
                    .is_some_and(|(found, file)| found == file)
            };
            let mayfail = dir.map(|dir| dir.join("mayfail")).filter(|f| f.is_file());
            let plain = match mayfail.as_deref().or(exe.as_deref()) {
                Some(file) if same("mayfail", file) => "mayfail".to_owned(),
                Some(file) => quote_word(file.as_os_str()),
                None => "mayfail".to_owned(),
            };
            let cargo_mayfail = dir.map(|dir| dir.join("cargo-mayfail"));
            let cargo = match cargo_mayfail {
                Some(file) if same("cargo-mayfail", &file) => "cargo mayfail".to_owned(),
                _ => plain.clone(),
            };
            Runner { plain, cargo }
        })
    }
}

/// The shell command that fails stack `id` again, through the runner so
/// that the command runs as in the walk (a program that does not declare
/// `MayFail` under the preload library, a cargo command's test binaries
/// through the target runner): `cargo mayfail test --inject stack=ID --
/// ARGS` for a walk of `cargo test ARGS`, else `mayfail run --inject
/// stack=ID -- CMD ARGS`; every word quoted by the library's shell quoter.
/// A site found on an error path fails the sites of `after` first, in
/// order (`stack=ID,sites-after=A+B`).
pub fn replay_line(id: u64, after: &[u64], argv: &[OsString], runner: &Runner) -> String {
    let mut spec = format!("stack={}", StackId(id));
    for (i, &on) in after.iter().enumerate() {
        spec.push_str(if i == 0 { ",sites-after=" } else { "+" });
        spec.push_str(&StackId(on).to_string());
    }
    let spec = quote_word(spec.as_ref());
    let cargo_test = argv.len() >= 2
        && Path::new(&argv[0])
            .file_name()
            .is_some_and(|name| name == "cargo")
        && argv[1] == "test";
    if cargo_test {
        let mut line = format!("{} test --inject {spec} --", runner.cargo);
        if argv.len() > 2 {
            line.push(' ');
            line.push_str(&quote_command(&argv[2..]));
        }
        line
    } else {
        format!(
            "{} run --inject {spec} -- {}",
            runner.plain,
            quote_command(argv)
        )
    }
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
    if place.is_empty() {
        return vec![Frame {
            function: String::new(),
            location: None,
        }];
    }
    crate::findings::frames_of(place)
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
                panic: r.panic,
                chain: crate::findings::frames_of(&r.chain),
                replay: {
                    let walked = state
                        .run(r.run)
                        .or(state.runs.last())
                        .map_or(&[][..], |run| &run.argv);
                    match &r.test {
                        // Runs that test alone.
                        Some(test) => replay_line(
                            r.id,
                            &r.after,
                            &test.replay_command(walked),
                            Runner::this(),
                        ),
                        None => replay_line(r.id, &r.after, walked, Runner::this()),
                    }
                },
                test: r.test.as_ref().map(crate::state::Test::display),
                after: r.after.clone(),
                error_path_of: None,
                promising: crate::findings::frames_of(&r.chain)
                    .into_iter()
                    .map(|f| f.function)
                    .filter(|f| state.fallible.contains(f))
                    .collect(),
                panicked_at: r.panicked_at.clone(),
            }),
        }
    }
    // Each error path's site: named by the failure that led there.
    let firsts: Vec<(u64, String)> = sites
        .iter()
        .map(|s| {
            let first = &s.frames[0];
            let shown = match &first.location {
                Some(at) => format!("{} ({})", first.function, short_location(at)),
                None => first.function.clone(),
            };
            (s.id, shown)
        })
        .collect();
    for site in &mut sites {
        if let Some(last) = site.after.last() {
            site.error_path_of = firsts
                .iter()
                .find(|(id, _)| id == last)
                .map(|(_, first)| first.clone());
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
    write_table_head(&mut out, s);
    if s.sites.is_empty() {
        return out;
    }
    let baselined = s
        .sites
        .iter()
        .filter(|site| site.class().is_bug() && !s.gates(site))
        .count();
    let _ = writeln!(
        out,
        "  bugs: {} not in the baseline{}",
        s.gating(),
        if baselined > 0 {
            format!(", {baselined} in it")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  {:<20} {:>4}  site (first frames in user code)",
        "class", "seen"
    );
    let pad = " ".repeat(29);
    let raw_telling = telling_frames(&s.sites);
    let groups = s.groups();
    let mut collapsed: Vec<(Class, Vec<&[usize]>)> = Vec::new();
    for group in &groups {
        let class = s.sites[group[0]].class();
        if s.view.show == Show::Bugs && !class.is_bug() {
            match collapsed.last_mut() {
                Some((c, groups)) if *c == class => groups.push(group),
                _ => collapsed.push((class, vec![group])),
            }
            continue;
        }
        for &index in group {
            write_table_site(&mut out, s, group, index, &raw_telling[index], &pad);
        }
    }
    for (class, groups) in collapsed {
        write_table_collapsed(&mut out, s, class, &groups);
    }
    out
}

/// The table's first lines: the walk's counts, time, runtime stacks, and
/// the processes and tests no site explains.
fn write_table_head(out: &mut String, s: &Summary) {
    let _ = writeln!(
        out,
        "mayfail sites: {} sites in {} runs, {} s ({}); stopped: {}",
        s.sites.len(),
        s.runs,
        seconds(s.elapsed_ms),
        s.class_counts(),
        s.stopped
    );
    if let Some(cost) = s.cost() {
        let _ = writeln!(out, "  {cost}");
    }
    let _ = writeln!(
        out,
        "  {} stacks of the runtime (the Rust runtime, a test harness, the C runtime's start-up, \
         exit and loader) were not counted as sites",
        s.runtime_stacks
    );
    if !s.no_fork.is_empty() {
        let reasons: Vec<String> = s
            .no_fork
            .iter()
            .map(|(reason, n)| format!("{reason} ({n})"))
            .collect();
        let _ = writeln!(
            out,
            "  processes that could not fork at their sites, each failing one site itself: {}",
            reasons.join(", ")
        );
    }
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
}

/// The rows of one site listed on its own: its frames, what tells it apart
/// from the others of its group, its detail, test and replay line.
fn write_table_site(
    out: &mut String,
    s: &Summary,
    group: &[usize],
    index: usize,
    raw_telling: &[(usize, String)],
    pad: &str,
) {
    let site = &s.sites[index];
    write_site_rows(out, s, site, pad);
    match crate::findings::telling_frame(s, group, index) {
        Some(frame) => {
            let _ = writeln!(out, "{pad}(told apart by: {})", shown_frame(frame));
        }
        None => {
            for (at, frame) in raw_telling {
                let (module, offset) = raw_frame(frame);
                let _ = writeln!(
                    out,
                    "{pad}(told apart by raw frame #{}: offset {offset} in {module})",
                    at + 1
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "{pad}{}; {} in {}; stack {}",
        site.detail,
        site.what,
        site.binary,
        StackId(site.id)
    );
    if let Some(of) = &site.error_path_of {
        let _ = writeln!(out, "{pad}on the error path of: {of}");
    }
    if let Some(test) = &site.test {
        let _ = writeln!(out, "{pad}test: {test}");
    }
    let _ = writeln!(out, "{pad}replay: {}", site.replay);
}

/// A class shown as a count (`--show bugs`): its sites and places, and the
/// top lines of its most frequent places.
fn write_table_collapsed(out: &mut String, s: &Summary, class: Class, groups: &[&[usize]]) {
    let count: usize = groups.iter().map(|g| g.len()).sum();
    let _ = writeln!(
        out,
        "  {}: {count} site{} in {} place{} (--show all lists them)",
        class.name(),
        if count == 1 { "" } else { "s" },
        groups.len(),
        if groups.len() == 1 { "" } else { "s" },
    );
    if class == Class::Handled {
        return;
    }
    let mut tops: Vec<(usize, String)> = groups
        .iter()
        .map(|g| {
            let site = &s.sites[g[0]];
            let top = site
                .shown(s.view.scope)
                .first()
                .map(shown_frame)
                .unwrap_or_default();
            (g.len(), panic_of(site, top))
        })
        .collect();
    tops.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (n, top) in tops.iter().take(TOP_LINES) {
        let _ = writeln!(out, "  {:<20} {n:>4}  {top}", "");
    }
    if tops.len() > TOP_LINES {
        let _ = writeln!(
            out,
            "  {:<20}       ... {} more",
            "",
            tops.len() - TOP_LINES
        );
    }
}

/// A blamed frame as a report names it: for an allocation that serves a
/// panic, the panic's message, not the function (which did not allocate).
fn panic_of(site: &Site, top: String) -> String {
    if site.panic {
        format!("the panic message of {top}")
    } else {
        top
    }
}

/// Places listed under a collapsed class.
const TOP_LINES: usize = 5;

/// `function (file:line)`, the file shortened.
fn shown_frame(frame: &Frame) -> String {
    match &frame.location {
        Some(l) => format!("{} ({})", frame.function, short_location(l)),
        None => frame.function.clone(),
    }
}

/// A site's class, seen and shown frames, and what it is blamed on.
fn write_site_rows(out: &mut String, s: &Summary, site: &Site, pad: &str) {
    let class = site.class();
    let (_, inside) = site.blamed(s.view.scope);
    for (i, frame) in site.shown(s.view.scope).iter().enumerate() {
        if i == 0 {
            let _ = writeln!(
                out,
                "  {:<20} {:>4}  {}",
                class.name(),
                site.seen,
                panic_of(site, shown_frame(frame))
            );
        } else {
            let _ = writeln!(out, "{pad}<- {}", shown_frame(frame));
        }
    }
    if let Some(fallible) = site.broken_promise() {
        let _ = writeln!(out, "{pad}fallible API: {}", fallible.function);
    }
    if site.panic {
        let _ = writeln!(
            out,
            "{pad}(the allocation formats a panic's message: the function that panicked does not allocate)"
        );
    }
    if !inside {
        let _ = writeln!(out, "{pad}(wholly outside --scope: in dependencies)");
    }
    if class.is_bug() && !s.gates(site) {
        let _ = writeln!(out, "{pad}(in the baseline)");
    }
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

/// A self-contained HTML page: no external resources; one small inline
/// script filters the rows by class, outcome and text. Bugs come first;
/// with `--show bugs` the other classes are one row per group (class and
/// blamed frame), which bounds the page's size by the places, not the
/// sites.
pub fn html(s: &Summary) -> String {
    let mut out = String::new();
    html_head(&mut out, s);
    html_filters(&mut out, s);
    let _ = writeln!(
        out,
        "<table>\n<thead><tr><th>class</th><th>seen</th><th>site (first frames in user code)</th>\
         <th>failed allocation</th><th>replay</th></tr></thead>\n<tbody>"
    );
    for group in s.groups() {
        let first = &s.sites[group[0]];
        let class = first.class();
        if s.view.show == Show::Bugs && !class.is_bug() {
            html_collapsed_row(&mut out, s, &group);
            continue;
        }
        for &index in &group {
            html_site_row(&mut out, s, &group, index);
        }
    }
    html_foot(&mut out);
    out
}

/// The page's head, style, title and the walk's summary.
fn html_head(out: &mut String, s: &Summary) {
    let title = format!(
        "mayfail sites: {} sites ({})",
        s.sites.len(),
        s.class_counts()
    );
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
         its own; its outcome is how that process ended. {} stacks of the runtime (the Rust \
         runtime, a test harness, the C runtime's start-up, exit and loader) were not counted.</p>",
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
}

/// The line of bug counts and the filters by class, outcome and text.
fn html_filters(out: &mut String, s: &Summary) {
    let mut classes = String::new();
    for class in Class::ALL {
        let n = s.class_count(class);
        if n > 0 {
            let _ = write!(
                classes,
                "<option value=\"{0}\">{0} ({n})</option>",
                class.name()
            );
        }
    }
    let mut outcomes = String::new();
    for outcome in Outcome::ALL {
        let n = s.count(outcome);
        if n > 0 {
            let _ = write!(
                outcomes,
                "<option value=\"{0}\">{0} ({n})</option>",
                outcome.name()
            );
        }
    }
    let _ = writeln!(
        out,
        "<p>{} bug site(s) not in the baseline. Filter: <select id=\"class\"><option value=\"\">\
         every class</option>{classes}</select> <select id=\"outcome\"><option value=\"\">\
         every outcome</option>{outcomes}</select> <input id=\"q\" type=\"search\" \
         placeholder=\"search functions, files, stacks\"></p>",
        s.gating()
    );
}

/// One row for a group of a class shown as a count (`--show bugs`).
fn html_collapsed_row(out: &mut String, s: &Summary, group: &[usize]) {
    let first = &s.sites[group[0]];
    let class = first.class();
    let seen: usize = group.iter().map(|&i| s.sites[i].seen).sum();
    let top = first
        .shown(s.view.scope)
        .first()
        .map(shown_frame)
        .unwrap_or_default();
    let top = panic_of(first, top);
    let _ = writeln!(
        out,
        "<tr class=\"site\" data-class=\"{0}\" data-outcome=\"{1}\"><td><span \
         class=\"outcome {1}\">{0}</span></td><td>{seen}</td><td><code>{2}</code><br>{3} \
         site{4} here (--show all lists them)</td><td></td><td></td></tr>",
        class.name(),
        first.outcome.name(),
        html_escape(&top),
        group.len(),
        if group.len() == 1 { "" } else { "s" },
    );
}

/// The table's end and the filters' script.
fn html_foot(out: &mut String) {
    let _ = writeln!(
        out,
        "</tbody>\n</table>\n<script>\n\
         (function () {{\n\
         var c = document.getElementById('class'), o = document.getElementById('outcome'),\n\
             q = document.getElementById('q');\n\
         function apply() {{\n\
           var rows = document.querySelectorAll('tr.site'), t = q.value.toLowerCase();\n\
           for (var i = 0; i < rows.length; i++) {{\n\
             var r = rows[i];\n\
             var ok = (!c.value || r.dataset.class === c.value) &&\n\
                      (!o.value || r.dataset.outcome === o.value) &&\n\
                      (!t || r.textContent.toLowerCase().indexOf(t) >= 0);\n\
             r.style.display = ok ? '' : 'none';\n\
           }}\n\
         }}\n\
         c.onchange = o.onchange = apply; q.oninput = apply;\n\
         }})();\n\
         </script>\n</body>\n</html>"
    );
}

/// Raw frames listed per site in the HTML page.
const HTML_RAW_FRAMES: usize = 16;

/// One site's row of the HTML page.
fn html_site_row(out: &mut String, s: &Summary, group: &[usize], index: usize) {
    let site = &s.sites[index];
    let class = site.class();
    let mut raw = String::new();
    for (i, frame) in site
        .raw_frames
        .split(',')
        .filter(|f| !f.is_empty())
        .take(HTML_RAW_FRAMES)
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
    for (i, f) in site.shown(s.view.scope).iter().enumerate() {
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
    if let Some(frame) = crate::findings::telling_frame(s, group, index) {
        let _ = write!(
            frames,
            "<br>told apart by <code>{}</code>",
            html_escape(&shown_frame(frame))
        );
    }
    if let Some(fallible) = site.broken_promise() {
        let _ = write!(
            frames,
            "<br>fallible API: <code>{}</code>",
            html_escape(&fallible.function)
        );
    }
    if let Some(of) = &site.error_path_of {
        let _ = write!(
            frames,
            "<br>on the error path of <code>{}</code>",
            html_escape(of)
        );
    }
    if class.is_bug() && !s.gates(site) {
        frames.push_str("<br>(in the baseline)");
    }
    let _ = writeln!(
        out,
        "<tr class=\"site\" id=\"stack-{:016x}\" data-class=\"{}\" data-outcome=\"{}\"><td>\
         <span class=\"outcome {}\">{}</span><br>{}: {}</td>\
         <td>{}</td><td>{}<br>stack <code>{:016x}</code><details><summary>raw frames \
         (module, offset)</summary><table class=\"frames\">{}</table></details></td>\
         <td>{}<br>in <code>{}</code>, thread <code>{}</code>, run {}</td>\
         <td><pre class=\"replay\">{}</pre></td></tr>",
        site.id,
        class.name(),
        site.outcome.name(),
        site.outcome.name(),
        class.name(),
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
    fn a_replay_line_runs_the_command_through_the_runner_every_word_quoted() {
        let runner = Runner {
            plain: "'/opt/my tools/mayfail'".to_owned(),
            cargo: "cargo mayfail".to_owned(),
        };
        let argv: Vec<OsString> = ["A=b", "x y", ""].iter().map(Into::into).collect();
        assert_eq!(
            replay_line(0xab, &[], &argv, &runner),
            "'/opt/my tools/mayfail' run --inject stack=00000000000000ab -- A=b 'x y' ''"
        );
        let argv: Vec<OsString> = ["cargo", "test", "--offline", "--", "--test-threads=1"]
            .iter()
            .map(Into::into)
            .collect();
        assert_eq!(
            replay_line(0xab, &[], &argv, &runner),
            "cargo mayfail test --inject stack=00000000000000ab -- --offline -- --test-threads=1"
        );
        assert_eq!(
            replay_line(
                0xab,
                &[],
                &["/usr/bin/cargo".into(), "test".into()],
                &runner
            ),
            "cargo mayfail test --inject stack=00000000000000ab --"
        );
        assert_eq!(
            replay_line(0xab, &[], &["cargo".into(), "run".into()], &runner),
            "'/opt/my tools/mayfail' run --inject stack=00000000000000ab -- cargo run"
        );
    }

    fn site(id: u64, outcome: Outcome, place: &str) -> Site {
        Site {
            id,
            outcome,
            detail: "SIGABRT".to_owned(),
            seen: 1,
            first_run: id,
            what: "alloc of 8 bytes (align 8)".to_owned(),
            thread: "main".to_owned(),
            binary: "prog".to_owned(),
            frames: frames(place),
            raw_frames: format!("prog+{id:#x}"),
            replay: format!("mayfail run --inject stack={id:016x} -- prog"),
            panic: false,
            chain: frames(place),
            test: None,
            after: Vec::new(),
            error_path_of: None,
            promising: Vec::new(),
            panicked_at: None,
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "a page of 2,000 sites takes minutes under Miri")]
    fn the_html_page_lists_bugs_first_filters_them_and_stays_small_for_many_aborts() {
        let mut summary = Summary::default();
        for id in 1..=2000u64 {
            let place = format!("prog::push{} (src/a.rs:{})", id % 5, id % 5);
            summary.sites.push(site(id, Outcome::Aborted, &place));
        }
        summary
            .sites
            .push(site(9999, Outcome::Crashed, "prog::write (src/b.rs:7)"));
        let page = html(&summary);
        assert!(page.len() < 40_000, "{} bytes", page.len());
        for control in [
            "<select id=\"class\">",
            "<select id=\"outcome\">",
            "<input id=\"q\"",
        ] {
            assert!(page.contains(control), "{control}");
        }
        assert!(!page.contains(" src=") && !page.contains("http"));
        let crashed = page
            .find("id=\"stack-000000000000270f\"")
            .expect("the bug's row");
        let collapsed = page.find("400 sites here").expect("a collapsed group");
        assert!(crashed < collapsed, "bugs first");
        // The table: the bug row by row, the aborts as counts.
        let text = table(&summary);
        assert!(
            text.contains("infallible: 2000 sites in 5 places"),
            "{text}"
        );
        assert!(text.contains("stack 000000000000270f"), "{text}");
        assert!(!text.contains("stack 0000000000000001"), "{text}");

        summary.view.show = Show::All;
        let page = html(&summary);
        assert_eq!(page.matches("<tr class=\"site\" id=\"stack-").count(), 2001);
        // Rows of one group are told apart: here by their raw frame.
        assert!(table(&summary).contains("told apart by raw frame #1"));
    }

    #[test]
    fn html_escapes_what_it_must() {
        assert_eq!(
            html_escape("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }
}
