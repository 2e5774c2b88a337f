//! The state file's one writer and one reader agree: every line
//! `mayfail::state::Line` writes, `parse_line` reads back as the same line,
//! whatever its free-text fields hold (tabs, line breaks, backslashes,
//! quotes, any Unicode), and a line is always one line.

use std::borrow::Cow;

use mayfail::Outcome;
use mayfail::state::{Line, TestName, parse_line, read_field, write_field};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Free text, heavy in what an escape must get right.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\t".to_owned()),
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\\".to_owned()),
        Just("\\t".to_owned()),
        Just("\\n".to_owned()),
        Just("\\\\".to_owned()),
        Just("'\\''".to_owned()),
        "[a-z ]{0,4}",
        ".{0,3}",
    ];
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

/// Free text that is not empty (a test's names).
fn filled() -> impl Strategy<Value = String> {
    text().prop_filter("not empty", |t| !t.is_empty())
}

fn stack_id() -> impl Strategy<Value = u64> {
    1..u64::MAX
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop::sample::select(Outcome::ALL.to_vec())
}

fn owned(text: String) -> Cow<'static, str> {
    Cow::Owned(text)
}

fn test_name() -> impl Strategy<Value = TestName<'static>> {
    (filled(), filled(), filled(), filled()).prop_map(|(package, kind, target, name)| TestName {
        package: owned(package),
        kind: owned(kind),
        target: owned(target),
        name: owned(name),
    })
}

/// Any line a writer may write.
fn line() -> impl Strategy<Value = Line<'static>> {
    let runs = prop_oneof![
        (any::<u64>(), text()).prop_map(|(ms, status)| Line::Baseline {
            ms,
            status: owned(status),
        }),
        (any::<u64>(), text(), text(), text()).prop_map(|(number, copies, start_ms, command)| {
            Line::Run {
                number,
                copies: owned(copies),
                start_ms: owned(start_ms),
                command: owned(command),
            }
        }),
        (any::<u64>(), any::<u64>(), text()).prop_map(|(number, ms, how)| Line::End {
            number,
            ms,
            how: owned(how),
        }),
        (any::<u64>(), any::<u32>(), outcome(), text()).prop_map(|(run, pid, outcome, detail)| {
            Line::Unattributed {
                run,
                pid,
                outcome,
                detail: owned(detail),
            }
        }),
        prop::collection::vec(1u8..=255, 1..4).prop_map(|codes| Line::HandledExit {
            codes: owned(
                codes
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        }),
    ];
    let sites = prop_oneof![
        (
            (stack_id(), any::<u32>()),
            (text(), text(), text(), text(), text(), text(), text()),
        )
            .prop_map(
                |((id, pid), (what, thread, binary, place, frames, facts, chain))| Line::Site {
                    id,
                    pid,
                    what: owned(what),
                    thread: owned(thread),
                    binary: owned(binary),
                    place: owned(place),
                    frames: owned(frames),
                    facts: owned(facts),
                    chain: owned(chain),
                }
            ),
        (stack_id(), any::<u32>(), outcome(), text()).prop_map(|(id, pid, outcome, detail)| {
            Line::Fate {
                id,
                pid,
                outcome,
                detail: owned(detail),
            }
        }),
        stack_id().prop_map(|id| Line::Runtime { id }),
        stack_id().prop_map(|id| Line::Retry { id }),
        any::<u32>().prop_map(|pid| Line::OtherShard { pid }),
        text()
            .prop_filter("a function has a name", |t| !t.is_empty())
            .prop_map(|function| Line::Fallible {
                function: owned(function),
            }),
        (stack_id(), any::<u32>(), text())
            .prop_filter("a place is named", |(_, _, t)| !t.is_empty())
            .prop_map(|(id, pid, location)| Line::Panicked {
                id,
                pid,
                location: owned(location),
            }),
        (any::<u32>(), text()).prop_map(|(pid, reason)| Line::NoFork {
            pid,
            reason: owned(reason),
        }),
    ];
    let tests = prop_oneof![
        (any::<u32>(), test_name()).prop_map(|(pid, test)| Line::Test { pid, test }),
        test_name().prop_map(|test| Line::Tested { test }),
        (test_name(), text()).prop_map(|(test, detail)| Line::LeftOut {
            test,
            detail: owned(detail),
        }),
    ];
    prop_oneof![runs, sites, tests]
}

#[test]
fn every_line_written_reads_back_as_itself() {
    let mut runner = TestRunner::new(Config {
        cases: cases(256) * 8,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&line(), |line| {
            let text = line.to_string();
            prop_assert!(!text.contains(['\n', '\r']), "{:?}", text);
            prop_assert_eq!(parse_line(&text), Ok(line.clone()), "{:?}", text);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_field_reads_back_as_itself_and_never_holds_a_separator() {
    let mut runner = TestRunner::new(Config {
        cases: cases(256) * 8,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&text(), |text| {
            let mut written = String::new();
            write_field(&mut written, &text).unwrap();
            prop_assert!(!written.contains(['\t', '\n', '\r']), "{:?}", written);
            prop_assert_eq!(read_field(&written), text.as_str());
            // Text without a separator or a backslash is written as it is.
            if !text.contains(['\t', '\n', '\r', '\\']) {
                prop_assert_eq!(&written, &text);
            }
            Ok(())
        })
        .unwrap();
}
