//! The JSON report of `mayfail sites` and `mayfail report`: the contract for
//! machines. Its schema is [`SCHEMA`] (printed by `mayfail report --help`);
//! a change that could break a reader raises [`SCHEMA_VERSION`].

use serde::Serialize;

use crate::findings::Class;
use crate::model::Scope;
use crate::model::{Frame, LeftOut, Site, Summary, Unattributed};
use crate::state::{Outcome, StackId};

/// The `schema_version` of the reports written now.
pub(crate) const SCHEMA_VERSION: u32 = 2;

/// The schema, as `report --help` prints it.
pub(crate) const SCHEMA: &str = "\
JSON report (schema_version 2), one object:
  schema_version  2; raised by any change that could break a reader
                  (2: classes, bugs, scope; a site's class, blamed, chain,
                  fallible, panic and baselined)
  command         the command walked, quoted for a shell
  state           the state file's absolute path
  runs            runs recorded in the state file (baseline excluded)
  stopped         why the walk stopped, in words, read from the state file
  elapsed_ms      the time of every run recorded in the state file, summed
                  (a resumed walk's earlier runs included, the baseline not)
  baseline_ms     time of the faster baseline run without injection, or null
  last_run_ms     time of the last run that ended normally, or null
  runtime_stacks  stacks of the Rust runtime, the test harness or libc that
                  were met and not counted as sites
  counts          {crashed, aborted, hung, failed, unknown, handled}: sites
                  per outcome
  classes         {crashed, fallible-api-aborted, error-path-aborted, hung,
                  leaked, unknown, infallible, failed, handled}: sites per
                  class; the first six are bugs
  bugs            bug sites not in --baseline: the exit status is 1 when
                  this is not 0
  scope           crate, workspace or all: what `blamed` is (--scope)
  sites           one object per site, worst outcome first:
    stack         the stack id, 16 hex digits (replay: --inject stack=ID)
    outcome       crashed, aborted, hung, failed, unknown or handled
    class         what the site is: crashed, fallible-api-aborted (aborted
                  below a try_* function of the code, or one returning a
                  Result with an allocation error, the test's own frame
                  excluded), error-path-aborted, hung, leaked,
                  unknown, infallible (aborted at an allocation std makes
                  infallibly, or one formatting a panic's message), failed
                  (a test failed) or handled
    fallible      the fallible function an abort is blamed on, or null
    panic         true when the allocation formats or boxes a panic's
                  message: the function that panicked did not allocate
    baselined     true when a bug site is in --baseline
    detail        how the process ended: `SIGABRT`, `exit 101`...
    seen          processes that failed this site (more with --jobs)
    first_run     the run that first failed it
    failed        the allocation that was failed: `alloc of 64 bytes (align 8)`
    binary        the executable that failed it
    thread        the name of the thread that failed it
    frames        [{function, location}]: its first frames in user code,
                  innermost first; location is `file:line` or null
    blamed        [{function, location}]: the first frames from the one the
                  site is blamed on under --scope
    chain         [{function, location}]: every frame outside the
                  allocation machinery up to the test (empty when the
                  process did not write them)
    raw_frames    the raw `module+offset` return addresses, comma-separated
                  (`?` for a module the process could not name)
    replay        a shell command that fails this site again, every word
                  quoted for a POSIX shell (bytes that are not UTF-8 in
                  bash's $'\\xNN' form); a per-test walk's runs its test alone
    test          the test whose process failed it (`package lib name`,
                  `package test:target name`), or null (a whole-command run)
    after         the stacks its process failed first, in order, when it was
                  found on their error path (--depth); empty otherwise
    error_path_of the first frame of the last of those: the failure whose
                  error path it is on, or null
  unattributed    one object per process a run started that ended badly with
                  no site to blame (a timeout before any site, a non-zero
                  status when no site failed): {run, pid, outcome, detail}; the
                  walk is not all handled while any is listed
  handled_exit    exit statuses counted as handled besides 0 (--handled-exit),
                  e.g. [1, 7]; empty for none
  left_out        one object per test that fails or times out without
                  injection, left out of a per-test walk: {test, detail}; the
                  walk is not all handled while any is listed
  no_fork         why processes asked to fork at their sites (the runs
                  engine's default) could not, and failed one site each:
                  [{reason, processes}] (`2 threads`, `a pipe or a socket is
                  open (descriptor 0)`); empty when every process forked";

/// The whole report.
#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    command: &'a str,
    state: &'a str,
    runs: u64,
    stopped: &'a str,
    elapsed_ms: u64,
    baseline_ms: Option<u64>,
    last_run_ms: Option<u64>,
    runtime_stacks: usize,
    counts: Counts,
    classes: std::collections::BTreeMap<&'static str, usize>,
    bugs: usize,
    scope: &'static str,
    sites: Vec<SiteEntry<'a>>,
    unattributed: &'a [Unattributed],
    handled_exit: Vec<u8>,
    left_out: &'a [LeftOut],
    no_fork: Vec<NoFork<'a>>,
}

/// Why processes could not fork at their sites, and how many.
#[derive(Serialize)]
struct NoFork<'a> {
    reason: &'a str,
    processes: usize,
}

/// Sites per outcome, worst first.
#[derive(Serialize)]
struct Counts {
    crashed: usize,
    aborted: usize,
    hung: usize,
    failed: usize,
    unknown: usize,
    handled: usize,
}

/// One site.
#[derive(Serialize)]
struct SiteEntry<'a> {
    stack: String,
    #[serde(serialize_with = "outcome_name")]
    outcome: Outcome,
    class: &'static str,
    fallible: Option<&'a str>,
    panic: bool,
    baselined: bool,
    detail: &'a str,
    seen: usize,
    first_run: u64,
    failed: &'a str,
    binary: &'a str,
    thread: &'a str,
    frames: &'a [Frame],
    blamed: &'a [Frame],
    chain: &'a [Frame],
    raw_frames: &'a str,
    replay: &'a str,
    test: Option<&'a str>,
    after: Vec<String>,
    error_path_of: Option<&'a str>,
}

impl<'a> SiteEntry<'a> {
    fn new(site: &'a Site, summary: &Summary) -> Self {
        let class = site.class();
        SiteEntry {
            stack: StackId(site.id).to_string(),
            outcome: site.outcome,
            class: class.name(),
            fallible: site.broken_promise().map(|f| f.function.as_str()),
            panic: site.panic,
            baselined: class.is_bug() && !summary.gates(site),
            detail: &site.detail,
            seen: site.seen,
            first_run: site.first_run,
            failed: &site.what,
            binary: &site.binary,
            thread: &site.thread,
            frames: &site.frames,
            blamed: site.shown(summary.view.scope),
            chain: &site.chain,
            raw_frames: &site.raw_frames,
            replay: &site.replay,
            test: site.test.as_deref(),
            after: site
                .after
                .iter()
                .map(|&id| StackId(id).to_string())
                .collect(),
            error_path_of: site.error_path_of.as_deref(),
        }
    }
}

/// The JSON report of `summary`, pretty-printed, with a final newline.
pub(crate) fn render(summary: &Summary) -> String {
    let report = Report {
        schema_version: SCHEMA_VERSION,
        command: &summary.command,
        state: &summary.state,
        runs: summary.runs,
        stopped: &summary.stopped,
        elapsed_ms: summary.elapsed_ms,
        baseline_ms: summary.baseline_ms,
        last_run_ms: summary.last_run_ms,
        runtime_stacks: summary.runtime_stacks,
        counts: Counts {
            crashed: summary.count(Outcome::Crashed),
            aborted: summary.count(Outcome::Aborted),
            hung: summary.count(Outcome::Hung),
            failed: summary.count(Outcome::Failed),
            unknown: summary.count(Outcome::Unknown),
            handled: summary.count(Outcome::Handled),
        },
        classes: Class::ALL
            .iter()
            .map(|&c| (c.name(), summary.class_count(c)))
            .collect(),
        bugs: summary.gating(),
        scope: match summary.view.scope {
            Scope::Crate => "crate",
            Scope::Workspace => "workspace",
            Scope::All => "all",
        },
        sites: summary
            .sites
            .iter()
            .map(|site| SiteEntry::new(site, summary))
            .collect(),
        unattributed: &summary.unattributed,
        handled_exit: mayfail::state::parse_exit_codes(&summary.handled_exit).unwrap_or_default(),
        left_out: &summary.left_out,
        no_fork: summary
            .no_fork
            .iter()
            .map(|(reason, processes)| NoFork {
                reason,
                processes: *processes,
            })
            .collect(),
    };
    let mut text = serde_json::to_string_pretty(&report)
        .expect("a report of strings and numbers always serializes");
    text.push('\n');
    text
}

/// An outcome as JSON: its name.
fn outcome_name<S: serde::Serializer>(outcome: &Outcome, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(outcome.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_text_names_every_field_the_report_has() {
        let summary = Summary {
            command: "cargo test".to_owned(),
            state: "/s.state".to_owned(),
            runs: 2,
            stopped: "a run found no new site".to_owned(),
            elapsed_ms: 10,
            baseline_ms: None,
            last_run_ms: Some(4),
            runtime_stacks: 3,
            sites: vec![Site {
                id: 0xab,
                outcome: Outcome::Aborted,
                detail: "SIGABRT".to_owned(),
                seen: 1,
                first_run: 1,
                what: "alloc of 8 bytes (align 8)".to_owned(),
                thread: "main".to_owned(),
                binary: "t".to_owned(),
                frames: vec![Frame {
                    function: "f \"quoted\"".to_owned(),
                    location: None,
                }],
                raw_frames: "t+0x1".to_owned(),
                replay: "MAYFAIL_INJECT='stack=00000000000000ab' cargo test".to_owned(),
                panic: false,
                chain: Vec::new(),
                test: Some("p lib tests::t".to_owned()),
                after: Vec::new(),
                error_path_of: None,
                promising: Vec::new(),
                panicked_at: None,
            }],
            unattributed: vec![Unattributed {
                run: 2,
                pid: 9,
                outcome: Outcome::Hung,
                detail: "killed after 1 s".to_owned(),
            }],
            handled_exit: "1,7".to_owned(),
            view: Default::default(),
            left_out: vec![LeftOut {
                test: "p lib tests::u".to_owned(),
                detail: "exit 101".to_owned(),
            }],
            no_fork: vec![("2 threads".to_owned(), 3)],
        };
        let value: serde_json::Value = serde_json::from_str(&render(&summary)).unwrap();
        assert_eq!(value["schema_version"], 2);
        assert_eq!(value["classes"]["infallible"], 1);
        assert_eq!(value["bugs"], 0);
        assert_eq!(value["counts"]["aborted"], 1);
        let site = &value["sites"][0];
        assert_eq!(site["stack"], "00000000000000ab");
        assert_eq!(site["outcome"], "aborted");
        assert_eq!(site["class"], "infallible");
        assert_eq!(site["frames"][0]["function"], "f \"quoted\"");
        assert!(site["frames"][0]["location"].is_null());
        assert_eq!(value["unattributed"][0]["outcome"], "hung");
        assert_eq!(value["handled_exit"], serde_json::json!([1, 7]));
        assert_eq!(site["test"], "p lib tests::t");
        assert_eq!(value["left_out"][0]["detail"], "exit 101");
        assert_eq!(value["no_fork"][0]["processes"], 3);
        let fields = value.as_object().unwrap().keys();
        let site_fields = site.as_object().unwrap().keys();
        let left_fields = value["left_out"][0].as_object().unwrap().keys();
        for field in fields.chain(site_fields).chain(left_fields) {
            assert!(
                SCHEMA.contains(&format!("  {field} ")),
                "{field} is not described in the schema"
            );
        }
    }
}
