//! What a walk's sites mean: each site's class (a bug, or the language's
//! design), the frame it is blamed on (`--scope`), which rows a report
//! lists (`--show`), the baseline of known sites (`--baseline`,
//! `--write-baseline`), the SARIF file (`--sarif`) and the exit status that
//! follows from them. The options are one set, shared by `sites` and
//! `report`.
//!
//! A class comes from the site's outcome and the facts its process wrote
//! (its call chain up to the test, and whether the allocation served a
//! panic), never from the runner guessing at addresses.

pub(crate) mod baseline;
pub(crate) mod sarif;

use std::path::PathBuf;

use clap::Args;

use crate::failure::Failure;
use crate::model::{Frame, Scope, Show, Site, Summary, View};
use crate::state::Outcome;
use mayfail::state::registry_crate;

/// What a site is, bugs first. The first six are bugs: each sets the exit
/// status of a walk unless a baseline lists the site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// The process died of `SIGSEGV` or `SIGBUS`: most likely a null
    /// pointer used unchecked.
    Crashed,
    /// The process aborted and a fallible function of the code under test
    /// lies between the test and the failed allocation ([`is_fallible`]):
    /// an API that promises to report failure did not.
    FallibleApiAborted,
    /// The process aborted on the error path of a failure the code had
    /// handled (or turned into a test failure): error-path exploration
    /// (`--depth`) failed that first site again, then the first new
    /// allocation after it, which aborted (building the error, logging
    /// it...). Not for an allocation that formats a panic's message.
    ErrorPathAborted,
    /// The process was killed by `--timeout`.
    Hung,
    /// The process handled the failure but leaked memory. Defined for a
    /// walk that can tell; none does yet.
    Leaked,
    /// The process left no fate: the walk could not look.
    Unknown,
    /// The process aborted at an allocation std makes infallibly
    /// (`Vec::push`, `to_string`, formatting a panic's message): the
    /// language's design, not a finding.
    Infallible,
    /// A test failed: the failure reached an assertion (an `Err` unwrapped
    /// or asserted on), or the process exited with a status not declared
    /// handled.
    Failed,
    /// The process exited 0 (or with a status `--handled-exit` declares).
    Handled,
}

impl Class {
    /// Every class, in report order.
    pub const ALL: [Class; 9] = [
        Class::Crashed,
        Class::FallibleApiAborted,
        Class::ErrorPathAborted,
        Class::Hung,
        Class::Leaked,
        Class::Unknown,
        Class::Infallible,
        Class::Failed,
        Class::Handled,
    ];

    /// Its name in the table, the JSON, the HTML and the baseline.
    pub fn name(self) -> &'static str {
        match self {
            Class::Crashed => "crashed",
            Class::FallibleApiAborted => "fallible-api-aborted",
            Class::ErrorPathAborted => "error-path-aborted",
            Class::Hung => "hung",
            Class::Leaked => "leaked",
            Class::Unknown => "unknown",
            Class::Infallible => "infallible",
            Class::Failed => "failed",
            Class::Handled => "handled",
        }
    }

    /// The class named `name`.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether it is a bug: listed in full, and it sets the exit status.
    pub fn is_bug(self) -> bool {
        self < Class::Infallible
    }
}

/// Registry crates that are test frameworks: a frame of theirs is never
/// the code under test, and a site whose innermost frame is theirs is
/// blamed on their caller (`--scope crate`, `workspace`).
const TEST_FRAMEWORKS: [&str; 6] = [
    "proptest",
    "quickcheck",
    "criterion",
    "rstest",
    "arbitrary",
    "libfuzzer-sys",
];

/// Splits `f (a.rs:1) <- g (b.rs:2)` into frames.
pub fn frames_of(place: &str) -> Vec<Frame> {
    if place.is_empty() {
        return Vec::new();
    }
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

/// The last segment of a function's path, generics and closures left out:
/// `<a::B<T> as c::D>::try_push::{{closure}}` is `try_push`.
fn last_segment(function: &str) -> String {
    let mut depth = 0usize;
    let mut cut = String::new();
    for c in function.chars() {
        match c {
            '<' => depth += 1,
            '>' if depth > 0 => depth -= 1,
            _ if depth == 0 => cut.push(c),
            _ => {}
        }
    }
    cut.rsplit("::")
        .find(|s| !s.is_empty() && !s.starts_with('{'))
        .unwrap_or_default()
        .to_owned()
}

/// The rule for a fallible function, by its name: the last segment of its
/// path is `try_*` or `try`. The other half of the rule, a `Result` with
/// an allocation error for its return type, is read from the debug
/// information (`returns`) and kept on the site ([`Site::promising`]).
pub fn is_fallible(function: &str) -> bool {
    let name = last_segment(function);
    name == "try" || name.starts_with("try_")
}

fn is_test_framework(frame: &Frame) -> bool {
    frame
        .location
        .as_deref()
        .and_then(registry_crate)
        .is_some_and(|krate| {
            TEST_FRAMEWORKS
                .iter()
                .any(|t| t.replace('-', "_") == krate.replace('-', "_"))
        })
}

/// Whether a frame's file is the workspace's: not in cargo's registry or
/// git checkouts, not std's.
fn is_local(frame: &Frame) -> bool {
    frame.location.as_deref().is_some_and(|l| {
        !l.contains("/registry/src/")
            && !l.contains("/git/checkouts/")
            && !l.starts_with("/rustc/")
            && !l.contains("/lib/rustlib/src/")
    })
}

/// The frames of the chain between the allocation and the test: the
/// test's own frame (the chain's outermost, after the harness's closures
/// that call it) and test frameworks' frames left out.
fn between(chain: &[Frame]) -> &[Frame] {
    let mut end = chain.len();
    while end > 0 && last_segment_is_closure(&chain[end - 1].function) {
        end -= 1;
    }
    &chain[..end.saturating_sub(1)]
}

/// The crate a function's path names first (`a` of `a::B<T>::f` and of
/// `<a::B as c::D>::f`).
fn crate_of(function: &str) -> &str {
    let path = function.trim_start_matches('<');
    path.split("::").next().unwrap_or(path)
}

/// The file and line of a `file:line` or `file:line:column` location
/// (line 0 when it has none).
fn split_location(location: &str) -> (&str, u32) {
    let mut file = location;
    let mut numbers = [0u32; 2];
    let mut count = 0;
    while let Some((rest, tail)) = file.rsplit_once(':') {
        let Ok(n) = tail.parse::<u32>() else { break };
        if count == 2 {
            break;
        }
        numbers[count] = n;
        count += 1;
        file = rest;
    }
    // `file:line:column` ends with the column; `file:line` with the line.
    let line = match count {
        2 => numbers[1],
        1 => numbers[0],
        _ => 0,
    };
    (file, line)
}

fn last_segment_is_closure(function: &str) -> bool {
    function.ends_with("{{closure}}") || function.ends_with('}')
}

impl Site {
    /// Its class, from its outcome and facts (see [`Class`]).
    pub fn class(&self) -> Class {
        match self.outcome {
            Outcome::Crashed => Class::Crashed,
            Outcome::Hung => Class::Hung,
            // The test failed because the code panicked on its own
            // failure, below a function that promises to report it.
            Outcome::Failed if self.panicked_in_the_code() => Class::FallibleApiAborted,
            Outcome::Failed => Class::Failed,
            Outcome::Handled => Class::Handled,
            // Aborted on the error path of a failure the code had handled
            // (a panic's message aside: the function that panicked did not
            // allocate).
            // The test's own allocation (its body, or a closure in it) is
            // not the code's: the code had handled its failure.
            Outcome::Aborted
                if !self.after.is_empty() && !self.panic && !self.made_by_the_test() =>
            {
                Class::ErrorPathAborted
            }
            Outcome::Aborted if self.fallible_frame().is_some() => Class::FallibleApiAborted,
            Outcome::Aborted => Class::Infallible,
            // `unknown`, and any outcome a newer writer may add: not looked.
            _ => Class::Unknown,
        }
    }

    /// Whether its test panicked in the code under test, at or below a
    /// fallible function of it ([`is_fallible`], or one returning a
    /// `Result` with an allocation error): the panic's file is that of a
    /// frame from the allocation up to that function, and the panic is not
    /// at a frame above it (a wrapper that unwraps the `Err` the fallible
    /// function returned, as `to_string` over `try_to_string`, or the
    /// test's own `unwrap` or assertion), nor in the test's own file.
    fn panicked_in_the_code(&self) -> bool {
        self.panicked_below().is_some()
    }

    /// The fallible function whose failure made the test panic in the code
    /// (see [`Site::panicked_in_the_code`]).
    fn panicked_below(&self) -> Option<&Frame> {
        let at = self.panicked_at.as_ref()?;
        if self.panic {
            return None;
        }
        let frames = between(&self.chain);
        let fallible = frames.iter().position(|f| {
            !is_test_framework(f)
                && !f.function.contains("::tests::")
                && (is_fallible(&f.function) || self.promising.contains(&f.function))
        })?;
        let (panic_file, panic_line) = split_location(at);
        let same_file = |frame: &Frame| {
            frame.location.as_deref().is_some_and(|l| {
                let file = split_location(l).0;
                file == panic_file || file.ends_with(&format!("/{panic_file}"))
            })
        };
        let at_frame = |frame: &Frame| {
            same_file(frame)
                && frame
                    .location
                    .as_deref()
                    .is_some_and(|l| split_location(l).1 == panic_line)
        };
        // The frames above the fallible function, the test's included.
        let above = &self.chain[fallible + 1..];
        let test_file = self.chain.get(frames.len()).is_some_and(same_file);
        (!test_file && !above.iter().any(at_frame) && frames[..=fallible].iter().any(same_file))
            .then(|| &frames[fallible])
    }

    /// The fallible function a bug of class `fallible-api-aborted` is
    /// blamed on: the one an abort happened below, or the one whose own
    /// panic failed the test.
    pub fn broken_promise(&self) -> Option<&Frame> {
        match self.outcome {
            Outcome::Failed => self.panicked_below(),
            _ => self.fallible_frame(),
        }
    }

    /// Whether the allocation's innermost frame outside the allocation
    /// machinery is the test's own: the test function (the chain's
    /// outermost, after the harness's closures) or a closure in it.
    fn made_by_the_test(&self) -> bool {
        let test = self.chain.get(between(&self.chain).len());
        match (self.chain.first(), test) {
            (Some(first), Some(test)) => first.function.starts_with(&test.function),
            _ => false,
        }
    }

    /// The fallible function ([`is_fallible`]) between the allocation and
    /// the test that its caller entered the crate through: no frame of the
    /// same crate stands outside it, a test module's aside (an infallible
    /// `reserve` that calls `try_reserve` and aborts on its error is the
    /// API called, and is infallible). Test frameworks' frames are left out.
    /// An allocation that serves a panic's message has none: the function
    /// that panicked did not allocate.
    pub fn fallible_frame(&self) -> Option<&Frame> {
        if self.panic {
            return None;
        }
        let frames = between(&self.chain);
        frames.iter().enumerate().find_map(|(at, f)| {
            let entered = !frames[at + 1..].iter().any(|outer| {
                !outer.function.contains("::tests::")
                    && crate_of(&outer.function) == crate_of(&f.function)
            });
            let fallible = is_fallible(&f.function) || self.promising.contains(&f.function);
            (entered && !is_test_framework(f) && fallible).then_some(f)
        })
    }

    /// The site's frames from the one it is blamed on under `scope`, and
    /// whether that frame is the scope's (`false`: none is, the site lies
    /// wholly outside it and is grouped apart).
    pub fn blamed(&self, scope: Scope) -> (&[Frame], bool) {
        let chain: &[Frame] = if self.chain.is_empty() {
            &self.frames
        } else {
            &self.chain
        };
        let at = match scope {
            Scope::All => Some(0),
            Scope::Crate => chain.iter().position(|f| !is_test_framework(f)),
            Scope::Workspace => chain.iter().position(is_local),
        };
        match at {
            Some(at) => (&chain[at..], true),
            None => (chain, chain.is_empty()),
        }
    }

    /// The frames a report shows: [`Site::blamed`]'s first three.
    pub fn shown(&self, scope: Scope) -> &[Frame] {
        let (frames, _) = self.blamed(scope);
        &frames[..frames.len().min(3)]
    }
}

/// The options of `sites` and `report` about findings.
#[derive(Args, Debug, Default)]
pub(crate) struct FindingsArgs {
    /// Rows the table and the HTML report list one by one: bugs (crashed,
    /// fallible-api-aborted, error-path-aborted, hung, leaked, unknown; the
    /// other classes as counts with their top lines) or all
    #[arg(long, value_enum, default_value_t = Show::Bugs)]
    show: Show,
    /// The frame a site is blamed on and grouped by: crate (the innermost
    /// frame outside test frameworks such as proptest and quickcheck),
    /// workspace (the innermost in the workspace's files; sites wholly in
    /// dependencies grouped apart) or all (the innermost frame)
    #[arg(long, value_enum, default_value_t = Scope::Crate)]
    scope: Scope,
    /// Write a SARIF 2.1.0 file: one result per site, level error for the
    /// bug classes, note for infallible, warning for failed; locations
    /// relative to the current directory (the workspace root)
    #[arg(long, value_name = "FILE")]
    sarif: Option<PathBuf>,
    /// Known sites (a file written by --write-baseline; not the runs
    /// without injection that --no-baseline skips): they are reported but
    /// do not set the exit status; only bug sites not in it do
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Write the bug sites of this report to FILE as a baseline
    #[arg(long, value_name = "FILE")]
    write_baseline: Option<PathBuf>,
}

impl FindingsArgs {
    /// Reads the baseline, if one is given: before a walk, so that a bad
    /// file is said at once.
    pub(crate) fn baseline(&self) -> Result<Option<baseline::Baseline>, Failure> {
        self.baseline
            .as_deref()
            .map(baseline::Baseline::read)
            .transpose()
    }

    /// `summary` read by these options and `baseline` (from
    /// [`FindingsArgs::baseline`]).
    pub(crate) fn apply(&self, baseline: Option<&baseline::Baseline>, summary: Summary) -> Summary {
        let baselined = baseline.map(|b| {
            summary
                .sites
                .iter()
                .filter(|site| b.contains(site))
                .map(|site| site.id)
                .collect()
        });
        Summary {
            view: View {
                show: self.show,
                scope: self.scope,
                baselined,
            },
            ..summary
        }
    }

    /// Writes the SARIF file and the baseline asked for.
    pub(crate) fn write(&self, summary: &Summary) -> Result<(), Failure> {
        if let Some(path) = &self.sarif {
            let text = sarif::render(summary);
            std::fs::write(path, text).map_err(|e| Failure::io("write", path, e))?;
        }
        if let Some(path) = &self.write_baseline {
            let text = baseline::Baseline::of(summary).render();
            std::fs::write(path, text).map_err(|e| Failure::io("write", path, e))?;
        }
        Ok(())
    }
}

impl Summary {
    /// Whether `site` is a bug that sets the exit status: a bug class, not
    /// in the baseline.
    pub fn gates(&self, site: &Site) -> bool {
        site.class().is_bug() && !self.view.knows(site)
    }

    /// Sites per class.
    pub fn class_count(&self, class: Class) -> usize {
        self.sites.iter().filter(|s| s.class() == class).count()
    }

    /// The bug sites that set the exit status (not in the baseline).
    pub fn gating(&self) -> usize {
        self.sites.iter().filter(|s| self.gates(s)).count()
    }

    /// `1 crashed, 2 infallible`
    pub fn class_counts(&self) -> String {
        let parts: Vec<String> = Class::ALL
            .iter()
            .map(|&c| (c, self.class_count(c)))
            .filter(|&(_, n)| n > 0)
            .map(|(c, n)| format!("{n} {}", c.name()))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// The sites grouped by class and blamed frame, in report order: each
    /// group's sites, by index into `sites`.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.sites.len()).collect();
        let key = |i: &usize| {
            let site = &self.sites[*i];
            let (frames, inside) = site.blamed(self.view.scope);
            let top = frames
                .first()
                .map(|f| (f.function.clone(), f.location.clone().unwrap_or_default()))
                .unwrap_or_default();
            (site.class(), !inside, site.panic, top)
        };
        order.sort_by_cached_key(|i| (key(i), self.sites[*i].first_run, self.sites[*i].id));
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut last = None;
        for i in order {
            let k = key(&i);
            if last.as_ref() == Some(&k) {
                groups.last_mut().expect("a group").push(i);
            } else {
                groups.push(vec![i]);
                last = Some(k);
            }
        }
        groups
    }
}

/// For each site of a group, the first frame of its chain (from the blamed
/// one) that no other site of the group has at that place: what tells
/// rows that look alike apart. `None` where the chains say nothing more
/// (the raw frames then tell).
pub fn telling_frame<'a>(summary: &'a Summary, group: &[usize], index: usize) -> Option<&'a Frame> {
    if group.len() < 2 {
        return None;
    }
    let scope = summary.view.scope;
    let (own, _) = summary.sites[index].blamed(scope);
    let same = |a: &Frame, b: &Frame| a.function == b.function && a.location == b.location;
    (0..own.len()).find_map(|at| {
        let unique = group.iter().filter(|&&o| o != index).all(|&o| {
            let (theirs, _) = summary.sites[o].blamed(scope);
            theirs.get(at).is_none_or(|t| !same(t, &own[at]))
        });
        let differs_from_some = group.iter().filter(|&&o| o != index).any(|&o| {
            let (theirs, _) = summary.sites[o].blamed(scope);
            theirs.get(at).is_none_or(|t| !same(t, &own[at]))
        });
        (at > 0 && (unique || differs_from_some)).then(|| &own[at])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(outcome: Outcome, chain: &str, panic: bool) -> Site {
        Site {
            id: 1,
            outcome,
            detail: String::new(),
            seen: 1,
            first_run: 1,
            what: String::new(),
            thread: String::new(),
            binary: String::new(),
            frames: frames_of(chain),
            raw_frames: String::new(),
            replay: String::new(),
            panic,
            chain: frames_of(chain),
            test: None,
            after: Vec::new(),
            error_path_of: None,
            promising: Vec::new(),
            panicked_at: None,
        }
    }

    #[test]
    fn fallible_names_are_told_by_their_last_segment() {
        assert!(is_fallible("c::try_to_compact_string"));
        assert!(is_fallible("<a::B<T> as c::D>::try_push"));
        assert!(is_fallible("a::B<T>::try_from_slice::{{closure}}"));
        assert!(is_fallible("a::try"));
        assert!(!is_fallible("a::retry_push"));
        assert!(!is_fallible("a::try_x::inner"));
        assert!(!is_fallible("<a::TryFoo as b::C>::push"));
    }

    #[test]
    fn an_abort_below_a_fallible_function_of_the_code_is_a_bug_and_the_test_is_not_one() {
        let under = "f::copy (src/lib.rs:3) <- f::try_copy (src/lib.rs:9) <- f::tests::t (src/lib.rs:20) <- f::tests::t::{{closure}} (src/lib.rs:19)";
        assert_eq!(
            site(Outcome::Aborted, under, false).class(),
            Class::FallibleApiAborted
        );
        // The same abort, formatting a panic's message: the language's.
        assert_eq!(
            site(Outcome::Aborted, under, true).class(),
            Class::Infallible
        );
        // A test named try_*: not the code under test.
        let test = "f::push (src/lib.rs:3) <- f::tests::try_push (src/lib.rs:20) <- f::tests::try_push::{{closure}} (src/lib.rs:19)";
        assert_eq!(
            site(Outcome::Aborted, test, false).class(),
            Class::Infallible
        );
        // A test framework's try_*: neither.
        let framework = "f::push (src/lib.rs:3) <- proptest::test_runner::TestRunner::try_run (/h/.cargo/registry/src/i-1/proptest-1.5.0/src/r.rs:1) <- f::tests::t (src/lib.rs:20)";
        assert_eq!(
            site(Outcome::Aborted, framework, false).class(),
            Class::Infallible
        );
        // An infallible API that calls the fallible one and aborts on its
        // error: the API the test called is infallible.
        let wrapped = "s::S::try_grow (src/lib.rs:3) <- s::S::try_reserve (src/lib.rs:9) <- s::S::reserve (src/lib.rs:12) <- s::tests::t (src/lib.rs:20)";
        assert_eq!(
            site(Outcome::Aborted, wrapped, false).class(),
            Class::Infallible
        );
        // The fallible one called directly, through a test module's helper.
        let direct = "s::S::try_grow (src/lib.rs:3) <- s::S::try_reserve (src/lib.rs:9) <- s::tests::helper (src/lib.rs:15) <- s::tests::t (src/lib.rs:20)";
        assert_eq!(
            site(Outcome::Aborted, direct, false)
                .fallible_frame()
                .map(|f| f.function.as_str()),
            Some("s::S::try_reserve")
        );
        assert_eq!(site(Outcome::Crashed, test, false).class(), Class::Crashed);
        assert!(Class::Unknown.is_bug() && !Class::Infallible.is_bug());
    }

    #[test]
    fn an_abort_on_an_error_path_is_the_codes_unless_the_test_itself_allocated() {
        let on_path = |chain: &str| {
            let mut site = site(Outcome::Aborted, chain, false);
            site.after = vec![7];
            site.class()
        };
        // The code's error path allocates its message.
        let code = "f::try_copy (src/lib.rs:9) <- f::tests::t (src/lib.rs:20) <- f::tests::t::{{closure}} (src/lib.rs:19)";
        assert_eq!(on_path(code), Class::ErrorPathAborted);
        // The test goes on after the code reported its failure and
        // allocates itself: in its body, or in a closure (proptest's).
        let body = "f::tests::t (src/lib.rs:22) <- f::tests::t::{{closure}} (src/lib.rs:19)";
        assert_eq!(on_path(body), Class::Infallible);
        let closure = "f::tests::t::{{closure}} (src/tests.rs:257) <- proptest::test_runner::runner::call_test (/h/.cargo/registry/src/i-1/proptest-1.11.0/src/test_runner/runner.rs:256) <- f::tests::t (/h/.cargo/registry/src/i-1/proptest-1.11.0/src/sugar.rs:178) <- f::tests::t::{{closure}} (/h/.cargo/registry/src/i-1/proptest-1.11.0/src/sugar.rs:174)";
        assert_eq!(on_path(closure), Class::Infallible);
    }

    #[test]
    fn a_test_that_fails_because_the_code_panicked_on_its_own_failure_is_a_bug() {
        let chain = "c::repr::do_alloc (/w/c/src/repr/heap.rs:412) <- c::repr::Repr::push_str (/w/c/src/repr/mod.rs:360) <- c::ToCompactString::try_to_compact_string (/w/c/src/traits.rs:95) <- c::tests::t (/w/c/src/tests.rs:20) <- c::tests::t::{{closure}} (/w/c/src/tests.rs:19)";
        let failed = |at: Option<&str>| {
            let mut site = site(Outcome::Failed, chain, false);
            site.panicked_at = at.map(str::to_owned);
            site.class()
        };
        // It panicked in push_str's file, below the fallible function.
        assert_eq!(
            failed(Some("src/repr/mod.rs:361")),
            Class::FallibleApiAborted
        );
        // An assertion or an unwrap in the test: the code reported its
        // failure, the test did not take it.
        assert_eq!(failed(Some("src/tests.rs:21")), Class::Failed);
        // Elsewhere (std, another file): not told.
        assert_eq!(failed(Some("src/other.rs:3")), Class::Failed);
        assert_eq!(failed(None), Class::Failed);
        // Through an infallible wrapper: the fallible function panicked
        // below it (a bug), or the wrapper unwrapped its `Err` (its line).
        let wrapped = "c::repr::do_alloc (/w/c/src/repr/heap.rs:412) <- c::repr::Repr::push_str (/w/c/src/repr/mod.rs:360) <- <T as c::ToCompactString>::try_to_compact_string (/w/c/src/traits.rs:90) <- <T as c::ToCompactString>::to_compact_string (/w/c/src/traits.rs:40) <- c::tests::t (/w/c/src/tests.rs:20) <- c::tests::t::{{closure}} (/w/c/src/tests.rs:19)";
        let through = |at: &str| {
            let mut site = site(Outcome::Failed, wrapped, false);
            site.panicked_at = Some(at.to_owned());
            site.class()
        };
        assert_eq!(through("src/repr/mod.rs:361"), Class::FallibleApiAborted);
        assert_eq!(through("src/traits.rs:40"), Class::Failed);
        assert_eq!(split_location("/a/b.rs:3:7"), ("/a/b.rs", 3));
        assert_eq!(split_location("src/x.rs:12"), ("src/x.rs", 12));
        assert_eq!(split_location("src/x.rs"), ("src/x.rs", 0));
    }

    #[test]
    fn a_site_inside_a_test_framework_is_blamed_on_its_caller_by_scope() {
        let chain = "proptest::strategy::gen (/h/.cargo/registry/src/i-1/proptest-1.5.0/src/s.rs:4) <- serde::de::x (/h/.cargo/registry/src/i-1/serde-1.0.1/src/d.rs:2) <- f::tests::t (/w/src/lib.rs:20)";
        let s = site(Outcome::Aborted, chain, false);
        assert_eq!(
            s.blamed(Scope::All).0[0].function,
            "proptest::strategy::gen"
        );
        assert_eq!(s.blamed(Scope::Crate).0[0].function, "serde::de::x");
        assert_eq!(s.blamed(Scope::Workspace).0[0].function, "f::tests::t");
        let deps = site(
            Outcome::Aborted,
            "serde::de::x (/h/.cargo/registry/src/i-1/serde-1.0.1/src/d.rs:2)",
            false,
        );
        assert!(!deps.blamed(Scope::Workspace).1);
    }
}
