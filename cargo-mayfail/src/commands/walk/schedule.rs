//! The per-test engine's processes: a pool that runs up to `--jobs` test
//! processes at once, each in a process group of its own, killed at
//! `--timeout`, interrupted with the walk; and the scheduler that walks
//! each test, one process after another, until a process of it fails no
//! new stack.
//!
//! A binary's first process under injection meets and records the stacks
//! of the runtime and the test harness (`runtime` lines, resolved once);
//! until it has ended, no other process of that binary starts, so that the
//! others skip them instead of resolving them again. Processes of
//! different tests may still fail the same new stack at once: the report
//! merges a site's processes, and the worst outcome stands.
//!
//! When no queued test can start and a core is idle (the last tests of a
//! walk, with many sites each), a test under way gets more copies at once,
//! copy k letting its first k new stacks pass (`sites-skip=k`): a test's
//! walk is complete when all the copies of a round end without failing a
//! new stack.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mayfail::state::{Line, parse_line};

use super::targets::{self, Binary, CargoTest};
use super::{Walked, sites};
use crate::failure::Failure;
use crate::process::{self, interrupted};
use crate::progress::Progress;
use crate::report::{WALKED, seconds};
use crate::state::{Outcome, StackId};
use sites::Setup;

/// How long interrupted processes are given before they are killed.
const PATIENCE: Duration = Duration::from_secs(5);

/// How a process ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ended {
    /// By itself, with this status.
    Exited(ExitStatus),
    /// Killed at the timeout.
    TimedOut,
    /// Interrupted (Ctrl-C), or killed after it.
    Interrupted,
}

impl Ended {
    /// Exit 0, or a status declared handled.
    pub(crate) fn passed(&self, handled_exit: &[u8]) -> bool {
        matches!(self, Ended::Exited(status) if sites::ended_well(status, handled_exit))
    }

    /// [`Ended::passed`], for a process of `binary`: a `should_panic`
    /// doctest passes by panicking (exit 101).
    pub(crate) fn passed_for(&self, binary: &Binary, handled_exit: &[u8]) -> bool {
        self.passed(handled_exit)
            || (binary.should_panic
                && matches!(self, Ended::Exited(status) if status.code() == Some(101)))
    }

    /// `exit 101`, `killed after 600 s`.
    pub(crate) fn describe(&self, timeout: Duration) -> String {
        match self {
            Ended::Exited(status) => process::describe_status(status),
            Ended::TimedOut => sites::hung(timeout).1,
            Ended::Interrupted => "interrupted".to_owned(),
        }
    }

    /// The fate of a site its process failed without writing one.
    fn fate(&self, timeout: Duration) -> Option<(Outcome, String)> {
        match self {
            Ended::Exited(status) => Some(sites::fate_of(status)),
            Ended::TimedOut => Some(sites::hung(timeout)),
            Ended::Interrupted => None,
        }
    }
}

/// A process under way.
struct Live<T> {
    child: Child,
    /// When it is killed, unless the children it forks at its sites show
    /// it is still at work.
    deadline: Instant,
    /// It forks at its sites (`sites-fork`).
    forking: bool,
    started: std::time::SystemTime,
    tag: T,
    /// When the interrupt was passed on to it.
    interrupted: Option<Instant>,
    /// The file its output goes to until it ends (then to the log).
    output: PathBuf,
}

/// Up to `jobs` processes at once.
pub(crate) struct Pool<'a, T> {
    setup: &'a Setup,
    jobs: usize,
    live: Vec<Live<T>>,
    /// Processes started, to name their output files.
    spawned: u64,
}

/// Where the processes' output waits until each ends: beside the state
/// file, removed once the walk's processes have all ended.
pub(crate) fn output_dir(setup: &Setup) -> PathBuf {
    let mut dir = setup.paths.state.clone().into_os_string();
    dir.push(".output");
    PathBuf::from(dir)
}

/// What a process did, once it has ended.
pub(crate) struct Finished<T> {
    pub(crate) tag: T,
    pub(crate) pid: u32,
    pub(crate) ended: Ended,
    /// Where its test panicked, if it did.
    pub(crate) panicked: Option<String>,
    /// Its output holds a line that tells a test failed (a panic's, or a
    /// returned `Err`'s `Error: ...`).
    pub(crate) says_failed: bool,
    /// The children it forked at its sites: pid, and where the test
    /// panicked in each, if it did.
    pub(crate) children: Vec<(u32, Option<String>)>,
    /// What each site cost it: the time from each child's fork to the next
    /// one's, or to the process's end; without children, its whole time.
    pub(crate) costs: Vec<Duration>,
}

/// How long after the last sign of a forking process's last child the
/// process may still run, beyond the timeout.
const FORK_SLACK: Duration = Duration::from_secs(2);

/// The output files of the children a process forked at its sites (the
/// library names them after the process's own, `PATH.PID`), by pid.
fn forked_outputs(output: &Path) -> Vec<(u32, PathBuf)> {
    let (Some(dir), Some(name)) = (output.parent(), output.file_name()) else {
        return Vec::new();
    };
    let mut prefix = name.to_os_string();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let file = entry.file_name();
            let pid = file.as_encoded_bytes().strip_prefix(prefix)?;
            let pid = std::str::from_utf8(pid).ok()?.parse().ok()?;
            Some((pid, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// What each site cost a process that ended just now, started at
/// `started`: from each forked child's output file's creation (its fork) to
/// the next one's, the last one's to now; with no child, its whole time.
fn site_costs(outputs: &[(u32, PathBuf)], started: std::time::SystemTime) -> Vec<Duration> {
    let now = std::time::SystemTime::now();
    let mut forks: Vec<std::time::SystemTime> = outputs
        .iter()
        .filter_map(|(_, path)| std::fs::metadata(path).ok()?.created().ok())
        .collect();
    if forks.len() != outputs.len() {
        return Vec::new();
    }
    if forks.is_empty() {
        return now.duration_since(started).into_iter().collect();
    }
    forks.sort();
    forks.push(now);
    forks
        .windows(2)
        .filter_map(|pair| pair[1].duration_since(pair[0]).ok())
        .collect()
}

/// The median of `costs` (`None` when there are none).
fn median(costs: &mut [Duration]) -> Option<Duration> {
    costs.sort();
    costs.get(costs.len() / 2).copied()
}

/// How long ago the newest of a process's forked children was forked: its
/// output file's creation (what writes to it later, a program the child
/// started, never pushes the process's deadline on).
fn newest_child_age(output: &Path) -> Option<Duration> {
    forked_outputs(output)
        .iter()
        .filter_map(|(_, path)| {
            let meta = std::fs::metadata(path).ok()?;
            meta.created()
                .or_else(|_| meta.modified())
                .ok()?
                .elapsed()
                .ok()
        })
        .min()
}

/// Where a test panicked, from the test harness's output: the first
/// `thread 'NAME' panicked at FILE:LINE:COL:` line's `FILE:LINE` (newer
/// std writes the thread's id after its name: `'NAME' (ID) panicked`).
pub(crate) fn panic_location(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let rest = line.strip_prefix("thread '")?;
        let (_, at) = rest.split_once(" panicked at ")?;
        let at = at.strip_suffix(':').unwrap_or(at);
        // FILE:LINE:COL, the file possibly holding colons itself.
        let (file_line, column) = at.rsplit_once(':')?;
        column.parse::<u32>().ok()?;
        let (file, line) = file_line.rsplit_once(':')?;
        line.parse::<u32>().ok()?;
        Some(format!("{file}:{line}"))
    })
}

impl<'a, T> Pool<'a, T> {
    pub(crate) fn new(setup: &'a Setup, jobs: usize) -> Self {
        Pool {
            setup,
            jobs: jobs.max(1),
            live: Vec::new(),
            spawned: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.live.len() >= self.jobs
    }

    /// Starts `command` in a process group of its own, its output in a
    /// file of its own (moved to the log once it ends: the log keeps each
    /// process's output whole, and the runner reads how its test ended);
    /// returns its pid.
    fn spawn(&mut self, mut command: Command, tag: T, forking: bool) -> Result<u32, Failure> {
        let dir = output_dir(self.setup);
        std::fs::create_dir_all(&dir).map_err(|e| Failure::io("create", &dir, e))?;
        self.spawned += 1;
        let path = dir.join(self.spawned.to_string());
        let file = std::fs::File::create(&path).map_err(|e| Failure::io("create", &path, e))?;
        let output = || {
            file.try_clone()
                .map(Stdio::from)
                .map_err(|e| Failure::io("write", &path, e))
        };
        command.stdout(output()?).stderr(output()?).process_group(0);
        let program = command.get_program().to_owned();
        let child = command
            .spawn()
            .map_err(|e| Failure::spawn(process::shell_quote(&program), e))?;
        let pid = child.id();
        self.live.push(Live {
            child,
            deadline: Instant::now() + self.setup.timeout,
            forking,
            started: std::time::SystemTime::now(),
            tag,
            interrupted: None,
            output: path,
        });
        Ok(pid)
    }

    /// Waits for a process to end and returns what it did; `None` when
    /// none is under way. Its output, and that of the children it forked,
    /// is moved to the log.
    fn wait_any(&mut self) -> Option<Finished<T>> {
        loop {
            if self.live.is_empty() {
                return None;
            }
            for i in 0..self.live.len() {
                if let Some(ended) = self.poll(i) {
                    let live = self.live.swap_remove(i);
                    let (panicked, says_failed) = self.to_log(&live.output);
                    let outputs = forked_outputs(&live.output);
                    let costs = site_costs(&outputs, live.started);
                    let children = outputs
                        .into_iter()
                        .map(|(pid, path)| (pid, self.to_log(&path).0))
                        .collect();
                    return Some(Finished {
                        tag: live.tag,
                        pid: live.child.id(),
                        ended,
                        panicked,
                        says_failed,
                        children,
                        costs,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Moves a process's output file to the log; where its test panicked,
    /// if it did, and whether the output tells a test failed.
    fn to_log(&self, path: &Path) -> (Option<String>, bool) {
        let output = std::fs::read(path).unwrap_or_default();
        let _ = std::fs::remove_file(path);
        let mut log = &self.setup.log;
        let _ = std::io::Write::write_all(&mut log, &output);
        let output = String::from_utf8_lossy(&output);
        let panicked = panic_location(&output);
        let says_failed =
            panicked.is_some() || output.lines().any(|line| line.starts_with("Error: "));
        (panicked, says_failed)
    }

    /// Whether process `i` has ended (reaped), after it is killed at the
    /// timeout or an interrupt is passed on.
    fn poll(&mut self, i: usize) -> Option<Ended> {
        let timeout = self.setup.timeout;
        let live = &mut self.live[i];
        if let Ok(Some(status)) = live.child.try_wait() {
            return Some(match live.interrupted {
                Some(_) if !status.success() => Ended::Interrupted,
                _ => Ended::Exited(status),
            });
        }
        if interrupted() && live.interrupted.is_none() {
            live.interrupted = Some(Instant::now());
            process::signal_group(&live.child, libc::SIGINT);
        }
        let stubborn = live.interrupted.is_some_and(|at| at.elapsed() > PATIENCE);
        let now = Instant::now();
        if live.forking && live.interrupted.is_none() && now > live.deadline {
            // Its timeout counts from its last child's fork (each child is
            // killed after the timeout by the process itself).
            if let Some(age) = newest_child_age(&live.output) {
                live.deadline = live
                    .deadline
                    .max(now + (timeout + FORK_SLACK).saturating_sub(age));
            }
        }
        if stubborn || (live.interrupted.is_none() && now > live.deadline) {
            process::signal_group(&live.child, libc::SIGKILL);
            let _ = live.child.wait();
            return Some(if stubborn {
                Ended::Interrupted
            } else {
                Ended::TimedOut
            });
        }
        None
    }

    /// Runs every command, `jobs` at once, and returns how each ended.
    pub(crate) fn run_all(
        &mut self,
        commands: Vec<(T, Command)>,
    ) -> Result<Vec<(T, Ended)>, Failure> {
        let mut ended = Vec::new();
        let mut commands = commands.into_iter();
        loop {
            while !self.is_full() && !interrupted() {
                let Some((tag, command)) = commands.next() else {
                    break;
                };
                self.spawn(command, tag, false)?;
            }
            match self.wait_any() {
                Some(finished) => ended.push((finished.tag, finished.ended)),
                None => return Ok(ended),
            }
        }
    }
}

/// The lines processes wrote since the last look: which sites each pid
/// failed, and which of them have a fate.
struct Tail {
    offset: u64,
    /// Per process the walk started: the sites it failed itself.
    sites: HashMap<u32, Vec<u64>>,
    /// Per forked child (parent, pid): the site it failed (its site line's
    /// `parent=PID` fact; keyed by both, as a pid may be used again).
    forked: HashMap<(u32, u32), Vec<u64>>,
    fates: HashMap<(u64, u32), Outcome>,
    /// Sites given a `retry` line by a process that forked them (the
    /// runner's own are not counted: see `own_retries`).
    retries: HashSet<u64>,
    /// The `retry` lines the runner wrote and has not read back yet.
    own_retries: HashMap<u64, usize>,
    /// The processes that wrote a `no-fork` line.
    no_fork: HashSet<u32>,
    /// Sites whose allocation serves a panic's message: no error path of
    /// the code's own follows them.
    panics: HashSet<u64>,
}

impl Tail {
    /// Reads the whole lines appended since the last call.
    fn read(&mut self, setup: &Setup) -> Result<(), Failure> {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let at = self.offset + bytes.len() as u64;
            match setup.state_file.read_at(&mut chunk, at) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::io("read the state file", &setup.paths.state, e)),
            }
        }
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        self.offset += whole as u64;
        for line in String::from_utf8_lossy(&bytes[..whole]).lines() {
            match parse_line(line) {
                Ok(Line::Site { id, pid, facts, .. }) => {
                    if facts.split(',').any(|fact| fact == "panic") {
                        self.panics.insert(id);
                    }
                    let parent = facts
                        .split(',')
                        .find_map(|fact| fact.strip_prefix("parent="))
                        .and_then(|parent| parent.parse::<u32>().ok());
                    match parent {
                        Some(parent) => self.forked.entry((parent, pid)).or_default().push(id),
                        None => self.sites.entry(pid).or_default().push(id),
                    }
                }
                Ok(Line::Fate {
                    id, pid, outcome, ..
                }) => {
                    self.fates.entry((id, pid)).or_insert(outcome);
                }
                Ok(Line::Retry { id }) => match self.own_retries.get_mut(&id) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => {
                        self.retries.insert(id);
                    }
                },
                Ok(Line::NoFork { pid, .. }) => {
                    self.no_fork.insert(pid);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Walks the tests: keeps `jobs` processes under way, each running one
/// test under injection, and decides after each what its test needs next.
pub(crate) struct Scheduler<'a> {
    setup: &'a Setup,
    binaries: &'a [Binary],
    command: &'a CargoTest,
    run: u64,
    pool: Pool<'a, usize>,
    spec: String,
    tail: Tail,
    /// Per binary: a process of it has ended (its runtime stacks are known).
    warm: Vec<bool>,
    /// Per binary: its processes under way.
    busy: Vec<usize>,
    /// Per test: its copies under way since it left the queue.
    rounds: Vec<Round>,
    /// How long a process forking at its sites waits for each child, in
    /// ms (`None`: `--no-fork`, one site per process).
    fork_ms: Option<u64>,
    /// The tests whose processes no longer fork: a child of theirs was
    /// killed or lost, or the test panics while it passes.
    unforked: HashSet<usize>,
    /// What each site found cost (see [`site_costs`]).
    costs: Vec<Duration>,
    sites: usize,
    processes: usize,
    /// Error paths: at most this many failures in a process (`--depth`).
    depth: usize,
    /// Per test (its fields) and path: the sites found handled or failed,
    /// whose error paths are walked once that path's walk is complete.
    explorable: HashMap<(String, Vec<u64>), Vec<u64>>,
    /// The error-path walks queued (test, path).
    scheduled: HashSet<(String, Vec<u64>)>,
    /// The error paths (test, path) whose process found a site in an
    /// earlier walk: not walked again (the next new allocation on them
    /// would be another), their sites explored in turn.
    walked_paths: HashSet<(String, Vec<u64>)>,
}

impl<'a> Scheduler<'a> {
    pub(crate) fn new(
        setup: &'a Setup,
        binaries: &'a [Binary],
        command: &'a CargoTest,
        run: u64,
        jobs: usize,
        fork: bool,
    ) -> Result<Self, Failure> {
        let offset = setup
            .state_file
            .metadata()
            .map_err(|e| Failure::io("read the state file", &setup.paths.state, e))?
            .len();
        Ok(Scheduler {
            setup,
            binaries,
            command,
            run,
            pool: Pool::new(setup, jobs),
            spec: setup.spec(false),
            tail: Tail {
                offset,
                sites: HashMap::new(),
                fates: HashMap::new(),
                forked: HashMap::new(),
                retries: HashSet::new(),
                own_retries: HashMap::new(),
                no_fork: HashSet::new(),
                panics: HashSet::new(),
            },
            depth: 0,
            explorable: HashMap::new(),
            scheduled: HashSet::new(),
            walked_paths: HashSet::new(),
            warm: vec![false; binaries.len()],
            busy: vec![0; binaries.len()],
            rounds: Vec::new(),
            fork_ms: fork.then(|| u64::try_from(setup.timeout.as_millis()).unwrap_or(u64::MAX)),
            unforked: HashSet::new(),
            costs: Vec::new(),
            sites: 0,
            processes: 0,
        })
    }

    /// Error paths, up to `depth` failures in a process: the handled and
    /// failed sites `state` holds are explored after their test's walk.
    pub(crate) fn error_paths(&mut self, depth: usize, state: &crate::state::State) {
        self.depth = depth;
        for r in state.live() {
            if let Some(test) = &r.test
                && !r.after.is_empty()
            {
                self.walked_paths.insert((test.fields(), r.after.clone()));
            }
            if let (Some(test), Some((outcome, _))) = (&r.test, &r.fate)
                && matches!(outcome, Outcome::Handled | Outcome::Failed)
                && !r.panic
            {
                let found = self
                    .explorable
                    .entry((test.fields(), r.after.clone()))
                    .or_default();
                if !found.contains(&r.id) {
                    found.push(r.id);
                }
            }
        }
    }

    /// Walks `tests` to their ends (or an interrupt), in one run, and the
    /// error paths of their sites; and those of `done`, tests walked
    /// before.
    pub(crate) fn walk(
        &mut self,
        mut tests: Vec<Walked>,
        done: Vec<Walked>,
        progress: &mut Progress,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        self.setup.record(
            &Line::Run {
                number: self.run,
                copies: self.pool.jobs.to_string().into(),
                start_ms: sites::unix_ms().to_string().into(),
                command: self.setup.display.as_str().into(),
            }
            .to_string(),
        )?;
        // Reads from here: the run's lines.
        self.tail.offset = self.setup.state_file.metadata().map_or(0, |m| m.len());
        let mut queue: VecDeque<usize> = (0..tests.len()).collect();
        self.rounds = (0..tests.len()).map(|_| Round::default()).collect();
        for unit in &done {
            self.explore(unit, &mut tests, &mut queue);
        }
        loop {
            self.fill(&tests, &mut queue)?;
            let Some(finished) = self.pool.wait_any() else {
                break;
            };
            let index = finished.tag;
            let settled = self.settle(index, &tests[index], finished, progress)?;
            let round = &mut self.rounds[index];
            round.live -= 1;
            round.found |= settled == Settled::Site;
            round.interrupted |= settled == Settled::Interrupted;
            if round.live > 0 {
                continue;
            }
            let round = std::mem::take(round);
            // An error path's walk is one process: its path, then the first
            // new allocation after it.
            let again = tests[index].after.is_empty();
            if round.found && again && !interrupted() {
                queue.push_back(index);
            } else if (!round.found || !again) && !round.interrupted {
                if tests[index].after.is_empty() {
                    let test = tests[index].test.line_name();
                    self.setup.append(&Line::Tested { test }.to_string())?;
                }
                let unit = Walked {
                    binary: tests[index].binary,
                    test: tests[index].test.clone(),
                    after: tests[index].after.clone(),
                };
                self.explore(&unit, &mut tests, &mut queue);
            }
        }
        // What the processes left behind dies before the run's end line.
        process::kill_leftovers(PATIENCE);
        let how = if interrupted() { "interrupted" } else { WALKED };
        let elapsed = started.elapsed().as_millis() as u64;
        self.setup.record(
            &Line::End {
                number: self.run,
                ms: elapsed,
                how: how.into(),
            }
            .to_string(),
        )?;
        let median = match median(&mut self.costs) {
            Some(cost) => format!("; a site's median cost {} ms", cost.as_millis()),
            None => String::new(),
        };
        progress.line(&format!(
            "tests: {} new sites in {} processes, {} s{median}{}",
            self.sites,
            self.processes,
            seconds(elapsed),
            if interrupted() { " (interrupted)" } else { "" }
        ));
        Ok(())
    }

    /// Starts processes while there is room: a queued test whose binary may
    /// start one, else one more copy of a test under way (copy k lets its
    /// first k new stacks pass and fails the next one, `sites-skip=k`), so
    /// that a test with many sites does not leave cores idle at the end.
    fn fill(&mut self, tests: &[Walked], queue: &mut VecDeque<usize>) -> Result<(), Failure> {
        while !self.pool.is_full() && !interrupted() {
            let ready = queue.iter().position(|&i| {
                let binary = tests[i].binary;
                self.warm[binary] || self.busy[binary] == 0
            });
            let index = match ready {
                Some(at) => queue.remove(at).expect("a position in the queue"),
                None => match self.widest_round(tests) {
                    Some(index) => index,
                    None => return Ok(()),
                },
            };
            let walked = &tests[index];
            let binary = &self.binaries[walked.binary];
            let round = &mut self.rounds[index];
            // A test's process forks at its sites unless it walks an error
            // path (one new site after the path) or its test may not.
            let fork_ms = self
                .fork_ms
                .filter(|_| round.started == 0 && walked.after.is_empty())
                .filter(|_| !self.unforked.contains(&index));
            round.forking = fork_ms.is_some();
            let args = targets::run_alone(&walked.test.name, self.command);
            let mut spec = match round.started {
                0 => self.spec.clone(),
                k => format!("{},sites-skip={k}", self.spec),
            };
            if let Some(ms) = fork_ms {
                spec.push_str(&format!(",sites-fork={ms}"));
                // A libtest harness runs the test on a thread of its own; a
                // doctest's executable runs it on its main thread.
                spec.push_str(if binary.is_doctest() {
                    ",sites-fork-output=Y"
                } else {
                    ",sites-fork-test=Y"
                });
            }
            let mut command = binary.command(&args);
            for (i, id) in walked.after.iter().enumerate() {
                spec.push_str(if i == 0 { ",sites-after=" } else { "+" });
                spec.push_str(&StackId(*id).to_string());
            }
            command.env("MAYFAIL_INJECT", spec);
            self.pool.spawn(command, index, fork_ms.is_some())?;
            round.started += 1;
            round.live += 1;
            self.busy[walked.binary] += 1;
            self.processes += 1;
        }
        Ok(())
    }

    /// Queues the error paths of the sites `unit`'s walk found handled or
    /// failed: a process of the same test failing `unit`'s path, then the
    /// site, then the first new allocation after it (one process: the
    /// error path's first allocation, not all of them).
    fn explore(&mut self, unit: &Walked, tests: &mut Vec<Walked>, queue: &mut VecDeque<usize>) {
        if unit.after.len() >= self.depth {
            return;
        }
        let key = (unit.test.fields(), unit.after.clone());
        let Some(found) = self.explorable.get(&key).cloned() else {
            return;
        };
        for id in found {
            let mut after = unit.after.clone();
            after.push(id);
            if !self.scheduled.insert((key.0.clone(), after.clone())) {
                continue;
            }
            let child = Walked {
                binary: unit.binary,
                test: unit.test.clone(),
                after,
            };
            if self
                .walked_paths
                .contains(&(key.0.clone(), child.after.clone()))
            {
                self.explore(&child, tests, queue);
                continue;
            }
            tests.push(child);
            self.rounds.push(Round::default());
            queue.push_back(tests.len() - 1);
        }
    }

    /// A test under way that may take one more copy: its binary's runtime
    /// stacks known, fewer copies than processes at once; the one with the
    /// fewest copies.
    fn widest_round(&self, tests: &[Walked]) -> Option<usize> {
        (0..tests.len())
            .filter(|&i| {
                let round = &self.rounds[i];
                round.live > 0
                    && !round.forking
                    && round.started < self.pool.jobs
                    && self.warm[tests[i].binary]
                    && tests[i].after.is_empty()
            })
            .min_by_key(|&i| self.rounds[i].started)
    }

    /// For the sites process `pid` failed: the fate of each that it did not
    /// write itself (or a `retry` line if it was interrupted), and where its
    /// test panicked, if it did.
    fn record_endings(
        &mut self,
        failed: &[u64],
        pid: u32,
        ended: Ended,
        panicked: Option<String>,
    ) -> Result<(), Failure> {
        for &id in failed {
            if self.tail.fates.contains_key(&(id, pid)) {
                continue;
            }
            match ended.fate(self.setup.timeout) {
                Some((outcome, detail)) => self.setup.append(
                    &Line::Fate {
                        id,
                        pid,
                        outcome,
                        detail: detail.into(),
                    }
                    .to_string(),
                )?,
                // Interrupted before it could end: fail it again next time.
                None => self.append_retry(id)?,
            }
        }
        self.tail.fates.retain(|&(_, p), _| p != pid);
        if let Some(location) = panicked {
            for &id in failed {
                self.setup.append(
                    &Line::Panicked {
                        id,
                        pid,
                        location: location.as_str().into(),
                    }
                    .to_string(),
                )?;
            }
        }
        Ok(())
    }

    /// Records how a test's process ended: its test, the fate of a site it
    /// failed without writing one, what the children it forked at its
    /// sites did, and, if it failed none but ended badly, an `unattributed`
    /// line.
    fn settle(
        &mut self,
        index: usize,
        walked: &Walked,
        finished: Finished<usize>,
        progress: &Progress,
    ) -> Result<Settled, Failure> {
        let Finished {
            pid,
            ended,
            panicked,
            says_failed,
            children,
            costs,
            ..
        } = finished;
        self.busy[walked.binary] -= 1;
        self.warm[walked.binary] = true;
        self.tail.read(self.setup)?;
        // A test that passes while its output tells of a failure
        // (`should_panic`, a panic it catches, an `Error:` line of its
        // own): what its children's output tells says nothing of their
        // sites (a `should_panic` test that no longer panics fails, and its
        // child exits 0 all the same). A doctest's child ends as its
        // process would: its status tells.
        let untold = says_failed
            && ended.passed(&self.setup.handled_exit)
            && !self.binaries[walked.binary].is_doctest();
        let mut failed = self.tail.sites.remove(&pid).unwrap_or_default();
        self.record_endings(&failed, pid, ended, panicked)?;
        let test = walked.test.line_name();
        self.setup.append(&Line::Test { pid, test }.to_string())?;
        let mut children: HashMap<u32, Option<String>> = children.into_iter().collect();
        for &(parent, child) in self.tail.forked.keys() {
            if parent == pid {
                children.entry(child).or_default();
            }
        }
        let mut children: Vec<(u32, Option<String>)> = children.into_iter().collect();
        children.sort();
        let stopped_forking = self.tail.no_fork.remove(&pid);
        let forked = self.settle_children(pid, walked, children, untold)?;
        // Some site to walk again one per process; or a process that could
        // not fork at all (a thread of the test's own): its later ones walk
        // one site each, with copies at once.
        if forked.again || (stopped_forking && forked.sites.is_empty()) {
            self.unforked.insert(index);
        }
        let forked_sites = forked.sites.len();
        failed.extend(forked.sites);
        if matches!(ended, Ended::Interrupted) {
            return Ok(Settled::Interrupted);
        }
        if !failed.is_empty() {
            self.costs.extend(costs);
        }
        if !failed.is_empty() || forked.again {
            let found = Found {
                failed,
                forked: forked_sites,
                again: forked.again,
            };
            return Ok(self.found_sites(index, walked, ended, &found, progress));
        }
        let binary = &self.binaries[walked.binary];
        // On an error path, the path's own failures account for an exit (a
        // test that failed goes on failing); a timeout or a signal with no
        // new site to blame is said all the same.
        let path_explains = !walked.after.is_empty() && matches!(ended, Ended::Exited(_));
        if !ended.passed_for(binary, &self.setup.handled_exit) && !path_explains {
            // It passed without injection: it ended badly with no site to
            // blame.
            let (outcome, detail) = ended
                .fate(self.setup.timeout)
                .unwrap_or((Outcome::Unknown, "no status".to_owned()));
            self.setup.append(
                &Line::Unattributed {
                    run: self.run,
                    pid,
                    outcome,
                    detail: detail.as_str().into(),
                }
                .to_string(),
            )?;
            progress.line(&format!(
                "{}: ended badly with no site to blame ({outcome}, {detail})",
                walked.test.display()
            ));
        }
        Ok(Settled::Nothing)
    }

    /// What a test's process that found sites means for its test: the
    /// error paths of the sites it failed itself and went on from, a
    /// progress line, and whether the test's walk goes on.
    fn found_sites(
        &mut self,
        index: usize,
        walked: &Walked,
        ended: Ended,
        found: &Found,
        progress: &Progress,
    ) -> Settled {
        let Found {
            failed,
            forked,
            again,
        } = found;
        let (forked, again) = (*forked, *again);
        self.sites += failed.len();
        let Some(&first) = failed.first() else {
            return Settled::Site;
        };
        // Handled, or a test failure: the code went on, on its error path,
        // which a later walk explores.
        let went_on = match ended {
            Ended::Exited(status) => {
                ended.passed(&self.setup.handled_exit) || status.code() == Some(101)
            }
            _ => false,
        };
        if went_on {
            let found = self
                .explorable
                .entry((walked.test.fields(), walked.after.clone()))
                .or_default();
            for id in &failed[..failed.len() - forked] {
                if !self.tail.panics.contains(id) && !found.contains(id) {
                    found.push(*id);
                }
            }
        }
        let path = match walked.after.last() {
            Some(last) => format!(" on the error path of {}", StackId(*last)),
            None => String::new(),
        };
        let how = if forked > 0 {
            format!("{forked} forked at")
        } else {
            ended.describe(self.setup.timeout)
        };
        progress.line(&format!(
            "{}: {} new site{} {}{path} ({how})",
            walked.test.display(),
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            StackId(first),
        ));
        // A process that forked at every new site it met, to its end, with
        // every allocation served, ran the test as a last process failing
        // no new site would: the test's walk is complete.
        let complete = self.rounds[index].forking
            && failed.len() == forked
            && !again
            && ended.passed_for(&self.binaries[walked.binary], &self.setup.handled_exit);
        if complete {
            Settled::Complete
        } else {
            Settled::Site
        }
    }
}

impl Scheduler<'_> {
    /// Appends a `retry` line of the runner's own: not to be read back as
    /// one a process wrote.
    fn append_retry(&mut self, id: u64) -> Result<(), Failure> {
        *self.tail.own_retries.entry(id).or_default() += 1;
        self.setup.append(&Line::Retry { id }.to_string())
    }
}

/// The sites a test's process found: those it failed itself, then the
/// last `forked` ones its children failed; `again`: some site must be
/// walked again, one per process.
struct Found {
    failed: Vec<u64>,
    forked: usize,
    again: bool,
}

/// What the children a test's process forked at its sites found.
struct Forked {
    /// The sites they failed and that have a fate.
    sites: Vec<u64>,
    /// Some site must be walked again, one per process: its child was
    /// killed or lost, or its failure cannot be told.
    again: bool,
}

impl Scheduler<'_> {
    /// Records what the children a test's process forked did: each child's
    /// test, where its test panicked, the sites whose error paths are
    /// walked later; a `retry` line for a site whose child has no fate (it
    /// was still running when its parent was killed) or whose output says
    /// nothing of its test's end (`untold`: the test's own output tells of
    /// a failure when it passes).
    fn settle_children(
        &mut self,
        parent: u32,
        walked: &Walked,
        children: Vec<(u32, Option<String>)>,
        untold: bool,
    ) -> Result<Forked, Failure> {
        let mut forked = Forked {
            sites: Vec::new(),
            again: false,
        };
        for (pid, panicked) in children {
            let sites = self.tail.forked.remove(&(parent, pid)).unwrap_or_default();
            let test = walked.test.line_name();
            self.setup.append(&Line::Test { pid, test }.to_string())?;
            for id in sites {
                let outcome = self.tail.fates.remove(&(id, pid));
                let told = match outcome {
                    // Its process's end: an abort, a crash, a hang.
                    Some(Outcome::Aborted | Outcome::Crashed | Outcome::Hung) => true,
                    // Its output could not be read, or says nothing.
                    Some(Outcome::Unknown) | None => false,
                    Some(_) => !untold,
                };
                if !told {
                    // A child with no fate was given its `retry` line by its
                    // parent (killed, deadlocked, lost), unless the parent
                    // itself was killed first.
                    if outcome.is_some() || !self.tail.retries.remove(&id) {
                        self.append_retry(id)?;
                    }
                    forked.again = true;
                    continue;
                }
                if let Some(location) = &panicked {
                    let location = location.as_str().into();
                    self.setup
                        .append(&Line::Panicked { id, pid, location }.to_string())?;
                }
                if matches!(outcome, Some(Outcome::Handled | Outcome::Failed))
                    && !self.tail.panics.contains(&id)
                {
                    let found = self
                        .explorable
                        .entry((walked.test.fields(), walked.after.clone()))
                        .or_default();
                    if !found.contains(&id) {
                        found.push(id);
                    }
                }
                forked.sites.push(id);
            }
        }
        Ok(forked)
    }
}

/// What a test's process did (see [`Scheduler::settle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// It failed a new site: the test's walk goes on.
    Site,
    /// It failed none.
    Nothing,
    /// Its children, forked at its sites, failed them all: the test's walk
    /// is complete.
    Complete,
    /// It was interrupted.
    Interrupted,
}

/// A test's copies since it last left the queue. The test's walk is
/// complete when a round's copies all end without failing a new site.
#[derive(Clone, Copy, Debug, Default)]
struct Round {
    started: usize,
    /// Its process forks at its sites: no copies.
    forking: bool,
    live: usize,
    found: bool,
    interrupted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_cost_is_the_middle_one() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [ms(9), ms(1), ms(5)]), Some(ms(5)));
        assert_eq!(median(&mut [ms(9), ms(1)]), Some(ms(9)));
        // No child: the process's whole time.
        let started = std::time::SystemTime::now() - ms(50);
        let costs = site_costs(&[], started);
        assert!(costs.len() == 1 && costs[0] >= ms(50), "{costs:?}");
    }

    #[test]
    fn a_panic_is_located_from_the_harness_output_line() {
        let output = "running 1 test\n\
                      test tests::t ... FAILED\n\n\
                      failures:\n\n\
                      ---- tests::t stdout ----\n\n\
                      thread 'tests::t' panicked at src/repr/mod.rs:361:40:\n\
                      Cannot allocate memory to hold CompactString\n";
        assert_eq!(
            panic_location(output).as_deref(),
            Some("src/repr/mod.rs:361")
        );
        // A path with a colon, a thread name with a space; a thread id.
        assert_eq!(
            panic_location("thread 'a b' panicked at /x:y/lib.rs:3:1:\n").as_deref(),
            Some("/x:y/lib.rs:3")
        );
        assert_eq!(
            panic_location("thread 'tests::fills' (6333) panicked at src/fill.rs:7:22:\n")
                .as_deref(),
            Some("src/fill.rs:7")
        );
        assert_eq!(panic_location("test t ... ok\n"), None);
        assert_eq!(panic_location("thread 'x' panicked at nowhere\n"), None);
    }
}
