//! The driver: runs every configuration binary on every workload, in both
//! builds (`release`, `release-lto`) and both forms (in-crate, out-of-line),
//! interleaved, then under callgrind, and prints one Markdown report.
//!
//! ```text
//! run-suite [--rounds N] [--only NAME,NAME] [--all] [--configs SLOT,SLOT]
//!           [--profiles release,release-lto] [--forms in-crate,out-of-line]
//!           [--no-time] [--no-callgrind] [--clock cpu|wall] [--jobs N]
//!           [--out FILE] [--csv-dir DIR]
//! ```
//!
//! `--all` adds the workloads outside the default set; `--configs` keeps only
//! the named configurations (System is always kept: every ratio needs it);
//! `--out` writes the report to a file as well; `--csv-dir` writes the raw
//! measurements there: `times.csv` (every timed run) and `instructions.csv`
//! (every callgrind run).
//!
//! Timing: in each round, for each workload and each build and form, every
//! configuration runs once, in a separate process (the order rotates from
//! round to round). The process warms the workload up on a fresh thread,
//! times it a few times and the driver keeps its fastest run. Each round
//! gives every wrapper a ratio to its inner allocator measured within a
//! second or two of it; the report shows the median of those ratios over the
//! rounds, with the smallest and largest. An A/A column (the System binary
//! against itself) shows how far apart two runs of one binary land: the
//! noise floor.
//!
//! Instructions: each configuration runs each workload once more under
//! `valgrind --tool=callgrind --toggle-collect='*callgrind_region*'`, which
//! counts only the measured run. The difference to the inner allocator,
//! divided by the allocations in the run (counted by the `StatsAlloc`
//! configuration; the operations when it was not run), is what the wrapper
//! adds per allocation.
//!
//! The driver itself is not measured: it keeps the default allocator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use mayfail_bench_suite::{Workload, cores, workloads};

/// One measured configuration: a binary, its label, and the binary of its
/// inner allocator (the denominator of its ratios), if it has one.
struct Config {
    slot: &'static str,
    bin: &'static str,
    label: &'static str,
    inner: Option<&'static str>,
}

const CONFIGS: &[Config] = &[
    Config {
        slot: "system",
        bin: "system",
        label: "System",
        inner: None,
    },
    Config {
        slot: "system-aa",
        bin: "system",
        label: "System again (A/A)",
        inner: Some("system"),
    },
    Config {
        slot: "mayfail-system",
        bin: "mayfail-system",
        label: "MayFail\\<System>",
        inner: Some("system"),
    },
    Config {
        slot: "mayfail-inject-idle",
        bin: "mayfail-inject-idle",
        label: "MayFail\\<System>, injection on, not firing",
        inner: Some("system"),
    },
    Config {
        slot: "retry-alloc-system",
        bin: "retry-alloc-system",
        label: "RetryAlloc\\<System>",
        inner: Some("system"),
    },
    Config {
        slot: "cap-system",
        bin: "cap-system",
        label: "Cap\\<System>",
        inner: Some("system"),
    },
    Config {
        slot: "stats-alloc-system",
        bin: "stats-alloc-system",
        label: "StatsAlloc\\<System>",
        inner: Some("system"),
    },
    Config {
        slot: "alloc-chaos-system",
        bin: "alloc-chaos-system",
        label: "ChaosAllocator\\<System>",
        inner: Some("system"),
    },
    Config {
        slot: "mimalloc",
        bin: "mimalloc",
        label: "MiMalloc",
        inner: None,
    },
    Config {
        slot: "mayfail-mimalloc",
        bin: "mayfail-mimalloc",
        label: "MayFail\\<MiMalloc>",
        inner: Some("mimalloc"),
    },
];

/// The peer wrappers of `System` the targets compare MayFail with.
const PEERS: [&str; 4] = [
    "retry-alloc-system",
    "cap-system",
    "stats-alloc-system",
    "alloc-chaos-system",
];

/// Workloads left out of the callgrind runs: their work runs on threads they
/// spawn, which `--toggle-collect` does not follow (it counts what runs
/// under `callgrind_region` on the thread that calls it). They are timed.
const NOT_COUNTED: [&str; 2] = ["maps-1t", "maps-2t"];

/// `a` with a sign, one decimal, and no "-0.0".
fn signed(a: f64) -> String {
    let a = if a.abs() < 0.05 { 0.0 } else { a };
    format!("{a:+.1}")
}

fn label(slot: &str) -> &str {
    CONFIGS
        .iter()
        .find(|c| c.slot == slot || c.bin == slot)
        .map_or(slot, |c| c.label)
}

/// A build (cargo profile) and the form of the workload code in it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Variant {
    profile: &'static str,
    form: &'static str,
}

impl Variant {
    fn label(self) -> String {
        let build = match self.profile {
            "release" => "default release build",
            "release-lto" => "LTO build (fat, 1 codegen unit)",
            other => other,
        };
        format!("{}, {build}", self.form)
    }
}

const PROFILES: [&str; 2] = ["release", "release-lto"];
const FORMS: [&str; 2] = ["in-crate", "out-of-line"];

struct Options {
    rounds: usize,
    only: Option<Vec<String>>,
    all: bool,
    configs: Option<Vec<String>>,
    profiles: Vec<&'static str>,
    forms: Vec<&'static str>,
    time: bool,
    callgrind: bool,
    jobs: usize,
    wall: bool,
    out: Option<PathBuf>,
    csv_dir: Option<PathBuf>,
}

/// The items of a comma-separated `value` that are in `known`.
fn pick(value: &str, known: &[&'static str], what: &str) -> Result<Vec<&'static str>, String> {
    value
        .split(',')
        .map(|v| {
            known
                .iter()
                .find(|k| **k == v)
                .copied()
                .ok_or(format!("unknown {what} {v} (known: {})", known.join(", ")))
        })
        .collect()
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        rounds: 9,
        only: None,
        all: false,
        configs: None,
        profiles: PROFILES.to_vec(),
        forms: FORMS.to_vec(),
        time: true,
        callgrind: true,
        jobs: cores().min(4),
        wall: false,
        out: None,
        csv_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--rounds" => o.rounds = value("--rounds")?.parse().map_err(|e| format!("{e}"))?,
            "--only" => {
                o.only = Some(value("--only")?.split(',').map(str::to_owned).collect());
            }
            "--all" => o.all = true,
            "--configs" => {
                let v = value("--configs")?;
                let slots: Vec<&'static str> = CONFIGS.iter().map(|c| c.slot).collect();
                let picked = pick(&v, &slots, "configuration")?;
                o.configs = Some(picked.into_iter().map(str::to_owned).collect());
            }
            "--profiles" => o.profiles = pick(&value("--profiles")?, &PROFILES, "profile")?,
            "--forms" => o.forms = pick(&value("--forms")?, &FORMS, "form")?,
            "--no-time" => o.time = false,
            "--no-callgrind" => o.callgrind = false,
            "--jobs" => o.jobs = value("--jobs")?.parse().map_err(|e| format!("{e}"))?,
            "--out" => o.out = Some(PathBuf::from(value("--out")?)),
            "--csv-dir" => o.csv_dir = Some(PathBuf::from(value("--csv-dir")?)),
            "--clock" => match value("--clock")?.as_str() {
                "cpu" => o.wall = false,
                "wall" => o.wall = true,
                other => return Err(format!("--clock takes cpu or wall, not {other}")),
            },
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.rounds == 0 || o.jobs == 0 {
        return Err("--rounds and --jobs must be at least 1".into());
    }
    Ok(o)
}

/// The directory of the build `profile`: a sibling of the one holding this
/// binary (`target/bench-suite/release`, `.../release-lto`).
fn bin_dir(profile: &str) -> PathBuf {
    std::env::current_exe()
        .expect("the driver's path")
        .parent()
        .and_then(Path::parent)
        .expect("a target directory")
        .join(profile)
}

/// A command for a configuration binary with no `MAYFAIL_*` variable from
/// the caller's environment: every configuration runs as built.
fn config_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MAYFAIL_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn run_ok(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Median, smallest and largest of `v` (not empty).
fn summary(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

fn format_ns(ns: f64) -> String {
    if ns >= 100_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 100.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{ns:.1} ns")
    }
}

/// Fastest run of `workload` in one process of `bin`, in nanoseconds of
/// CPU time (`wall`: of wall-clock time).
fn time_once(v: Variant, bin: &str, workload: &str, wall: bool) -> Result<f64, String> {
    let out =
        run_ok(config_command(&bin_dir(v.profile).join(bin)).args([v.form, "time", workload]))?;
    out.split_whitespace()
        .map(|t| {
            let (cpu, wall_ns) = t.split_once('/').ok_or(format!("{bin} {workload}: {t}"))?;
            let v = if wall { wall_ns } else { cpu };
            v.parse::<f64>()
                .map_err(|e| format!("{bin} {workload}: {e}"))
        })
        .try_fold(f64::INFINITY, |min, t| t.map(|t| min.min(t)))
}

/// Per workload, variant and slot: the time of each round, in nanoseconds.
type Times = BTreeMap<(String, Variant, &'static str), Vec<f64>>;

fn measure_times(
    configs: &[&Config],
    variants: &[Variant],
    list: &[Workload],
    rounds: usize,
    wall: bool,
) -> Result<Times, String> {
    let mut times = Times::new();
    let total = rounds * list.len() * variants.len() * configs.len();
    let mut done = 0;
    let start = Instant::now();
    for round in 0..rounds {
        for w in list {
            for &v in variants {
                for i in 0..configs.len() {
                    // Rotate the order so no configuration always runs first
                    // (or right after the same neighbour).
                    let c = configs[(i + round) % configs.len()];
                    let t = time_once(v, c.bin, w.name, wall)?;
                    times
                        .entry((w.name.to_owned(), v, c.slot))
                        .or_default()
                        .push(t);
                    done += 1;
                }
            }
        }
        eprintln!(
            "run-suite: timing round {}/{rounds} done ({done}/{total} runs, {:.0} s, load {})",
            round + 1,
            start.elapsed().as_secs_f64(),
            load_average()
        );
    }
    Ok(times)
}

/// Per workload, variant and slot: (median, min, max) of the per-round
/// ratios to the inner allocator, or of the absolute time per operation for
/// slots without one.
type Cells = BTreeMap<(String, Variant, &'static str), (f64, f64, f64)>;

fn ratios(list: &[Workload], times: &Times) -> Cells {
    let mut cells = Cells::new();
    for ((name, v, slot), mine) in times {
        let c = CONFIGS
            .iter()
            .find(|c| c.slot == *slot)
            .expect("a known slot");
        let Some(w) = list.iter().find(|w| w.name == name) else {
            continue;
        };
        let values: Vec<f64> = match c.inner {
            Some(inner) => {
                let Some(base) = times.get(&(name.clone(), *v, inner)) else {
                    continue;
                };
                mine.iter().zip(base).map(|(m, b)| m / b).collect()
            }
            None => mine.iter().map(|t| t / w.ops as f64).collect(),
        };
        cells.insert((name.clone(), *v, c.slot), summary(&values));
    }
    cells
}

/// Instructions counted inside the measured region of one callgrind run,
/// and what the run printed (the allocation counts, for `StatsAlloc`).
fn callgrind_once(
    v: Variant,
    out_dir: &Path,
    bin: &str,
    workload: &str,
    ops: u64,
) -> Result<(u64, String), String> {
    let stem = format!("callgrind.{}.{}.{bin}.{workload}", v.profile, v.form);
    let file = out_dir.join(format!("{stem}.out"));
    let mut cmd = config_command(Path::new("valgrind"));
    cmd.arg("--tool=callgrind")
        .arg("--toggle-collect=*callgrind_region*")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(format!(
            "--log-file={}",
            out_dir.join(format!("{stem}.log")).display()
        ))
        .arg(bin_dir(v.profile).join(bin))
        .args([v.form, "count", workload, &ops.to_string()]);
    let stdout = run_ok(&mut cmd)?;
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .ok_or(format!("no instruction total in {}", file.display()))?;
    Ok((total, stdout))
}

/// The callgrind results: instructions per workload, variant and binary,
/// and the allocations in the measured run per workload and variant (counted
/// by `StatsAlloc`, when it ran).
struct Counts {
    instructions: BTreeMap<(String, Variant, &'static str), u64>,
    allocs: BTreeMap<(String, Variant), u64>,
    ops: BTreeMap<String, u64>,
}

impl Counts {
    fn get(&self, w: &str, v: Variant, bin: &str) -> Option<f64> {
        let key = self
            .instructions
            .keys()
            .find(|k| k.0 == w && k.1 == v && k.2 == bin)?;
        Some(self.instructions[key] as f64)
    }

    /// The divisor of "added per allocation": the allocations `StatsAlloc`
    /// counted, or the operations.
    fn per(&self, w: &str, v: Variant) -> (f64, &'static str) {
        match self.allocs.get(&(w.to_owned(), v)) {
            Some(&n) if n > 0 => (n as f64, "allocation"),
            _ => (self.ops[w] as f64, "operation"),
        }
    }

    /// Instructions `bin` adds over `inner` per allocation (or operation),
    /// and in percent of the whole run.
    fn added(&self, w: &str, v: Variant, bin: &str, inner: &str) -> Option<(f64, f64)> {
        let (mine, base) = (self.get(w, v, bin)?, self.get(w, v, inner)?);
        Some((
            (mine - base) / self.per(w, v).0,
            (mine / base - 1.0) * 100.0,
        ))
    }
}

fn measure_instructions(
    configs: &[&Config],
    variants: &[Variant],
    out_dir: &Path,
    list: &[Workload],
    jobs: usize,
) -> Result<Counts, String> {
    let mut bins: Vec<&'static str> = configs.iter().map(|c| c.bin).collect();
    bins.dedup();
    let tasks: Vec<(&Workload, Variant, &'static str)> = list
        .iter()
        .flat_map(|w| {
            let bins = &bins;
            variants
                .iter()
                .flat_map(move |v| bins.iter().map(move |b| (w, *v, *b)))
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(w, v, bin)) = tasks.get(i) else {
                        break;
                    };
                    let r = callgrind_once(v, out_dir, bin, w.name, w.count_ops);
                    results.lock().unwrap().push((w.name, v, bin, r));
                }
            });
        }
    });
    let mut counts = Counts {
        instructions: BTreeMap::new(),
        allocs: BTreeMap::new(),
        ops: list
            .iter()
            .map(|w| (w.name.to_owned(), w.count_ops))
            .collect(),
    };
    for (name, v, bin, r) in results.into_inner().unwrap() {
        let (total, stdout) = r?;
        counts.instructions.insert((name.to_owned(), v, bin), total);
        if let Some(allocs) = stdout
            .split_whitespace()
            .skip_while(|t| *t != "allocs")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
        {
            counts.allocs.insert((name.to_owned(), v), allocs);
        }
    }
    Ok(counts)
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine_header(repo: &Path) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let repo = repo.to_string_lossy().into_owned();
    let commit = command_line("git", &["-C", &repo, "rev-parse", "--short", "HEAD"])
        .unwrap_or_else(|| "unknown".into());
    // What differs from the commit: a run of a clean tree names none.
    let dirty: Vec<String> = command_line("git", &["-C", &repo, "status", "--porcelain"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim_start().split_once(' '))
        .map(|(_, path)| path.trim_start().to_owned())
        .collect();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let rustc = command_line("rustc", &["--version"]).unwrap_or_default();
    let libc = command_line("ldd", &["--version"])
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let changes = match dirty.len() {
        0 => String::new(),
        n if n <= 8 => format!(" (uncommitted: {})", dirty.join(", ")),
        n => format!(" ({n} uncommitted files: {}, ...)", dirty[..8].join(", ")),
    };
    format!(
        "- Date: {date}\n- Machine: {} cores, {cpu}\n- Commit: {commit}{changes}\n- {rustc}; {libc}\n",
        cores(),
    )
}

fn time_tables(
    configs: &[&Config],
    variants: &[Variant],
    list: &[Workload],
    cells: &Cells,
    rounds: usize,
    wall: bool,
) -> String {
    let mut t = String::new();
    let clock = if wall {
        "wall-clock time"
    } else {
        "CPU time of all the process's threads"
    };
    let _ = writeln!(
        t,
        "Time ({clock}), one table per build and form: the median of {rounds} interleaved \
         rounds, with the smallest and largest. System and MiMalloc in time per operation, \
         every other column as a ratio to its inner allocator (System, or MiMalloc for \
         MayFail\\<MiMalloc>; below 1 is faster).\n"
    );
    for &v in variants {
        let _ = writeln!(t, "Time, {}:\n", v.label());
        let mut header = String::from("| workload | threads | operation |");
        let mut rule = String::from("|---|---:|---|");
        for c in configs {
            let _ = write!(header, " {} |", c.label);
            rule.push_str("---:|");
        }
        let _ = writeln!(t, "{header}\n{rule}");
        for w in list {
            let _ = write!(t, "| {} | {} | {} |", w.name, w.threads, w.op);
            for c in configs {
                let text = match (c.inner, cells.get(&(w.name.to_owned(), v, c.slot))) {
                    (None, Some(&(m, lo, hi))) => {
                        format!("{} ({}–{})", format_ns(m), format_ns(lo), format_ns(hi))
                    }
                    (Some(_), Some(&(m, lo, hi))) => format!("{m:.3} ({lo:.2}–{hi:.2})"),
                    (_, None) => "–".into(),
                };
                let _ = write!(t, " {text} |");
            }
            t.push('\n');
        }
        t.push('\n');
    }
    t
}

fn instruction_tables(
    configs: &[&Config],
    variants: &[Variant],
    list: &[Workload],
    counts: &Counts,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Instructions (callgrind, measured run only), one table per build and form. System \
         and MiMalloc: instructions per operation. Every other column: the instructions the \
         wrapper adds over its inner allocator per allocation (allocations counted by \
         StatsAlloc\\<System> in the same run; per operation where marked \"/op\"), and in \
         percent of the whole run. For `vec-pairs` an allocation is one \
         `Vec::with_capacity`+drop pair.\n"
    );
    let shown: Vec<&&Config> = configs.iter().filter(|c| c.slot != "system-aa").collect();
    for &v in variants {
        let _ = writeln!(t, "Instructions, {}:\n", v.label());
        let mut header = String::from("| workload | ops | allocations per op |");
        let mut rule = String::from("|---|---:|---:|");
        for c in &shown {
            let _ = write!(header, " {} |", c.label);
            rule.push_str("---:|");
        }
        let _ = writeln!(t, "{header}\n{rule}");
        for w in list {
            let ops = counts.ops[w.name];
            let (per, unit) = counts.per(w.name, v);
            let allocs = if unit == "allocation" {
                format!("{:.1}", per / ops as f64)
            } else {
                "–".into()
            };
            let _ = write!(t, "| {} | {ops} | {allocs} |", w.name);
            for c in &shown {
                let text = match c.inner {
                    None => counts
                        .get(w.name, v, c.bin)
                        .map_or("–".into(), |n| format!("{:.1}", n / ops as f64)),
                    Some(inner) => match counts.added(w.name, v, c.bin, inner) {
                        Some((a, pct)) => {
                            let op = if unit == "operation" { "/op" } else { "" };
                            format!("{}{op} ({pct:+.2} %)", signed(a))
                        }
                        None => "–".into(),
                    },
                };
                let _ = write!(t, " {text} |");
            }
            t.push('\n');
        }
        t.push('\n');
    }
    t
}

/// One row of the targets table, met or missed.
fn row(t: &mut String, target: &str, measured: String, ok: bool) {
    let verdict = if ok { "met" } else { "**missed**" };
    let _ = writeln!(t, "| {target} | {measured} | {verdict} |");
}

/// The targets for MayFail\<System>, each with the numbers that decide it,
/// per build.
fn targets(
    variants: &[Variant],
    list: &[Workload],
    cells: Option<&Cells>,
    counts: Option<&Counts>,
) -> String {
    let mut t = String::from("| build | target | measured | verdict |\n|---|---|---|---|\n");
    let build = |profile: &str| {
        if profile == "release" {
            "default"
        } else {
            "LTO"
        }
    };
    for profile in PROFILES {
        let b = build(profile);
        let v_in = Variant {
            profile,
            form: "in-crate",
        };
        let v_out = Variant {
            profile,
            form: "out-of-line",
        };
        if let Some(counts) = counts {
            let pair = |v: Variant, bin: &str| counts.added("vec-pairs", v, bin, "system");
            if let Some((mine, _)) = pair(v_in, "mayfail-system") {
                if let Some((retry, _)) = pair(v_in, "retry-alloc-system") {
                    row(
                        &mut t,
                        &format!(
                            "{b} | idle, in-crate `vec-pairs`: at most RetryAlloc + 4 per pair"
                        ),
                        format!(
                            "MayFail {}, RetryAlloc {}: limit {}",
                            signed(mine),
                            signed(retry),
                            signed(retry + 4.0)
                        ),
                        mine <= retry + 4.0 + 1e-9,
                    );
                }
                let others: Vec<(&str, f64)> =
                    ["cap-system", "stats-alloc-system", "alloc-chaos-system"]
                        .iter()
                        .filter_map(|p| pair(v_in, p).map(|(a, _)| (*p, a)))
                        .collect();
                if !others.is_empty() {
                    let text: Vec<String> = others
                        .iter()
                        .map(|(p, a)| format!("{} {}", label(p), signed(*a)))
                        .collect();
                    row(
                        &mut t,
                        &format!(
                            "{b} | idle, in-crate `vec-pairs`: no more than Cap, StatsAlloc, ChaosAllocator"
                        ),
                        format!("MayFail {}; {}", signed(mine), text.join(", ")),
                        others.iter().all(|(_, a)| mine <= *a + 1e-9),
                    );
                }
            }
            if let Some((_, mine)) = counts.added("btree-20k", v_in, "mayfail-system", "system") {
                let best = PEERS
                    .iter()
                    .filter_map(|p| {
                        counts
                            .added("btree-20k", v_in, p, "system")
                            .map(|(_, pct)| (*p, pct))
                    })
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                if let Some((peer, pct)) = best {
                    row(
                        &mut t,
                        &format!(
                            "{b} | idle, in-crate `btree-20k`: within 0.5 points of the best peer"
                        ),
                        format!(
                            "MayFail {mine:+.2} %, best peer {} {pct:+.2} %",
                            label(peer)
                        ),
                        mine <= pct + 0.5,
                    );
                }
            }
            if let Some((mine, _)) = pair(v_out, "mayfail-system") {
                row(
                    &mut t,
                    &format!(
                        "{b} | idle, out-of-line `vec-pairs` (through the shim): at most +11 per pair"
                    ),
                    format!("MayFail {}", signed(mine)),
                    mine <= 11.0 + 1e-9,
                );
            }
            if let Some((a, pct)) = pair(v_in, "mayfail-inject-idle") {
                row(
                    &mut t,
                    &format!(
                        "{b} | injection on, not firing, in-crate `vec-pairs`: at most +10 % instructions"
                    ),
                    format!("{} per pair, {pct:+.1} %", signed(a)),
                    pct <= 10.0,
                );
            }
        }
        if let Some(cells) = cells {
            for v in [v_in, v_out] {
                if !variants.contains(&v) {
                    continue;
                }
                let mut misses = Vec::new();
                let mut checked = 0;
                for w in list {
                    let key = |slot| (w.name.to_owned(), v, slot);
                    let (Some(m), Some(aa)) = (
                        cells.get(&key("mayfail-system")),
                        cells.get(&key("system-aa")),
                    ) else {
                        continue;
                    };
                    checked += 1;
                    if m.0 > aa.2 {
                        misses.push(format!(
                            "{} ({}t) {:.3}, A/A {:.2}–{:.2}",
                            w.name, w.threads, m.0, aa.1, aa.2
                        ));
                    }
                }
                if checked > 0 {
                    let measured = if misses.is_empty() {
                        format!("all {checked} workloads within")
                    } else {
                        format!("{} of {checked} above: {}", misses.len(), misses.join("; "))
                    };
                    row(
                        &mut t,
                        &format!(
                            "{b} | idle, {}: median time ratio within the A/A noise (at most \
                             the largest A/A ratio) on every workload, 1 and 2 threads",
                            v.form
                        ),
                        measured,
                        misses.is_empty(),
                    );
                }
            }
        }
    }
    t
}

/// The raw measurements, for the record and for other tools.
fn write_csv(
    dir: &Path,
    times: Option<&Times>,
    counts: Option<&Counts>,
    wall: bool,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(times) = times {
        let clock = if wall { "wall_ns" } else { "cpu_ns" };
        let mut text = format!("workload,profile,form,configuration,round,{clock}\n");
        for ((workload, v, slot), runs) in times {
            for (round, ns) in runs.iter().enumerate() {
                let _ = writeln!(
                    text,
                    "{workload},{},{},{slot},{},{ns:.0}",
                    v.profile,
                    v.form,
                    round + 1
                );
            }
        }
        write("times.csv", text)?;
    }
    if let Some(counts) = counts {
        let mut text = String::from("workload,profile,form,binary,instructions,ops,allocations\n");
        for ((workload, v, bin), n) in &counts.instructions {
            let allocs = counts
                .allocs
                .get(&(workload.clone(), *v))
                .map_or(String::new(), u64::to_string);
            let _ = writeln!(
                text,
                "{workload},{},{},{bin},{n},{},{allocs}",
                v.profile, v.form, counts.ops[workload]
            );
        }
        write("instructions.csv", text)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("run-suite: {e}");
            eprintln!(
                "usage: run-suite [--rounds N] [--only NAME,NAME] [--all] [--configs SLOT,SLOT] \
                 [--profiles release,release-lto] [--forms in-crate,out-of-line] [--no-time] \
                 [--no-callgrind] [--clock cpu|wall] [--jobs N] [--out FILE] [--csv-dir DIR]"
            );
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("run-suite: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let list: Vec<Workload> = workloads::all()
        .into_iter()
        .filter(|w| match &o.only {
            Some(only) => only.iter().any(|n| n == w.name),
            None => o.all || w.default,
        })
        .collect();
    if list.is_empty() {
        return Err("no workload selected".into());
    }
    let configs: Vec<&Config> = CONFIGS
        .iter()
        .filter(|c| {
            c.slot == "system"
                || o.configs
                    .as_ref()
                    .is_none_or(|k| k.iter().any(|s| s == c.slot))
        })
        .collect();
    let variants: Vec<Variant> = o
        .profiles
        .iter()
        .flat_map(|&profile| o.forms.iter().map(move |&form| Variant { profile, form }))
        .collect();
    for v in &variants {
        for c in &configs {
            let path = bin_dir(v.profile).join(c.bin);
            if !path.exists() {
                return Err(format!("{} is not built", path.display()));
            }
        }
    }
    let start = Instant::now();
    let mut report = machine_header(&repo);

    let times = if o.time {
        let before = load_average();
        let t = Instant::now();
        let times = measure_times(&configs, &variants, &list, o.rounds, o.wall)?;
        let _ = writeln!(
            report,
            "- Load average before / after timing: {before} / {} ({:.0} s of timing)",
            load_average(),
            t.elapsed().as_secs_f64()
        );
        Some(times)
    } else {
        None
    };
    let cells = times.as_ref().map(|t| ratios(&list, t));

    let counted: Vec<Workload> = workloads::all()
        .into_iter()
        .filter(|w| list.iter().any(|l| l.name == w.name) && !NOT_COUNTED.contains(&w.name))
        .collect();
    let counts = if o.callgrind && !counted.is_empty() {
        let out_dir = bin_dir(o.profiles[0]).join("callgrind");
        std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
        let before = load_average();
        let t = Instant::now();
        let counts = measure_instructions(&configs, &variants, &out_dir, &counted, o.jobs)?;
        let _ = writeln!(
            report,
            "- Load average before / after callgrind: {before} / {} ({:.0} s of callgrind, \
             {} jobs)",
            load_average(),
            t.elapsed().as_secs_f64(),
            o.jobs
        );
        Some(counts)
    } else {
        None
    };

    report.push('\n');
    if let Some(counts) = &counts {
        report.push_str(&instruction_tables(&configs, &variants, &counted, counts));
    }
    if let Some(cells) = &cells {
        report.push_str(&time_tables(
            &configs, &variants, &list, cells, o.rounds, o.wall,
        ));
    }
    report.push_str("Targets (MayFail\\<System>):\n\n");
    report.push_str(&targets(&variants, &list, cells.as_ref(), counts.as_ref()));
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The output paths say nothing about the measurement.
    for flag in ["--out", "--csv-dir"] {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args.drain(i..(i + 2).min(args.len()));
        }
    }
    let _ = writeln!(
        report,
        "\n(run-suite: {:.0} s, `run-suite{}{}`)",
        start.elapsed().as_secs_f64(),
        if args.is_empty() { "" } else { " " },
        args.join(" ")
    );

    if let Some(dir) = &o.csv_dir {
        write_csv(dir, times.as_ref(), counts.as_ref(), o.wall)?;
    }
    print!("{report}");
    if let Some(out) = &o.out {
        std::fs::write(out, &report).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_median_min_max() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
