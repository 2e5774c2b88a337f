//! One small server under real memory pressure, run with the retry knob at
//! `-1` (retry forever, the default), `0` (never retry) and `3`.
//!
//! ```sh
//! cargo run --release --example pressure
//! RUST_LOG=mayfail=warn cargo run --release --example pressure   # also log final failures
//! ```
//!
//! The program re-runs itself three times as `pressure --child`, with
//! `MAYFAIL_RETRIES` set to each value and `MAYFAIL_STALL_MS=500`. Each child
//! caps its own address space with `setrlimit(RLIMIT_AS)` (no root needed),
//! fills 4 MiB of it with a cache of 4 KiB entries that is registered as a
//! reclaimer, and fills the rest with a [`Ballast`]: from then on every null
//! comes from the system allocator, nothing is simulated.
//!
//! - Phase 1, reclaimable pressure: requests allocate a 4 KiB buffer with
//!   `Vec::try_reserve_exact` and store the response in the cache. Memory is
//!   only available through reclaim, which evicts the coldest entry.
//! - Phase 2, true exhaustion: readers pin the whole cache (nothing is
//!   reclaimable) and sessions arrive that keep their buffers. There is room
//!   for two of them; a session that gets `Err` is shed.
//!
//! A child reports each step on stdout, which is allocated before the limit so
//! that printing never allocates; the parent parses those lines, kills a child
//! whose phase runs longer than 2 s, and prints a table. It exits non-zero if a
//! knob value did not behave as the policy says, so it doubles as a smoke test.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use mayfail::MayFail;
use mayfail::pressure::{Ballast, limit_address_space};

#[global_allocator]
static GLOBAL: MayFail<std::alloc::System> = MayFail::system();

const CHILD_FLAG: &str = "--child";
const KNOBS: [isize; 3] = [-1, 0, 3];
const STALL_MS: &str = "500";
/// A phase still running after this long is declared stalled and killed.
const KILL_AFTER: Duration = Duration::from_secs(2);
/// The longest a child may take to set itself up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_millis(100);

const HEADROOM: usize = 16 << 20;
const ENTRY_BYTES: usize = 4096;
const CACHE_ENTRIES: usize = 1024;
const REQUESTS: usize = 8;
const SESSIONS: usize = 6;
/// Sessions that fit in phase 2: the cache drops this many entries before it is pinned.
const SESSION_ROOM: usize = 2;
const PHASE_NAMES: [&str; 2] = ["1 reclaimable", "2 exhausted"];

/// The cache: oldest (coldest) entries at the front.
static CACHE: Mutex<VecDeque<Box<[u8]>>> = Mutex::new(VecDeque::new());

/// The cache's reclaimer: evicts the coldest entries until `wanted` bytes are freed.
fn evict_cold_entries(wanted: usize) -> usize {
    // The failing thread may hold the cache lock itself: never wait for it.
    let Ok(mut cache) = CACHE.try_lock() else {
        return 0;
    };
    let mut freed = 0;
    while freed < wanted {
        match cache.pop_front() {
            Some(entry) => freed += entry.len(),
            None => break,
        }
    }
    freed
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (None, _) => parent(),
        (Some(flag), None) if flag == CHILD_FLAG => child(),
        (Some(flag), None) if flag == "-h" || flag == "--help" => {
            println!("usage: pressure    (runs the demo; takes no arguments)");
            ExitCode::SUCCESS
        }
        (Some(flag), extra) => {
            let known = flag == CHILD_FLAG || flag == "-h" || flag == "--help";
            let bad: OsString = match extra {
                Some(extra) if known => extra,
                _ => flag,
            };
            eprintln!(
                "pressure: unexpected argument {bad:?}: run it with no argument (the demo) or \
                 --help; `{CHILD_FLAG}` alone is what the demo passes to its own children"
            );
            ExitCode::from(2)
        }
    }
}

/// mayfail's counters, in the order a child prints and the parent parses
/// them: retries, recovered, failed, stalls, reclaimer calls.
#[derive(Clone, Copy, Debug, Default)]
struct Tally([u64; 5]);

impl Tally {
    fn now() -> Tally {
        let s = mayfail::stats();
        Tally([
            s.retries,
            s.recovered,
            s.failed,
            s.stalls,
            s.reclaimer_calls,
        ])
    }

    fn parse<'a>(fields: impl Iterator<Item = &'a str>) -> Option<Tally> {
        let numbers: Vec<u64> = fields.map(str::parse).collect::<Result<_, _>>().ok()?;
        Some(Tally(numbers.try_into().ok()?))
    }

    fn since(self, base: Tally) -> Tally {
        Tally(std::array::from_fn(|i| self.0[i].saturating_sub(base.0[i])))
    }

    /// The later of two snapshots, whichever order their lines arrived in.
    fn latest(self, other: Tally) -> Tally {
        Tally(std::array::from_fn(|i| self.0[i].max(other.0[i])))
    }
}

/// Each counter after a space; formatting does not allocate.
impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|n| write!(f, " {n}"))
    }
}

// ---------------------------------------------------------------- the child

/// Runs one phase of `count` requests and prints its lines; `keep` takes
/// each buffer that was served.
fn run_phase(phase: usize, count: usize, mut keep: impl FnMut(Box<[u8]>)) {
    println!("begin {phase}{}", Tally::now());
    let started = Instant::now();
    for request in 0..count {
        match request_buffer(b'a' + request as u8) {
            (Some(buffer), retries) => {
                keep(buffer);
                println!("ok {phase} {retries}");
            }
            (None, retries) => println!("err {phase} {retries}"),
        }
    }
    let micros = started.elapsed().as_micros();
    println!("end {phase} {micros}{}", Tally::now());
}

/// A 4 KiB buffer filled with `byte`, allocated fallibly; and the retries it took.
fn request_buffer(byte: u8) -> (Option<Box<[u8]>>, u64) {
    let before = mayfail::stats();
    let mut buffer = Vec::new();
    let reserved = buffer.try_reserve_exact(ENTRY_BYTES).is_ok();
    let retries = mayfail::stats().since(&before).retries;
    if !reserved {
        return (None, retries);
    }
    buffer.resize(ENTRY_BYTES, byte); // within capacity: no allocation
    (Some(buffer.into_boxed_slice()), retries)
}

fn child() -> ExitCode {
    env_logger::Builder::from_default_env()
        .filter_module("pressure", log::LevelFilter::Info)
        .init();
    if log::log_enabled!(target: "mayfail", log::Level::Warn) {
        // mayfail logs a final failure from inside the allocator, where any
        // allocation fails at once; env_logger's first record on a thread
        // allocates (and under exhaustion aborts the process): log one now.
        log::info!("logging on: mayfail's final-failure warnings (at most one a second) follow");
    }
    let log_level = log::max_level();
    // The first print allocates stdout's buffer: do it while memory is plentiful.
    println!("knob {} {}", mayfail::retries(), mayfail::stall_ms());
    // A heartbeat reports the counters every 100 ms, so that the parent still
    // learns what a child stuck in the allocator has been doing.
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::spawn(move || {
        println!("stats{}", Tally::now());
        let _ = ready_tx.send(());
        loop {
            std::thread::sleep(HEARTBEAT);
            println!("stats{}", Tally::now());
        }
    });
    let _ = ready_rx.recv(); // its first line, too, is printed before the limit
    mayfail::add_reclaimer(evict_cold_entries).expect("a free reclaimer slot");
    CACHE.lock().unwrap().reserve_exact(CACHE_ENTRIES);
    let mut sessions: Vec<Box<[u8]>> = Vec::with_capacity(SESSIONS);

    let limit = match limit_address_space(HEADROOM) {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("pressure: cannot limit the address space: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Filling up fails on purpose: keep those failures out of the log (and
    // out of its one-a-second rate limit).
    log::set_max_level(log::LevelFilter::Off);
    for i in 0..CACHE_ENTRIES {
        let Some(entry) = mayfail::noretry(|| request_buffer(i as u8).0) else {
            eprintln!("pressure: the {HEADROOM}-byte headroom did not hold the cache");
            return ExitCode::FAILURE;
        };
        CACHE.lock().unwrap().push_back(entry);
    }
    let mut ballast = Ballast::new();
    if let Err(e) = ballast.fill() {
        eprintln!("pressure: cannot fill the ballast: {e}");
        return ExitCode::FAILURE;
    }
    log::set_max_level(log_level);

    // Phase 1: each request stores its response in the cache.
    run_phase(0, REQUESTS, |response| {
        CACHE.lock().unwrap().push_back(response)
    });
    // Phase 2: readers pin the cache, minus room for a few sessions.
    let pinned = {
        let mut cache = CACHE.lock().unwrap();
        cache.drain(..SESSION_ROOM).for_each(drop);
        std::mem::take(&mut *cache)
    };
    run_phase(1, SESSIONS, |session| sessions.push(session)); // an Err sheds the session
    drop((sessions, pinned, ballast, limit));
    ExitCode::SUCCESS
}

// --------------------------------------------------------------- the parent

/// What the parent learnt about one phase of one child.
#[derive(Default)]
struct Phase {
    begun_at: Option<Instant>,
    base: Tally,
    latest: Tally,
    /// Per request: served or not, and after how many retries.
    requests: Vec<(bool, u64)>,
    /// The child's own measure, when the phase ended.
    elapsed: Option<Duration>,
    killed_after: Option<Duration>,
}

impl Phase {
    fn served(&self) -> usize {
        self.requests.iter().filter(|r| r.0).count()
    }
    fn errs(&self) -> usize {
        self.requests.len() - self.served()
    }
    fn counters(&self) -> Tally {
        self.latest.since(self.base)
    }
}

#[derive(Default)]
struct ChildRun {
    knob: isize,
    knob_seen: Option<isize>,
    phases: [Phase; 2],
    current: Option<usize>,
    exited_ok: bool,
    stderr: String,
}

impl ChildRun {
    fn record(&mut self, at: Instant, line: &str) -> Option<()> {
        let mut fields = line.split_whitespace();
        let kind = fields.next()?;
        if kind == "knob" {
            self.knob_seen = fields.next()?.parse().ok();
            return Some(());
        }
        if kind == "stats" {
            let tally = Tally::parse(fields)?;
            if let Some(phase) = self.current {
                let phase = &mut self.phases[phase];
                phase.latest = phase.latest.latest(tally);
            }
            return Some(());
        }
        let index: usize = fields.next()?.parse().ok().filter(|&i| i < 2)?;
        let phase = &mut self.phases[index];
        match kind {
            "begin" => {
                (phase.begun_at, phase.base) = (Some(at), Tally::parse(fields)?);
                phase.latest = phase.base;
                self.current = Some(index);
            }
            "ok" | "err" => {
                let retries = fields.next()?.parse().ok()?;
                phase.requests.push((kind == "ok", retries));
            }
            "end" => {
                phase.elapsed = Some(Duration::from_micros(fields.next()?.parse().ok()?));
                phase.latest = Tally::parse(fields)?;
                self.current = None;
            }
            _ => {}
        }
        Some(())
    }
}

fn run_child(knob: isize) -> std::io::Result<ChildRun> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg(CHILD_FLAG)
        .env("MAYFAIL_RETRIES", knob.to_string())
        .env("MAYFAIL_STALL_MS", STALL_MS)
        .env_remove("MAYFAIL_SMALL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (lines_tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = lines_tx.send((Instant::now(), line));
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let spawned = Instant::now();
    let mut run = ChildRun {
        knob,
        ..Default::default()
    };
    loop {
        let deadline = match run.current {
            Some(phase) => run.phases[phase].begun_at.unwrap() + KILL_AFTER,
            None => spawned + SETUP_TIMEOUT,
        };
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((at, line)) => _ = run.record(at, &line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                child.kill()?;
                if let Some(phase) = run.current {
                    let begun = run.phases[phase].begun_at.unwrap();
                    run.phases[phase].killed_after = Some(begun.elapsed());
                }
                break;
            }
        }
    }
    for (at, line) in lines {
        run.record(at, &line);
    }
    run.exited_ok = child.wait()?.success();
    run.stderr = stderr_reader.join().unwrap_or_default();
    Ok(run)
}

/// What did not behave as the policy says.
fn check(run: &ChildRun) -> Vec<String> {
    let [reclaimable, exhausted] = &run.phases;
    let [retries_1, _, failed_1, _, reclaims_1] = reclaimable.counters().0;
    let [retries_2, _, failed_2, stalls_2, reclaims_2] = exhausted.counters().0;
    let room = &exhausted.requests[..exhausted.requests.len().min(SESSION_ROOM)];
    let shed = &exhausted.requests[room.len()..];
    let errs = (reclaimable.errs() + exhausted.errs()) as u64;
    let read_knob = run.knob_seen == Some(run.knob);
    let ran_phase_1 = reclaimable.requests.len() == REQUESTS;
    let ran_phase_2 = exhausted.requests.len() == SESSIONS;
    let served_room = room.len() == SESSION_ROOM && room.iter().all(|&r| r == (true, 0));
    let counted_errs = failed_1 + failed_2 == errs;
    let ended = run.exited_ok && ran_phase_2 || run.knob == -1;
    // Served after 1..=n retries.
    let within = |n: u64| move |r: &(bool, u64)| r.0 && (1..=n).contains(&r.1);
    let mut checks = vec![
        (read_knob, "the child did not report the knob it was given"),
        (ran_phase_1, "phase 1 did not complete"),
        (served_room, "the free room served no session"),
        (counted_errs, "failures and Errs differ"),
        (ended, "the child did not complete (its stderr is above)"),
    ];
    checks.extend(match run.knob {
        0 => {
            let reclaimed = reclaims_1 + reclaims_2 > 0;
            let retried = retries_1 + retries_2 > 0;
            vec![
                (reclaimable.served() == 0, "0 served a request"),
                (!reclaimed, "0 called the reclaimer"),
                (!retried, "0 retried"),
            ]
        }
        -1 => {
            let via_reclaim = reclaimable.requests.iter().all(within(u64::MAX));
            let warned = run.stderr.contains("stalled");
            vec![
                (errs == 0, "-1 returned an Err"),
                (via_reclaim, "a request was not served via reclaim"),
                (exhausted.killed_after.is_some(), "-1 did not stall"),
                (stalls_2 == 1, "-1 did not count exactly one stall"),
                (warned, "-1 stalled without a warning on stderr"),
            ]
        }
        n => {
            let n = n as u64;
            let via_reclaim = reclaimable.requests.iter().all(within(n));
            let gave_up = shed.iter().all(|&r| r == (false, n));
            vec![
                (via_reclaim, "a request was not served within N retries"),
                (gave_up, "an Err did not come after exactly N retries"),
            ]
        }
    });
    let knob = run.knob;
    let failed = checks.into_iter().filter(|check| !check.0);
    let problem = |(_, what)| format!("MAYFAIL_RETRIES={knob}: {what}");
    failed.map(problem).collect()
}

fn show_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn print_row(run: &ChildRun, index: usize) {
    let phase = &run.phases[index];
    let retried: Vec<u64> = phase
        .requests
        .iter()
        .filter(|r| r.0 && r.1 > 0)
        .map(|r| r.1)
        .collect();
    let recovered = match retried.iter().max() {
        Some(max) => format!("{} ({}/{max})", retried.len(), retried.iter().sum::<u64>()),
        None => "0".to_string(),
    };
    let [retries, mayfail_recovered, failed, stalls, _] = phase.counters().0;
    let counters = format!("{retries}/{mayfail_recovered}/{failed}/{stalls}");
    let outcome = match phase.killed_after {
        Some(_) => format!("stalled, killed after {:.1} s", KILL_AFTER.as_secs_f64()),
        None if phase.begun_at.is_none() => "did not run".to_string(),
        None if phase.elapsed.is_none() => "the child died (stderr above)".to_string(),
        None if phase.errs() == 0 => "all served".to_string(),
        None if index == 0 => "premature Errs: memory was reclaimable".to_string(),
        None => format!("degraded: {} shed", phase.errs()),
    };
    let wall = phase
        .killed_after
        .or(phase.elapsed)
        .map_or("-".to_string(), show_duration);
    let knob = if index == 0 {
        run.knob.to_string()
    } else {
        String::new()
    };
    let (served, total) = (phase.served(), [REQUESTS, SESSIONS][index]);
    println!(
        "{knob:>5}  {:<14} {served:>3}/{total:<3} {recovered:<11} {:>4}  {counters:<12} {outcome:<40} {wall:>6}",
        PHASE_NAMES[index],
        phase.errs(),
    );
}

fn parent() -> ExitCode {
    println!(
        "Each child: address space capped 16 MiB above its use, a 4 MiB cache of 4 KiB entries"
    );
    println!(
        "(registered as a reclaimer), the rest ballast; {REQUESTS} requests, then {SESSIONS} sessions.\n"
    );
    let mut runs = Vec::new();
    for knob in KNOBS {
        match run_child(knob) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("pressure: cannot run the child with MAYFAIL_RETRIES={knob}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for run in &runs {
        for line in run.stderr.lines() {
            println!("child {:>2} stderr: {line}", run.knob);
        }
    }
    println!(
        "\n{:>5}  {:<14} {:<7} {:<11} {:>4}  {:<12} {:<40} {:>6}",
        "knob", "phase", "served", "recovered", "Errs", "r/rec/f/st", "outcome", "wall"
    );
    for run in &runs {
        print_row(run, 0);
        print_row(run, 1);
    }
    println!(
        "\nrecovered: requests served after k retries, as count (k total/max). Errs: clean Errs the\n\
         program saw. r/rec/f/st: mayfail's retries/recovered/failed/stalls in that phase.\n\
         -1 always finds reclaimable memory but hangs when there is none; 0 fails even when the\n\
         cache could have given memory back; 3 recovers via reclaim and fails cleanly when it cannot."
    );
    let problems: Vec<String> = runs.iter().flat_map(check).collect();
    if problems.is_empty() {
        println!("\nok: each knob value behaved as the policy says.");
        return ExitCode::SUCCESS;
    }
    println!();
    for problem in &problems {
        println!("UNEXPECTED: {problem}");
    }
    ExitCode::FAILURE
}
