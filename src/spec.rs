//! The injection spec grammar: `key=value` pairs separated by commas, keys
//! named after the kernel's fault-injection attributes.
//!
//! Pure logic over bytes: parsing neither allocates nor panics, so the same
//! parser serves `MAYFAIL_INJECT` (read inside the allocator) and
//! [`configure_injection`](crate::configure_injection). A [`Spec`] prints back
//! in canonical form, which is what replay lines show.

use core::fmt;

use crate::config::parse_bytes;
use crate::text::parse_u64;
use crate::text::{Replayable, Shown};

/// Longest accepted `thread=` name, in bytes.
pub(crate) const MAX_THREAD_NAME: usize = 64;

// [sites] The keys of `sites` mode (walking every allocation site, see
// `sites.rs`): `sites=FILE`, `stack=ID`, `sites-skip=N`, `sites-all=Y`,
// `sites-shard=K/N`, `sites-after=ID+ID`, `sites-fork=MS`, `sites-fork-test=Y`,
// `sites-fork-output=Y`.
/// Longest accepted `sites=` path, in bytes.
pub(crate) const MAX_SITES_PATH: usize = 512;

/// A parsed injection spec. Defaults follow the kernel's: probability 100,
/// interval 1, times 1, space 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Probability in billionths of a percent (100% = 100_000_000_000).
    pub(crate) probability_nano: u64,
    pub(crate) interval: u64,
    /// `-1` = unlimited.
    pub(crate) times: i64,
    pub(crate) space: u64,
    pub(crate) min_size: usize,
    pub(crate) max_size: usize,
    pub(crate) task_filter: bool,
    pub(crate) after: u64,
    pub(crate) seed: Option<u64>,
    pub(crate) verbose: u8,
    pub(crate) transient: bool,
    pub(crate) report: bool,
    /// Only the n-th allocation of each thread is a candidate (0 = any).
    pub(crate) nth: u64,
    /// Only threads with this name are candidates (empty = any).
    pub(crate) thread: [u8; MAX_THREAD_NAME],
    pub(crate) thread_len: u8,
    /// [sites] The state file of `sites` mode (empty = off).
    pub(crate) sites: [u8; MAX_SITES_PATH],
    pub(crate) sites_len: u16,
    /// [sites] Only allocations with this stack id are candidates (0 = any).
    pub(crate) stack: u64,
    /// [sites] In `sites` mode, let this many new sites pass before failing one.
    pub(crate) sites_skip: u64,
    /// [sites] In `sites` mode, count stacks of the Rust runtime and the test
    /// harness as sites too.
    pub(crate) sites_all: bool,
    /// [sites] In `sites` mode, fail only the new stacks of shard
    /// `shard.0` (1-based) of `shard.1`, told apart by stack id.
    pub(crate) sites_shard: (u32, u32),
    /// [sites] In `sites` mode, the path to an error path: these known
    /// stacks fail first, in order, nothing before them; then the first
    /// new stack (error-path exploration).
    pub(crate) sites_after: [u64; MAX_AFTER],
    pub(crate) sites_after_len: u8,
    /// [sites] In `sites` mode, fork at each new site where the process
    /// allows it: the child fails it, the parent waits at most this many
    /// milliseconds for the child and goes on (0 = off).
    pub(crate) sites_fork_ms: u64,
    /// [sites] With `sites_fork_ms`: the process runs one test of a libtest
    /// harness, whose main thread only waits for the test's thread; a child
    /// forked on the test's thread writes its output to a file of its own
    /// and tells a failed test by its panic.
    pub(crate) sites_fork_test: bool,
    /// [sites] With `sites_fork_ms`: a forked child writes its output to a
    /// file of its own (implied by `sites_fork_test`).
    pub(crate) sites_fork_output: bool,
}

/// [sites] The longest `sites-after` path.
pub(crate) const MAX_AFTER: usize = 4;

/// 100 %, in billionths of a percent.
pub(crate) const PERCENT_100: u64 = 100 * 1_000_000_000;

impl Spec {
    pub(crate) const DEFAULT: Spec = Spec {
        probability_nano: PERCENT_100,
        interval: 1,
        times: 1,
        space: 0,
        min_size: 0,
        max_size: usize::MAX,
        task_filter: false,
        after: 0,
        seed: None,
        verbose: 0,
        transient: false,
        report: true,
        nth: 0,
        thread: [0; MAX_THREAD_NAME],
        thread_len: 0,
        sites: [0; MAX_SITES_PATH],
        sites_len: 0,
        stack: 0,
        sites_skip: 0,
        sites_all: false,
        sites_shard: (1, 1),
        sites_after: [0; MAX_AFTER],
        sites_after_len: 0,
        sites_fork_ms: 0,
        sites_fork_test: false,
        sites_fork_output: false,
    };

    pub(crate) fn thread_name(&self) -> &[u8] {
        &self.thread[..self.thread_len as usize]
    }

    /// [sites] The `sites=` path (empty: not in `sites` mode).
    pub(crate) fn sites_path(&self) -> &[u8] {
        &self.sites[..self.sites_len as usize]
    }

    /// The threshold a uniform 32-bit random number must stay below for a
    /// failure: `probability / 100 * 2^32`.
    pub(crate) fn threshold(&self) -> u64 {
        ((u128::from(self.probability_nano) << 32) / u128::from(PERCENT_100)) as u64
    }
}

/// What was wrong with a spec: which field, and what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    Empty,
    EmptyPair,
    MissingEquals,
    UnknownKey,
    Duplicate,
    BadValue(&'static str),
    SizeRange,
    /// [sites] `sites=` and `stack=` together.
    SitesAndStack,
}

/// A parse error, borrowing the offending text from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SpecError<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
    pub(crate) problem: Problem,
}

/// Every key, for the unknown-key message.
pub(crate) const KEYS: &str = "probability, interval, times, space, min-size, max-size, \
    task-filter, after, seed, verbose, transient, report, nth, thread, sites, stack, \
    sites-skip, sites-all, sites-shard, sites-after";

const PROBABILITY: &str = "a percentage from 0 to 100, decimals allowed (0.5)";
const WHOLE_POSITIVE: &str = "a whole number >= 1";
const TIMES: &str = "-1 (unlimited) or a whole number >= 0";
const BYTES: &str = "bytes, with an optional K, M or G suffix";
const WHOLE: &str = "a whole number >= 0";
const YES_NO: &str = "Y or N";
const VERBOSE: &str = "0, 1 or 2";
const SHARD: &str = "K/N: shard K (1 to N) of N >= 1 shards (2/4)";
const THREAD: &str = "a thread name of 1 to 64 bytes (\\xNN escapes allowed)";
const SITES: &str = "a file path of 1 to 512 bytes (\\xNN escapes allowed)";
const STACK: &str = "a stack id: 1 to 16 hex digits, not all zero";
const AFTER: &str = "1 to 4 stack ids joined by + (8c1f+02ab)";

impl fmt::Display for SpecError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = Shown(self.key);
        let value = Shown(self.value);
        match self.problem {
            Problem::Empty => f.write_str("the spec is empty: give key=value pairs, e.g. probability=1,times=-1"),
            Problem::EmptyPair => f.write_str("empty pair (two commas in a row, or a comma at an end): give key=value pairs separated by single commas"),
            Problem::MissingEquals => write!(f, "\"{key}\" is not key=value; keys: {KEYS}"),
            Problem::UnknownKey => write!(f, "unknown key \"{key}\"; keys: {KEYS}"),
            Problem::Duplicate => write!(f, "\"{key}\" is given twice"),
            Problem::BadValue(accepted) => {
                write!(f, "{key}=\"{value}\" is not valid: {key} takes {accepted}")
            }
            Problem::SizeRange => f.write_str("min-size is larger than max-size"),
            Problem::SitesAndStack => f.write_str(
                "sites and stack cannot be combined: sites= walks every new stack, stack= replays one",
            ),
        }
    }
}

fn yes_no(v: &[u8]) -> Option<bool> {
    match v {
        b"Y" | b"y" | b"1" => Some(true),
        b"N" | b"n" | b"0" => Some(false),
        _ => None,
    }
}

/// A percentage with up to nine decimals, in billionths of a percent.
pub(crate) fn parse_percent(v: &[u8]) -> Option<u64> {
    let (whole, fraction) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    if whole.is_empty() || fraction.len() > 9 || (v.contains(&b'.') && fraction.is_empty()) {
        return None;
    }
    let whole = parse_u64(whole)?;
    let mut nano = 0u64;
    for (i, &b) in fraction.iter().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        nano += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
    }
    let total = whole.checked_mul(1_000_000_000)?.checked_add(nano)?;
    (total <= PERCENT_100).then_some(total)
}

/// Parses a spec. Keys are case-sensitive; blanks around keys and values are
/// ignored.
pub(crate) fn parse(input: &[u8]) -> Result<Spec, SpecError<'_>> {
    let mut spec = Spec::DEFAULT;
    let input = input.trim_ascii();
    if input.is_empty() {
        return Err(SpecError {
            key: b"",
            value: b"",
            problem: Problem::Empty,
        });
    }
    let mut seen = 0u32;
    for pair in input.split(|&b| b == b',') {
        let pair = pair.trim_ascii();
        let err = |key, value, problem| SpecError {
            key,
            value,
            problem,
        };
        if pair.is_empty() {
            return Err(err(b"", b"", Problem::EmptyPair));
        }
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return Err(err(pair, b"", Problem::MissingEquals));
        };
        let key = pair[..eq].trim_ascii();
        let value = pair[eq + 1..].trim_ascii();
        let index = match set_value(&mut spec, key, value) {
            Ok(Some(index)) => index,
            Ok(None) => return Err(err(key, value, Problem::UnknownKey)),
            Err(accepted) => return Err(err(key, value, Problem::BadValue(accepted))),
        };
        if seen & (1 << index) != 0 {
            return Err(err(key, value, Problem::Duplicate));
        }
        seen |= 1 << index;
    }
    if spec.sites_len != 0 && spec.stack != 0 {
        return Err(SpecError {
            key: b"stack",
            value: b"",
            problem: Problem::SitesAndStack,
        });
    }
    if spec.min_size > spec.max_size {
        return Err(SpecError {
            key: b"min-size",
            value: b"",
            problem: Problem::SizeRange,
        });
    }
    // The path's failures come before the one the process is for: unless
    // `times` says otherwise, one failure more each.
    if seen & (1 << 2) == 0 && spec.sites_after_len != 0 {
        spec.times = 1 + i64::from(spec.sites_after_len);
    }
    Ok(spec)
}

/// Sets `key` of `spec` to `value`: the key's index (each may be given
/// once), `None` for an unknown key, or the values the key accepts.
fn set_value(spec: &mut Spec, key: &[u8], value: &[u8]) -> Result<Option<u32>, &'static str> {
    Ok(match key {
        b"probability" => {
            spec.probability_nano = parse_percent(value).ok_or(PROBABILITY)?;
            Some(0)
        }
        b"interval" => {
            spec.interval = parse_u64(value).filter(|&n| n >= 1).ok_or(WHOLE_POSITIVE)?;
            Some(1)
        }
        b"times" => {
            spec.times = if value == b"-1" {
                -1
            } else {
                parse_u64(value)
                    .and_then(|n| i64::try_from(n).ok())
                    .ok_or(TIMES)?
            };
            Some(2)
        }
        b"space" => {
            spec.space = parse_bytes(value).map_err(|()| BYTES)? as u64;
            Some(3)
        }
        b"min-size" => {
            spec.min_size = parse_bytes(value).map_err(|()| BYTES)?;
            Some(4)
        }
        b"max-size" => {
            spec.max_size = parse_bytes(value).map_err(|()| BYTES)?;
            Some(5)
        }
        b"task-filter" => {
            spec.task_filter = yes_no(value).ok_or(YES_NO)?;
            Some(6)
        }
        b"after" => {
            spec.after = parse_u64(value).ok_or(WHOLE)?;
            Some(7)
        }
        b"seed" => {
            spec.seed = Some(parse_u64(value).ok_or(WHOLE)?);
            Some(8)
        }
        b"verbose" => {
            spec.verbose = match value {
                b"0" => 0,
                b"1" => 1,
                b"2" => 2,
                _ => return Err(VERBOSE),
            };
            Some(9)
        }
        b"transient" => {
            spec.transient = yes_no(value).ok_or(YES_NO)?;
            Some(10)
        }
        b"report" => {
            spec.report = yes_no(value).ok_or(YES_NO)?;
            Some(11)
        }
        b"nth" => {
            spec.nth = parse_u64(value).filter(|&n| n >= 1).ok_or(WHOLE_POSITIVE)?;
            Some(12)
        }
        _ => return set_walk_value(spec, key, value),
    })
}

/// [`set_value`] for the keys that choose what is walked or replayed
/// (`thread`, `sites`, `stack`, `sites-*`).
fn set_walk_value(spec: &mut Spec, key: &[u8], value: &[u8]) -> Result<Option<u32>, &'static str> {
    Ok(match key {
        b"thread" => {
            // Replay lines escape bytes as \xNN; decode them.
            let len = crate::text::unescape(value, &mut spec.thread)
                .filter(|&len| len > 0)
                .ok_or(THREAD)?;
            spec.thread_len = len as u8;
            Some(13)
        }
        b"sites" => {
            // Like thread names, \xNN escapes stand for bytes the
            // grammar cannot hold (a comma) or a shell line would mangle.
            let len = crate::text::unescape(value, &mut spec.sites[..MAX_SITES_PATH])
                .filter(|&len| len > 0 && !spec.sites[..len].contains(&0))
                .ok_or(SITES)?;
            spec.sites_len = len as u16;
            Some(14)
        }
        b"stack" => {
            spec.stack = parse_hex(value).filter(|&id| id != 0).ok_or(STACK)?;
            Some(15)
        }
        b"sites-skip" => {
            spec.sites_skip = parse_u64(value).ok_or(WHOLE)?;
            Some(16)
        }
        b"sites-all" => {
            spec.sites_all = yes_no(value).ok_or(YES_NO)?;
            Some(17)
        }
        b"sites-shard" => {
            spec.sites_shard = parse_shard(value).ok_or(SHARD)?;
            Some(18)
        }
        b"sites-after" => {
            let mut len = 0;
            for id in value.split(|&b| b == b'+') {
                let id = parse_hex(id).filter(|&id| id != 0).ok_or(AFTER)?;
                *spec.sites_after.get_mut(len).ok_or(AFTER)? = id;
                len += 1;
            }
            spec.sites_after_len = len as u8;
            Some(19)
        }
        b"sites-fork" => {
            spec.sites_fork_ms = parse_u64(value).ok_or(WHOLE)?;
            Some(20)
        }
        b"sites-fork-test" => {
            spec.sites_fork_test = yes_no(value).ok_or(YES_NO)?;
            Some(21)
        }
        b"sites-fork-output" => {
            spec.sites_fork_output = yes_no(value).ok_or(YES_NO)?;
            Some(22)
        }
        _ => None,
    })
}

/// [sites] `K/N` with 1 <= K <= N.
fn parse_shard(v: &[u8]) -> Option<(u32, u32)> {
    let slash = v.iter().position(|&b| b == b'/')?;
    let k = u32::try_from(parse_u64(&v[..slash])?).ok()?;
    let n = u32::try_from(parse_u64(&v[slash + 1..])?).ok()?;
    (1..=n).contains(&k).then_some((k, n))
}

/// [sites] 1 to 16 hex digits.
fn parse_hex(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 16 {
        return None;
    }
    v.iter().try_fold(0u64, |id, &b| {
        let digit = (b as char).to_digit(16)?;
        Some(id << 4 | u64::from(digit))
    })
}

/// The canonical form: every key that differs from its default, in grammar
/// order, plus the seed actually used.
pub(crate) struct Canonical<'a> {
    pub(crate) spec: &'a Spec,
    pub(crate) seed: u64,
}

impl fmt::Display for Canonical<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.spec;
        let d = Spec::DEFAULT;
        let whole = s.probability_nano / 1_000_000_000;
        let mut fraction = s.probability_nano % 1_000_000_000;
        write!(f, "probability={whole}")?;
        if fraction != 0 {
            let mut digits = 9;
            while fraction.is_multiple_of(10) {
                fraction /= 10;
                digits -= 1;
            }
            write!(f, ".{fraction:0digits$}")?;
        }
        if s.interval != d.interval {
            write!(f, ",interval={}", s.interval)?;
        }
        if s.times != d.times {
            write!(f, ",times={}", s.times)?;
        }
        if s.space != d.space {
            write!(f, ",space={}", s.space)?;
        }
        if s.min_size != d.min_size {
            write!(f, ",min-size={}", s.min_size)?;
        }
        if s.max_size != d.max_size {
            write!(f, ",max-size={}", s.max_size)?;
        }
        if s.task_filter {
            f.write_str(",task-filter=Y")?;
        }
        if s.after != d.after {
            write!(f, ",after={}", s.after)?;
        }
        write!(f, ",seed={}", self.seed)?;
        if s.verbose != d.verbose {
            write!(f, ",verbose={}", s.verbose)?;
        }
        if s.transient {
            f.write_str(",transient=Y")?;
        }
        if !s.report {
            f.write_str(",report=N")?;
        }
        if s.nth != d.nth {
            write!(f, ",nth={}", s.nth)?;
        }
        if s.thread_len != 0 {
            write!(f, ",thread={}", Replayable(s.thread_name()))?;
        }
        if s.sites_len != 0 {
            write!(f, ",sites={}", Replayable(s.sites_path()))?;
        }
        if s.stack != 0 {
            write!(f, ",stack={:016x}", s.stack)?;
        }
        if s.sites_skip != 0 {
            write!(f, ",sites-skip={}", s.sites_skip)?;
        }
        if s.sites_all {
            f.write_str(",sites-all=Y")?;
        }
        if s.sites_shard != d.sites_shard {
            write!(f, ",sites-shard={}/{}", s.sites_shard.0, s.sites_shard.1)?;
        }
        for (i, id) in s.sites_after[..s.sites_after_len as usize]
            .iter()
            .enumerate()
        {
            let lead = if i == 0 { ",sites-after=" } else { "+" };
            write!(f, "{lead}{id:016x}")?;
        }
        if s.sites_fork_ms != 0 {
            write!(f, ",sites-fork={}", s.sites_fork_ms)?;
        }
        if s.sites_fork_test {
            f.write_str(",sites-fork-test=Y")?;
        }
        if s.sites_fork_output {
            f.write_str(",sites-fork-output=Y")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Spec {
        parse(s.as_bytes()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn problem(s: &str) -> Problem {
        parse(s.as_bytes()).expect_err(s).problem
    }

    #[test]
    fn defaults_follow_the_kernel() {
        let s = ok("probability=100");
        assert_eq!((s.interval, s.times, s.space), (1, 1, 0));
        assert!(s.report && !s.transient && !s.task_filter);
        assert_eq!(s.threshold(), 1 << 32);
    }

    #[test]
    fn every_key_parses() {
        let s = ok(
            "probability=0.5, interval=3,times=-1,space=2K,min-size=16,max-size=1M,\
                    task-filter=Y,after=100,seed=42,verbose=2,transient=Y,report=N,nth=7,thread=worker",
        );
        assert_eq!(s.probability_nano, 500_000_000);
        assert_eq!((s.interval, s.times, s.space), (3, -1, 2048));
        assert_eq!((s.min_size, s.max_size), (16, 1 << 20));
        assert!(s.task_filter && s.transient && !s.report);
        assert_eq!((s.after, s.seed, s.verbose, s.nth), (100, Some(42), 2, 7));
        assert_eq!(s.thread_name(), b"worker");
    }

    #[test]
    fn probability_takes_decimals_up_to_one_hundred() {
        assert_eq!(parse_percent(b"0"), Some(0));
        assert_eq!(parse_percent(b"100"), Some(PERCENT_100));
        assert_eq!(parse_percent(b"0.000000001"), Some(1));
        assert_eq!(parse_percent(b"12.5"), Some(12_500_000_000));
        for bad in [
            &b"100.1"[..],
            b"101",
            b"-1",
            b"abc",
            b".5",
            b"5.",
            b"1.0000000001",
            b"",
        ] {
            assert_eq!(parse_percent(bad), None, "{bad:?}");
        }
        assert_eq!(ok("probability=50").threshold(), 1 << 31);
    }

    #[test]
    fn bad_specs_name_their_problem() {
        assert_eq!(problem(""), Problem::Empty);
        assert_eq!(problem("  "), Problem::Empty);
        assert_eq!(problem("times=1,,interval=2"), Problem::EmptyPair);
        assert_eq!(problem("times=1,"), Problem::EmptyPair);
        assert_eq!(problem("times"), Problem::MissingEquals);
        assert_eq!(problem("probabilty=5"), Problem::UnknownKey);
        assert_eq!(problem("times=1,times=2"), Problem::Duplicate);
        assert_eq!(problem("probability=abc"), Problem::BadValue(PROBABILITY));
        assert_eq!(problem("interval=0"), Problem::BadValue(WHOLE_POSITIVE));
        assert_eq!(problem("times=-2"), Problem::BadValue(TIMES));
        assert_eq!(problem("space=12Q"), Problem::BadValue(BYTES));
        assert_eq!(problem("task-filter=maybe"), Problem::BadValue(YES_NO));
        assert_eq!(problem("verbose=3"), Problem::BadValue(VERBOSE));
        assert_eq!(
            problem("seed=99999999999999999999"),
            Problem::BadValue(WHOLE)
        );
        assert_eq!(problem("min-size=2K,max-size=1K"), Problem::SizeRange);
        assert_eq!(problem("thread="), Problem::BadValue(THREAD));
    }

    #[test]
    fn sites_keys_parse_and_print_back() {
        let s = ok("sites=/tmp/state,sites-shard=2/3");
        assert_eq!(s.sites_shard, (2, 3));
        for bad_shard in ["0/3", "4/3", "1/0", "3", "/3", "1/", "a/b", "1/4294967296"] {
            let spec = format!("sites=/tmp/state,sites-shard={bad_shard}");
            assert!(parse(spec.as_bytes()).is_err(), "{bad_shard}");
        }
        let s = ok("sites=/tmp/state,sites-skip=2,sites-all=Y");
        assert_eq!(s.sites_path(), b"/tmp/state");
        assert_eq!((s.sites_skip, s.sites_all, s.stack), (2, true, 0));
        let s = ok("sites=/tmp/s,sites-after=8c1f+00000000000002ab");
        assert_eq!(
            &s.sites_after[..s.sites_after_len as usize],
            [0x8c1f, 0x2ab]
        );
        assert_eq!(s.times, 3, "each of the path's failures, then the site's");
        assert_eq!(ok("stack=9,sites-after=8c1f").times, 2);
        assert_eq!(ok("stack=9,sites-after=8c1f,times=-1").times, -1);
        let text = Canonical { spec: &s, seed: 1 }.to_string();
        assert!(
            text.ends_with(",sites=/tmp/s,sites-after=0000000000008c1f+00000000000002ab"),
            "{text}"
        );
        assert_eq!(problem("sites-after=1+2+3+4+5"), Problem::BadValue(AFTER));
        assert_eq!(problem("sites-after=1++2"), Problem::BadValue(AFTER));
        assert_eq!(problem("sites-after=0"), Problem::BadValue(AFTER));
        let text = Canonical { spec: &s, seed: 1 }.to_string();
        assert_eq!(ok(&text), Spec { seed: Some(1), ..s }, "{text}");
        let s = ok("sites=/tmp/s,sites-fork=5000,sites-fork-test=Y");
        assert_eq!((s.sites_fork_ms, s.sites_fork_test), (5000, true));
        let text = Canonical { spec: &s, seed: 1 }.to_string();
        assert!(
            text.ends_with(",sites-fork=5000,sites-fork-test=Y"),
            "{text}"
        );
        assert_eq!(ok(&text), Spec { seed: Some(1), ..s }, "{text}");
        assert!(!ok("sites=/tmp/s,sites-fork-test=N").sites_fork_test);
        assert_eq!(problem("sites-fork-test=yes"), Problem::BadValue(YES_NO));
        let s = ok("stack=00000000DEADbeef");
        assert_eq!(s.stack, 0xdead_beef);
        let text = Canonical { spec: &s, seed: 1 }.to_string();
        assert!(text.contains("stack=00000000deadbeef"), "{text}");
        assert_eq!(problem("stack=0"), Problem::BadValue(STACK));
        assert_eq!(problem("stack=12345678901234567"), Problem::BadValue(STACK));
        assert_eq!(problem("stack=xyz"), Problem::BadValue(STACK));
        assert_eq!(problem("sites="), Problem::BadValue(SITES));
        assert_eq!(problem("sites=/a,stack=1"), Problem::SitesAndStack);
    }

    #[test]
    fn canonical_form_parses_back_to_the_same_spec() {
        for s in [
            "probability=100",
            "probability=0.25,interval=3,times=-1",
            "probability=1,space=1000,min-size=8,max-size=4096,task-filter=Y,after=5,verbose=1",
            "probability=100,transient=Y,report=N,nth=17,thread=main",
        ] {
            let spec = ok(s);
            let text = Canonical {
                spec: &spec,
                seed: 9,
            }
            .to_string();
            let again = ok(&text);
            assert_eq!(
                again,
                Spec {
                    seed: Some(9),
                    ..spec
                },
                "{text}"
            );
        }
    }
}
