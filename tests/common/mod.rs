//! Shared by the integration tests: run one test of this binary again in a
//! child process (where it may limit its address space, exhaust memory or
//! abort without harming the test run), and put that child under real memory
//! pressure.
#![allow(dead_code)] // each test binary uses its own part of this module

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mayfail::pressure::{AddressSpaceLimit, Ballast, limit_address_space};

const CHILD_VAR: &str = "MAYFAIL_TEST_CHILD";

/// Whether this process is a child started by [`run_child`].
pub fn is_child() -> bool {
    std::env::var_os(CHILD_VAR).is_some()
}

/// What a child printed and how it ended.
#[derive(Debug)]
pub struct ChildRun {
    pub code: Option<i32>,
    /// The signal that killed the child, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ChildRun {
    /// Panics with everything the child printed unless it exited with 0.
    pub fn assert_success(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "child failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stdout.contains("test result: ok. 1 passed"),
            "the child ran no test: is the name exact?\n{}",
            self.stdout
        );
        self
    }

    /// The stderr lines that mayfail wrote (they start with `mayfail:`).
    pub fn mayfail_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("mayfail:"))
            .collect()
    }
}

/// Whether this process runs under valgrind (its preloaded core library is
/// mapped). Valgrind runs a program 20 to 100 times slower, and a forked
/// child under `--trace-children=yes` pays its start-up again: tests scale
/// their deadlines with [`slowdown`] and size their workloads with this.
pub fn under_valgrind() -> bool {
    static CACHED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CACHED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.contains("/vgpreload_"))
    })
}

/// The factor by which a test's deadlines grow: 1 natively, 50 under
/// valgrind. A deadline is there to catch a hang, never to judge speed.
pub fn slowdown() -> u32 {
    if under_valgrind() { 50 } else { 1 }
}

/// `secs` seconds, scaled by [`slowdown`].
pub fn deadline_secs(secs: u64) -> Duration {
    Duration::from_secs(secs) * slowdown()
}

/// Runs the test `name` of the current test binary alone in a child process
/// with `env` added (a value of `None` removes the variable). The child is
/// killed after 60 s (scaled by [`slowdown`]).
pub fn run_child<K: AsRef<OsStr>, V: AsRef<OsStr>>(name: &str, env: &[(K, Option<V>)]) -> ChildRun {
    run_child_in(name, env, None)
}

/// [`run_child`], the child inside `cgroup` when one is given.
pub fn run_child_in<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    name: &str,
    env: &[(K, Option<V>)],
    cgroup: Option<&MemoryCgroup>,
) -> ChildRun {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    if let Some(cgroup) = cgroup {
        cgroup.enter_on_exec(&mut cmd);
    }
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .env_remove("MAYFAIL_RETRIES")
        .env_remove("MAYFAIL_SMALL")
        .env_remove("MAYFAIL_STALL_MS")
        .env_remove("MAYFAIL_LIMIT")
        .env_remove("MAYFAIL_LIMIT_HEADROOM")
        .env_remove("MAYFAIL_LIMIT_SOFT")
        .env_remove("MAYFAIL_PRESSURE")
        .env_remove("MAYFAIL_PRESSURE_FILE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd.spawn().expect("spawn the test binary");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + deadline_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let run = ChildRun {
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    assert!(status.is_some(), "child {name} timed out: {run:?}");
    run
}

/// Shorthand for [`run_child`] with variables that are all set.
pub fn run_child_with(name: &str, env: &[(&str, &str)]) -> ChildRun {
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|&(k, v)| (k, Some(v))).collect();
    run_child(name, &env)
}

static BALLAST: Mutex<Option<Ballast>> = Mutex::new(None);

/// Real memory exhaustion: an address-space limit 64 MiB above what the
/// process maps now, filled by a ballast. While it lasts, any allocation that
/// needs fresh memory fails in the system allocator.
pub struct Exhaustion {
    limit: Option<AddressSpaceLimit>,
}

impl Exhaustion {
    pub fn start() -> Exhaustion {
        settle_other_threads();
        let limit = limit_address_space(64 << 20).expect("setrlimit(RLIMIT_AS)");
        Exhaustion::fill();
        Exhaustion { limit: Some(limit) }
    }

    /// Fills the ballast (again): memory freed since is taken back.
    pub fn fill() {
        let mut guard = BALLAST.lock().unwrap();
        let ballast = guard.get_or_insert_with(Ballast::new);
        ballast.fill().expect("fill the ballast");
    }

    /// Frees at least `bytes` of the ballast; returns the bytes freed.
    pub fn release(bytes: usize) -> usize {
        match BALLAST.try_lock() {
            Ok(mut guard) => guard.as_mut().map_or(0, |b| b.release(bytes)),
            Err(_) => 0,
        }
    }

    /// A reclaimer that gives back ballast.
    pub fn reclaimer(wanted: usize) -> usize {
        Exhaustion::release(wanted)
    }

    /// Frees the whole ballast and lifts the limit.
    pub fn end(mut self) {
        if let Some(b) = BALLAST.lock().unwrap().as_mut() {
            b.release_all();
        }
        self.limit.take();
    }
}

impl Drop for Exhaustion {
    fn drop(&mut self) {
        if let Ok(mut guard) = BALLAST.lock()
            && let Some(b) = guard.as_mut()
        {
            b.release_all();
        }
    }
}

/// Waits (up to 2 s) until every other thread of this process sleeps.
///
/// In a child, the other thread is libtest's main thread, which waits for the
/// test's result on a channel. The first time it blocks there it registers a
/// thread-local destructor, which glibc cannot do while memory is exhausted
/// ("failed to register TLS destructor"): exhaust memory only once it sleeps.
fn settle_other_threads() {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() }.to_string();
    let all_asleep = || {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks.flatten().all(|task| {
                    task.file_name().to_str() == Some(me.as_str())
                        || std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                            // The state follows the parenthesised command name.
                            stat.rsplit_once(") ")
                                .is_some_and(|(_, rest)| rest.starts_with('S'))
                        })
                })
            })
            .unwrap_or(true)
    };
    let deadline = Instant::now() + deadline_secs(2);
    let mut seen_asleep = 0;
    // Two sightings 5 ms apart: a thread may sleep briefly on its way.
    while seen_asleep < 2 && Instant::now() < deadline {
        if all_asleep() {
            seen_asleep += 1;
            std::thread::sleep(Duration::from_millis(5));
        } else {
            seen_asleep = 0;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Allocates through the global allocator (that is, through `MayFail`).
pub fn alloc(size: usize) -> *mut u8 {
    // SAFETY: callers pass non-zero sizes.
    unsafe { std::alloc::alloc(std::alloc::Layout::from_size_align(size, 8).unwrap()) }
}

/// Frees a block from [`alloc`].
pub fn free(ptr: *mut u8, size: usize) {
    assert!(!ptr.is_null());
    // SAFETY: `ptr` came from `alloc(size)`.
    unsafe { std::alloc::dealloc(ptr, std::alloc::Layout::from_size_align(size, 8).unwrap()) }
}

/// A memory cgroup made for a test (cgroup v2, else the v1 memory
/// hierarchy), removed when dropped. Needs root.
pub struct MemoryCgroup {
    pub dir: std::path::PathBuf,
    pub version: u8,
    procs: std::ffi::CString,
}

impl MemoryCgroup {
    /// A new cgroup `name` (under `parent`, else at the hierarchy's root)
    /// limited to `limit` bytes (`None`: unlimited), without swap; `Err`
    /// says why none could be made.
    pub fn create(
        name: &str,
        limit: Option<u64>,
        parent: Option<&MemoryCgroup>,
    ) -> Result<MemoryCgroup, String> {
        let v2_root = std::path::Path::new("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (base, version) = if v2 {
            (v2_root.to_path_buf(), 2)
        } else if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
            (std::path::PathBuf::from("/sys/fs/cgroup/memory"), 1)
        } else {
            return Err("no memory cgroup hierarchy is mounted".into());
        };
        let base = parent.map_or(base, |p| p.dir.clone());
        if version == 2 {
            let _ = std::fs::write(base.join("cgroup.subtree_control"), "+memory");
        }
        let dir = base.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let procs = std::ffi::CString::new(
            dir.join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        let cgroup = MemoryCgroup {
            dir,
            version,
            procs,
        };
        if version == 2 {
            let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        }
        if let Some(limit) = limit {
            let file = if version == 2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            std::fs::write(cgroup.dir.join(file), limit.to_string())
                .map_err(|e| format!("write {file}: {e}"))?;
        }
        Ok(cgroup)
    }

    /// Makes `cmd`'s process join the cgroup before it runs the program.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs = self.procs.clone();
        // SAFETY: the closure runs between fork and exec and calls only
        // open, write and close, which are async-signal-safe; it allocates
        // nothing (the path was made before the fork).
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// What the kernel recorded of the cgroup's OOM kills (v2 `oom_kill`
    /// in `memory.events`, v1 `oom_kill` in `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        let file = if self.version == 2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes have exited; a cgroup directory is removed with rmdir.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove the cgroup {}", self.dir.display());
    }
}
