//! The driver: runs every configuration binary on every workload,
//! interleaved, then under callgrind, and prints one Markdown report.
//!
//! ```text
//! run-suite [--rounds N] [--only NAME,NAME] [--no-time] [--no-callgrind]
//!           [--clock cpu|wall] [--callgrind-pairs N] [--jobs N] [--out FILE]
//!           [--csv-dir DIR]
//! ```
//!
//! `--out` writes the report to a file as well; `--csv-dir` writes the raw
//! measurements there: `times.csv` (every run: workload, configuration,
//! round, nanoseconds) and `instructions.csv` (workload, binary,
//! instructions, pairs).
//!
//! Timing: in each round, for each workload, every configuration runs once,
//! in a separate process (the order rotates from round to round). The
//! process warms the workload up on a fresh thread, times it `reps` times
//! and reports its fastest run. Each round gives every wrapper a ratio to its
//! inner allocator measured within seconds of it; the table shows the median
//! of those ratios over the rounds, with the smallest and largest. An A/A
//! column (System against System) shows how far apart two identical
//! binaries land on this machine: the noise floor.
//!
//! Instructions: each configuration runs workloads 1 and 3 under
//! `valgrind --tool=callgrind --toggle-collect='*callgrind_region*'`, which
//! counts only the measured run; the difference to the inner allocator,
//! divided by the alloc+free pairs in the run, is what the wrapper adds per
//! pair. The pairs of workload 3 are counted by the `StatsAlloc`
//! configuration.
//!
//! The driver itself is not measured: it keeps the default allocator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use mayfail_bench_suite::workloads::{self, Workload};

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

/// The wrappers compared with MayFail in the "cheaper than every peer" target.
const PEERS: [&str; 3] = ["retry-alloc-system", "cap-system", "stats-alloc-system"];

/// The largest chance, under "no difference" (each of a pair equally
/// likely to be the faster one in a round), of a result as lopsided as the
/// one called a difference: a two-sided sign test at 5 %.
const SIGN_TEST_TAIL: f64 = 0.025;

/// The smallest number of rounds out of `n` that one of two configurations
/// must win for the sign test to call it faster.
fn sign_test_wins(n: usize) -> usize {
    // P(X >= k) for X ~ Binomial(n, 1/2), from k = n down.
    let mut tail = 0.0;
    let mut choose = 1.0; // C(n, k), starting at k = n
    for k in (0..=n).rev() {
        tail += choose / 2f64.powi(n as i32);
        if tail > SIGN_TEST_TAIL {
            return k + 1;
        }
        choose = choose * k as f64 / (n - k + 1) as f64;
    }
    n + 1
}

/// Callgrind runs of workload 3 use its full size; workload 1 uses this
/// many pairs (per-pair figures do not depend on it).
const DEFAULT_CALLGRIND_PAIRS: u64 = 200_000;

struct Options {
    rounds: usize,
    only: Option<Vec<String>>,
    time: bool,
    callgrind: bool,
    callgrind_pairs: u64,
    jobs: usize,
    wall: bool,
    out: Option<PathBuf>,
    csv_dir: Option<PathBuf>,
}

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        rounds: 11,
        only: None,
        time: true,
        callgrind: true,
        callgrind_pairs: DEFAULT_CALLGRIND_PAIRS,
        jobs: workloads::cores().min(4),
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
            "--no-time" => o.time = false,
            "--no-callgrind" => o.callgrind = false,
            "--callgrind-pairs" => {
                o.callgrind_pairs = value("--callgrind-pairs")?
                    .parse()
                    .map_err(|e| format!("{e}"))?;
            }
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
    if o.rounds == 0 || o.jobs == 0 || o.callgrind_pairs == 0 {
        return Err("--rounds, --jobs and --callgrind-pairs must be at least 1".into());
    }
    Ok(o)
}

/// The directory holding this binary and its siblings.
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .expect("the driver's path")
        .parent()
        .expect("a directory")
        .to_path_buf()
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
    if ns >= 100.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{ns:.1} ns")
    }
}

/// Fastest run of `workload` in one process of `bin`, in nanoseconds of
/// CPU time (`wall`: of wall-clock time).
fn time_once(dir: &Path, bin: &str, workload: &str, wall: bool) -> Result<f64, String> {
    let out = run_ok(config_command(&dir.join(bin)).args(["time", workload]))?;
    out.split_whitespace()
        .map(|t| {
            let (cpu, wall_ns) = t.split_once('/').ok_or(format!("{bin} {workload}: {t}"))?;
            let v = if wall { wall_ns } else { cpu };
            v.parse::<f64>()
                .map_err(|e| format!("{bin} {workload}: {e}"))
        })
        .try_fold(f64::INFINITY, |min, t| t.map(|t| min.min(t)))
}

/// Per workload, per slot: the time of each round, in nanoseconds.
type Times = BTreeMap<(String, &'static str), Vec<f64>>;

fn measure_times(
    dir: &Path,
    list: &[Workload],
    rounds: usize,
    wall: bool,
) -> Result<Times, String> {
    let mut times = Times::new();
    let total = rounds * list.len() * CONFIGS.len();
    let mut done = 0;
    let start = Instant::now();
    for round in 0..rounds {
        for w in list {
            for i in 0..CONFIGS.len() {
                // Rotate the order so no configuration always runs first
                // (or right after the same neighbour).
                let c = &CONFIGS[(i + round) % CONFIGS.len()];
                let t = time_once(dir, c.bin, w.name, wall)?;
                times
                    .entry((w.name.to_owned(), c.slot))
                    .or_default()
                    .push(t);
                done += 1;
            }
        }
        eprintln!(
            "run-suite: timing round {}/{rounds} done ({done}/{total} runs, {:.0} s)",
            round + 1,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(times)
}

/// Per workload and slot: (median, min, max) of the per-round ratios to the
/// inner allocator, or of the absolute time per operation for slots without
/// one.
type Cells = BTreeMap<(String, &'static str), (f64, f64, f64)>;

fn ratios(list: &[Workload], times: &Times) -> Cells {
    let mut cells = Cells::new();
    for w in list {
        for c in CONFIGS {
            let Some(mine) = times.get(&(w.name.to_owned(), c.slot)) else {
                continue;
            };
            let values: Vec<f64> = match c.inner {
                Some(inner) => {
                    let base = &times[&(w.name.to_owned(), inner)];
                    mine.iter().zip(base).map(|(m, b)| m / b).collect()
                }
                None => mine.iter().map(|t| t / w.ops as f64).collect(),
            };
            cells.insert((w.name.to_owned(), c.slot), summary(&values));
        }
    }
    cells
}

/// Instructions counted inside the measured region of one callgrind run,
/// and what the run printed (the allocation counts, for `StatsAlloc`).
fn callgrind_once(
    dir: &Path,
    out_dir: &Path,
    bin: &str,
    workload: &str,
    ops: u64,
) -> Result<(u64, String), String> {
    let file = out_dir.join(format!("callgrind.{bin}.{workload}.out"));
    let mut cmd = config_command(Path::new("valgrind"));
    cmd.arg("--tool=callgrind")
        .arg("--toggle-collect=*callgrind_region*")
        .arg(format!("--callgrind-out-file={}", file.display()))
        .arg(format!(
            "--log-file={}",
            out_dir
                .join(format!("callgrind.{bin}.{workload}.log"))
                .display()
        ))
        .arg(dir.join(bin))
        .args(["count", workload, &ops.to_string()]);
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

/// Per workload: the instructions of each binary, and the alloc+free pairs
/// in the measured run.
struct Counts {
    instructions: BTreeMap<(String, &'static str), u64>,
    pairs: BTreeMap<String, u64>,
}

fn measure_instructions(
    dir: &Path,
    out_dir: &Path,
    list: &[&Workload],
    pairs_ops: u64,
    jobs: usize,
) -> Result<Counts, String> {
    let mut bins: Vec<&'static str> = CONFIGS.iter().map(|c| c.bin).collect();
    bins.dedup();
    let tasks: Vec<(&Workload, &'static str)> = list
        .iter()
        .flat_map(|w| bins.iter().map(move |b| (*w, *b)))
        .collect();
    let ops_of = |w: &Workload| if w.group == 1 { pairs_ops } else { w.ops };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(w, bin)) = tasks.get(i) else { break };
                    let r = callgrind_once(dir, out_dir, bin, w.name, ops_of(w));
                    results.lock().unwrap().push((w.name, bin, r));
                }
            });
        }
    });
    let mut counts = Counts {
        instructions: BTreeMap::new(),
        pairs: BTreeMap::new(),
    };
    for (name, bin, r) in results.into_inner().unwrap() {
        let (total, stdout) = r?;
        counts.instructions.insert((name.to_owned(), bin), total);
        if let Some(allocs) = stdout
            .split_whitespace()
            .skip_while(|t| *t != "allocs")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
        {
            counts.pairs.insert(name.to_owned(), allocs);
        }
    }
    for w in list {
        counts.pairs.entry(w.name.to_owned()).or_insert(ops_of(w));
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
        workloads::cores(),
    )
}

fn cell(c: Option<&(f64, f64, f64)>) -> String {
    match c {
        Some(&(m, lo, hi)) => format!("{m:.3} ({lo:.2}–{hi:.2})"),
        None => "–".into(),
    }
}

fn time_table(list: &[Workload], cells: &Cells, rounds: usize, wall: bool) -> String {
    let mut t = String::new();
    let clock = if wall {
        "wall-clock time"
    } else {
        "CPU time of all the process's threads"
    };
    let _ = writeln!(
        t,
        "Time ({clock}): the median of {rounds} interleaved rounds, with the smallest and \
         largest. System and MiMalloc in time per operation, every other column as a ratio to \
         its inner allocator (System, or MiMalloc for MayFail\\<MiMalloc>; below 1 is \
         faster).\n"
    );
    let mut header = String::from("| workload | operation |");
    let mut rule = String::from("|---|---|");
    for c in CONFIGS {
        let _ = write!(header, " {} |", c.label);
        rule.push_str("---:|");
    }
    let _ = writeln!(t, "{header}\n{rule}");
    for w in list {
        let _ = write!(t, "| {} | {} |", w.name, w.op);
        for c in CONFIGS {
            let v = cells.get(&(w.name.to_owned(), c.slot));
            let text = match (c.inner, v) {
                (None, Some(&(m, lo, hi))) => {
                    format!("{} ({}–{})", format_ns(m), format_ns(lo), format_ns(hi))
                }
                _ => cell(v),
            };
            let _ = write!(t, " {text} |");
        }
        t.push('\n');
    }
    t
}

/// Instructions per pair that `bin` adds over `inner` on `workload`.
fn added(counts: &Counts, workload: &str, bin: &str, inner: &str) -> Option<f64> {
    let mine = *counts.instructions.get(&(workload.to_owned(), bin))? as f64;
    let base = *counts.instructions.get(&(workload.to_owned(), inner))? as f64;
    Some((mine - base) / *counts.pairs.get(workload)? as f64)
}

fn instruction_table(list: &[&Workload], counts: &Counts) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Instructions (callgrind, measured run only): System and MiMalloc in instructions per \
         alloc+free pair of the whole workload, every other column as the instructions each \
         wrapper adds per alloc+free pair over its inner allocator, and, for btree-1m, over \
         the whole workload in percent.\n"
    );
    let mut header = String::from("| workload | pairs |");
    let mut rule = String::from("|---|---:|");
    for c in CONFIGS.iter().filter(|c| c.slot != "system-aa") {
        let _ = write!(header, " {} |", c.label);
        rule.push_str("---:|");
    }
    let _ = writeln!(t, "{header}\n{rule}");
    for w in list {
        let pairs = counts.pairs.get(w.name).copied().unwrap_or(0);
        let _ = write!(t, "| {} | {pairs} |", w.name);
        for c in CONFIGS.iter().filter(|c| c.slot != "system-aa") {
            let text = match c.inner {
                None => counts
                    .instructions
                    .get(&(w.name.to_owned(), c.bin))
                    .map_or("–".into(), |&n| format!("{:.1}", n as f64 / pairs as f64)),
                Some(inner) => match added(counts, w.name, c.bin, inner) {
                    Some(a) if w.group == 3 => {
                        let total = counts.instructions[&(w.name.to_owned(), c.bin)] as f64;
                        let base = counts.instructions[&(w.name.to_owned(), inner)] as f64;
                        format!("{a:+.1} ({:+.2} %)", (total / base - 1.0) * 100.0)
                    }
                    Some(a) => format!("{a:+.1}"),
                    None => "–".into(),
                },
            };
            let _ = write!(t, " {text} |");
        }
        t.push('\n');
    }
    t
}

/// One row of the targets table.
fn row_with(t: &mut String, target: &str, measured: String, verdict: &str) {
    let _ = writeln!(t, "| {target} | {measured} | {verdict} |");
}

/// One row of the targets table, met or missed.
fn row(t: &mut String, target: &str, measured: String, ok: bool) {
    row_with(t, target, measured, if ok { "met" } else { "**missed**" });
}

/// The issue's targets, each with the numbers that decide it.
fn targets(
    list: &[Workload],
    times: Option<&Times>,
    cells: Option<&Cells>,
    counts: Option<&Counts>,
) -> String {
    let mut t = String::from("| target | measured | verdict |\n|---|---|---|\n");

    if let Some(counts) = counts {
        let btree = list.iter().find(|w| w.group == 3).map(|w| w.name);
        if let Some(b) = btree {
            let mine = counts.instructions.get(&(b.to_owned(), "mayfail-system"));
            let base = counts.instructions.get(&(b.to_owned(), "system"));
            if let (Some(&m), Some(&s)) = (mine, base) {
                let pct = (m as f64 / s as f64 - 1.0) * 100.0;
                row(
                    &mut t,
                    "MayFail\\<System> idle within 1 % of System in instructions, workload 3",
                    format!("{pct:+.2} % on {b}"),
                    pct <= 1.0,
                );
            }
        }
        let worst = list
            .iter()
            .filter(|w| w.group == 1)
            .filter_map(|w| added(counts, w.name, "mayfail-system", "system").map(|a| (a, w.name)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((a, name)) = worst {
            row(
                &mut t,
                "At most 5 instructions added per alloc+free pair, workload 1",
                format!("{a:+.1} (largest, {name})"),
                a <= 5.0,
            );
        }
    }
    if let Some(cells) = cells {
        let worst = |slot: &str, group: Option<u8>| {
            list.iter()
                .filter(|w| group.is_none_or(|g| w.group == g))
                .filter_map(|w| cells.get(&(w.name.to_owned(), slot)).map(|c| (c.0, w.name)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        for (slot, label) in [
            ("mayfail-system", "MayFail\\<System>"),
            ("mayfail-mimalloc", "MayFail\\<MiMalloc>"),
        ] {
            if let Some((r, name)) = worst(slot, None) {
                row(
                    &mut t,
                    &format!("{label} idle within 2 % in time on every workload"),
                    format!("largest median ratio {r:.3} ({name})"),
                    r <= 1.02,
                );
            }
        }
        if let Some((r, name)) = worst("system-aa", None) {
            row(
                &mut t,
                "(noise floor: System against itself, A/A)",
                format!("largest median ratio {r:.3} ({name})"),
                true,
            );
        }
        if let Some((r, name)) = worst("mayfail-inject-idle", Some(1)) {
            let idle = cells
                .get(&(name.to_owned(), "mayfail-system"))
                .map_or(f64::NAN, |c| c.0);
            row(
                &mut t,
                "Injection on, not firing, within 10 % in time, workload 1",
                format!(
                    "largest median ratio to System {r:.3} ({name}); {:.3} of MayFail idle there",
                    r / idle
                ),
                r <= 1.10,
            );
        }
        for base in ["larson", "glibc-thread"] {
            let Some(times) = times else { break };
            // The wrapper's share must not grow with the threads: its ratio
            // to System at N threads against its ratio at 1 thread, round by
            // round (sign test), so that one noisy round decides nothing.
            let per_round = |workload: &str| -> Option<Vec<f64>> {
                let mine = times.get(&(workload.to_owned(), "mayfail-system"))?;
                let base = times.get(&(workload.to_owned(), "system"))?;
                Some(mine.iter().zip(base).map(|(m, b)| m / b).collect())
            };
            let Some(one) = per_round(&format!("{base}-1t")) else {
                continue;
            };
            for many in ["2t", "Nt"] {
                let Some(more) = per_round(&format!("{base}-{many}")) else {
                    continue;
                };
                let worse = more.iter().zip(&one).filter(|(m, o)| m > o).count();
                let scales_worse = worse >= sign_test_wins(more.len());
                row(
                    &mut t,
                    &format!(
                        "Scales like System: MayFail\\<System>'s ratio at {many} not above \
                         its ratio at 1 thread, {base}"
                    ),
                    format!(
                        "median {:.3} at {many}, {:.3} at 1t; higher at {many} in {worse} of {} \
                         rounds",
                        summary(&more).0,
                        summary(&one).0,
                        more.len()
                    ),
                    !scales_worse,
                );
            }
        }
        for peer in PEERS {
            let label = CONFIGS
                .iter()
                .find(|c| c.slot == peer)
                .map_or(peer, |c| c.label);
            let (mut faster, mut unclear, mut slower) = (0, 0, Vec::new());
            for w in list {
                let Some(times) = times else { break };
                let (Some(m), Some(p)) = (
                    times.get(&(w.name.to_owned(), "mayfail-system")),
                    times.get(&(w.name.to_owned(), peer)),
                ) else {
                    continue;
                };
                // Paired by round: both ran within seconds of each other.
                let wins = m.iter().zip(p).filter(|(m, p)| m < p).count();
                let needed = sign_test_wins(m.len());
                if wins >= needed {
                    faster += 1;
                } else if m.len() - wins >= needed {
                    let (mm, pm) = (summary(m).0, summary(p).0);
                    slower.push(format!("{} by {:.1} %", w.name, (mm / pm - 1.0) * 100.0));
                } else {
                    unclear += 1;
                }
            }
            let mut measured = format!(
                "MayFail faster on {faster} workloads, no clear difference on {unclear}, \
                 slower on {}",
                slower.len()
            );
            if !slower.is_empty() {
                let _ = write!(measured, " ({})", slower.join(", "));
            }
            // The verdict is on time; the instructions have a row of their own.
            let verdict = if !slower.is_empty() {
                "**missed**"
            } else if unclear == 0 {
                "met"
            } else {
                "not shown"
            };
            row_with(
                &mut t,
                &format!("Cheaper than {label} in time"),
                measured,
                verdict,
            );
        }
        if let Some(counts) = counts {
            let per_pair = |bin: &str| {
                list.iter()
                    .filter(|w| w.group == 1)
                    .filter_map(|w| added(counts, w.name, bin, "system"))
                    .fold(f64::NEG_INFINITY, f64::max)
            };
            let mine = per_pair("mayfail-system");
            let peers: Vec<String> = PEERS
                .iter()
                .map(|p| {
                    let label = CONFIGS
                        .iter()
                        .find(|c| c.slot == *p)
                        .map_or(*p, |c| c.label);
                    format!("{label} {:+.1}", per_pair(p))
                })
                .collect();
            row(
                &mut t,
                "Fewer instructions than every peer wrapper, workload 1",
                format!(
                    "MayFail\\<System> {mine:+.1} per pair; {}",
                    peers.join(", ")
                ),
                PEERS.iter().all(|p| mine < per_pair(p)),
            );
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
        let mut text = format!("workload,configuration,round,{clock}\n");
        for ((workload, slot), runs) in times {
            for (round, ns) in runs.iter().enumerate() {
                let _ = writeln!(text, "{workload},{slot},{},{ns:.0}", round + 1);
            }
        }
        write("times.csv", text)?;
    }
    if let Some(counts) = counts {
        let mut text = String::from("workload,binary,instructions,pairs\n");
        for ((workload, bin), n) in &counts.instructions {
            let pairs = counts.pairs.get(workload).copied().unwrap_or(0);
            let _ = writeln!(text, "{workload},{bin},{n},{pairs}");
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
                "usage: run-suite [--rounds N] [--only NAME,NAME] [--no-time] [--no-callgrind] \
                 [--clock cpu|wall] [--callgrind-pairs N] [--jobs N] [--out FILE] \
                 [--csv-dir DIR]"
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
    let dir = bin_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let list: Vec<Workload> = workloads::all()
        .into_iter()
        .filter(|w| {
            o.only
                .as_ref()
                .is_none_or(|only| only.iter().any(|n| n == w.name))
        })
        .collect();
    if list.is_empty() {
        return Err("no workload selected".into());
    }
    let start = Instant::now();
    let mut report = machine_header(&repo);

    let times = if o.time {
        let before = load_average();
        let times = measure_times(&dir, &list, o.rounds, o.wall)?;
        let _ = writeln!(
            report,
            "- Load average before / after timing: {before} / {} ({:.0} s of timing)",
            load_average(),
            start.elapsed().as_secs_f64()
        );
        Some(times)
    } else {
        None
    };
    let cells = times.as_ref().map(|t| ratios(&list, t));

    let counted: Vec<&Workload> = list.iter().filter(|w| matches!(w.group, 1 | 3)).collect();
    let counts = if o.callgrind && !counted.is_empty() {
        let out_dir = dir.join("callgrind");
        std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
        let t = Instant::now();
        let counts = measure_instructions(&dir, &out_dir, &counted, o.callgrind_pairs, o.jobs)?;
        eprintln!(
            "run-suite: callgrind done ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
        Some(counts)
    } else {
        None
    };

    report.push('\n');
    if let Some(cells) = &cells {
        report.push_str(&time_table(&list, cells, o.rounds, o.wall));
        report.push('\n');
    }
    if let Some(counts) = &counts {
        report.push_str(&instruction_table(&counted, counts));
        report.push('\n');
    }
    report.push_str("Targets:\n\n");
    report.push_str(&targets(
        &list,
        times.as_ref(),
        cells.as_ref(),
        counts.as_ref(),
    ));
    let _ = writeln!(
        report,
        "\n(run-suite: {:.0} s, `run-suite --rounds {}`)",
        start.elapsed().as_secs_f64(),
        o.rounds
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
    fn the_sign_test_needs_lopsided_rounds() {
        assert_eq!(sign_test_wins(5), 6, "5 rounds can never show a difference");
        assert_eq!(sign_test_wins(9), 8);
        assert_eq!(sign_test_wins(11), 10);
        assert_eq!(sign_test_wins(15), 12);
    }

    #[test]
    fn summary_is_median_min_max() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
