//! Stress: 4 to 8 threads allocate, zero-allocate, grow, shrink and free
//! blocks of random sizes (1 B to 1 MiB) and alignments (1 to 4096) through
//! `std::alloc` (the global `MayFail`), always checking for null, while fault
//! injection fails a few percent of their allocations and a controller
//! thread changes the retry knob at random and switches injection between
//! final and transient failures.
//!
//! What must hold, and is checked:
//!
//! - every block keeps the pattern written into it: a successful `realloc`
//!   keeps the contents, a failed one leaves the block as it was;
//!   `alloc_zeroed` memory is zero; every block has its alignment; an
//!   allocation inside `nofail` never returns null;
//! - nothing is lost: the inner allocator (wrapped below in a counter of
//!   live bytes per thread, independent of mayfail) holds, after every
//!   operation, exactly the bytes the worker believes it holds, and nothing
//!   once the worker has freed its blocks; and every injected failure is
//!   accounted for, either as a null seen by the caller or as an allocation
//!   that recovered (`injected == nulls + recovered`);
//! - nothing hangs: a watchdog aborts the test binary when a worker makes
//!   no progress for 10 s.
//!
//! Injection uses `task-filter=Y` with `make_it_fail` in the workers only,
//! so libtest's threads are not touched. The test runs about 12 s; set
//! `MAYFAIL_STRESS_SECS` for longer runs and `MAYFAIL_STRESS_SEED` to pick
//! the seed (printed with the figures; thread interleavings still vary).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use mayfail::{MayFail, stats};

/// The inner allocator: `System`, plus a count of the live bytes it handed
/// out, per thread (each worker frees only its own blocks).
struct Counting;

thread_local! {
    static INNER_LIVE: Cell<i64> = const { Cell::new(0) };
}

fn inner_live() -> i64 {
    INNER_LIVE.try_with(Cell::get).unwrap_or(0)
}

fn count(delta: i64) {
    let _ = INNER_LIVE.try_with(|c| c.set(c.get() + delta));
}

// SAFETY: every method forwards to `System` with the caller's arguments; the
// counter is a thread-local without destructor, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc_zeroed`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `realloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`.
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }
}

#[global_allocator]
static GLOBAL: MayFail<Counting> = MayFail::new(Counting);

/// splitmix64 to seed, xorshift64* to run.
struct Rng(u64);

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix64(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `true` with probability `percent` %.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// 1 B to 1 MiB, log-uniform: as many tiny blocks as huge ones.
    fn size(&mut self) -> usize {
        let bits = self.below(21);
        1 + self.below(1 << bits) as usize
    }

    /// 1 to 4096, a power of two.
    fn align(&mut self) -> usize {
        1 << self.below(13)
    }
}

const MAX_SIZE: usize = 1 << 20;
const MAX_OFFSET: usize = 4096;
const SLOTS: usize = 32;
/// No progress for this long is a hang.
// Scaled under valgrind (`common::slowdown`), which runs the workers far slower.
fn stall() -> Duration {
    common::deadline_secs(10)
}
const MAX_THREADS: usize = 8;

static STOP: AtomicBool = AtomicBool::new(false);
static PROGRESS: [AtomicU64; MAX_THREADS] = [const { AtomicU64::new(0) }; MAX_THREADS];
static DONE: [AtomicBool; MAX_THREADS] = [const { AtomicBool::new(false) }; MAX_THREADS];

/// Fails the test from a worker: injection and fail-nth cannot touch the
/// panic's own allocations (nofail is exempt from both).
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            mayfail::fail_nth(0);
            mayfail::nofail(|| panic!($($fmt)+));
        }
    };
}

/// One live block of a worker. Its contents are `pattern[offset..offset + size]`.
struct Block {
    ptr: *mut u8,
    size: usize,
    align: usize,
    offset: usize,
}

impl Block {
    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, self.align).unwrap()
    }

    /// The first `len` bytes of the block.
    fn bytes(&self, len: usize) -> &[u8] {
        // SAFETY: `ptr` is live for `size >= len` bytes, written before.
        unsafe { std::slice::from_raw_parts(self.ptr, len) }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    ops: u64,
    allocs: u64,
    zeroed: u64,
    reallocs: u64,
    frees: u64,
    nulls: u64,
    failed_reallocs_intact: u64,
    grown_or_shrunk_intact: u64,
    nofail_allocs: u64,
    noretry_allocs: u64,
    fail_nth_armed: u64,
    fail_nth_fired: u64,
    bytes_verified: u64,
    bytes_written: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.ops += o.ops;
        self.allocs += o.allocs;
        self.zeroed += o.zeroed;
        self.reallocs += o.reallocs;
        self.frees += o.frees;
        self.nulls += o.nulls;
        self.failed_reallocs_intact += o.failed_reallocs_intact;
        self.grown_or_shrunk_intact += o.grown_or_shrunk_intact;
        self.nofail_allocs += o.nofail_allocs;
        self.noretry_allocs += o.noretry_allocs;
        self.fail_nth_armed += o.fail_nth_armed;
        self.fail_nth_fired += o.fail_nth_fired;
        self.bytes_verified += o.bytes_verified;
        self.bytes_written += o.bytes_written;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Scope {
    Normal,
    NoFail,
    NoRetry,
}

struct Worker {
    id: usize,
    rng: Rng,
    pattern: Vec<u8>,
    zeros: Vec<u8>,
    slots: Vec<Option<Block>>,
    /// What the worker believes it holds, in bytes.
    live: i64,
    /// The inner allocator's count for this thread when the loop started.
    inner_start: i64,
    t: Tally,
}

impl Worker {
    fn new(id: usize, seed: u64) -> Worker {
        let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0x1000_0001));
        let mut pattern = vec![0u8; MAX_SIZE + MAX_OFFSET];
        for chunk in pattern.chunks_mut(8) {
            let word = rng.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        let mut slots = Vec::with_capacity(SLOTS);
        slots.resize_with(SLOTS, || None);
        Worker {
            id,
            rng,
            pattern,
            zeros: vec![0u8; MAX_SIZE],
            slots,
            live: 0,
            inner_start: 0,
            t: Tally::default(),
        }
    }

    fn expected(&self, b: &Block, len: usize) -> &[u8] {
        &self.pattern[b.offset..b.offset + len]
    }

    fn verify(&mut self, b: &Block, len: usize, what: &str) {
        ensure!(
            b.bytes(len) == self.expected(b, len),
            "worker {}: {what}: the contents of a block of {} bytes (align {}) changed",
            self.id,
            b.size,
            b.align
        );
        self.t.bytes_verified += len as u64;
    }

    /// Writes the block's pattern from byte `from` to its end.
    fn fill(&mut self, b: &Block, from: usize) {
        // SAFETY: `ptr` is live for `size` bytes; the pattern has
        // `offset + size` bytes; the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.pattern.as_ptr().add(b.offset + from),
                b.ptr.add(from),
                b.size - from,
            )
        };
        self.t.bytes_written += (b.size - from) as u64;
    }

    fn scope(&mut self) -> Scope {
        match self.rng.below(100) {
            0..=4 => Scope::NoFail,
            5..=9 => Scope::NoRetry,
            _ => Scope::Normal,
        }
    }

    /// Runs `f` inside `make_it_fail` (and the scope): only here may
    /// allocations be injected.
    fn candidate<R>(scope: Scope, f: impl FnOnce() -> R) -> R {
        let _candidate = mayfail::make_it_fail_guard();
        match scope {
            Scope::Normal => f(),
            Scope::NoFail => mayfail::nofail(f),
            Scope::NoRetry => mayfail::noretry(f),
        }
    }

    fn count_scope(&mut self, scope: Scope) {
        match scope {
            Scope::NoFail => self.t.nofail_allocs += 1,
            Scope::NoRetry => self.t.noretry_allocs += 1,
            Scope::Normal => {}
        }
    }

    fn allocate(&mut self, slot: usize) {
        let size = self.rng.size();
        let align = self.rng.align();
        let zeroed = self.rng.percent(40);
        let scope = self.scope();
        self.count_scope(scope);
        let layout = Layout::from_size_align(size, align).unwrap();
        let ptr = Self::candidate(scope, || {
            // SAFETY: `layout` has a non-zero size.
            unsafe {
                if zeroed {
                    std::alloc::alloc_zeroed(layout)
                } else {
                    std::alloc::alloc(layout)
                }
            }
        });
        self.t.allocs += 1;
        if ptr.is_null() {
            ensure!(
                scope != Scope::NoFail,
                "worker {}: an allocation of {size} bytes inside nofail returned null",
                self.id
            );
            self.t.nulls += 1;
            return;
        }
        ensure!(
            (ptr as usize).is_multiple_of(align),
            "worker {}: {ptr:p} is not aligned to {align}",
            self.id
        );
        let b = Block {
            ptr,
            size,
            align,
            offset: self.rng.below(MAX_OFFSET as u64) as usize,
        };
        self.live += size as i64;
        if zeroed {
            self.t.zeroed += 1;
            ensure!(
                b.bytes(size) == &self.zeros[..size],
                "worker {}: alloc_zeroed of {size} bytes (align {align}) returned dirty memory",
                self.id
            );
            self.t.bytes_verified += size as u64;
        }
        self.fill(&b, 0);
        self.slots[slot] = Some(b);
    }

    fn reallocate(&mut self, slot: usize) {
        let mut b = self.slots[slot].take().unwrap();
        let new_size = self.rng.size();
        let scope = self.scope();
        self.count_scope(scope);
        let layout = b.layout();
        let ptr = Self::candidate(scope, || {
            // SAFETY: `b.ptr` is live with `layout`; `new_size` is non-zero
            // and small.
            unsafe { std::alloc::realloc(b.ptr, layout, new_size) }
        });
        self.t.reallocs += 1;
        if ptr.is_null() {
            ensure!(
                scope != Scope::NoFail,
                "worker {}: a realloc to {new_size} bytes inside nofail returned null",
                self.id
            );
            self.t.nulls += 1;
            self.verify(&b, b.size, "after a failed realloc");
            self.t.failed_reallocs_intact += 1;
            self.slots[slot] = Some(b);
            return;
        }
        ensure!(
            (ptr as usize).is_multiple_of(b.align),
            "worker {}: realloc returned {ptr:p}, not aligned to {}",
            self.id,
            b.align
        );
        let kept = b.size.min(new_size);
        let old_size = b.size;
        b.ptr = ptr;
        b.size = new_size;
        self.verify(&b, kept, "after a successful realloc");
        self.t.grown_or_shrunk_intact += 1;
        self.live += new_size as i64 - old_size as i64;
        if new_size > kept {
            self.fill(&b, kept);
        }
        self.slots[slot] = Some(b);
    }

    fn free(&mut self, slot: usize) {
        let b = self.slots[slot].take().unwrap();
        self.verify(&b, b.size, "before dealloc");
        // SAFETY: `b.ptr` is live with this layout.
        unsafe { std::alloc::dealloc(b.ptr, b.layout()) };
        self.live -= b.size as i64;
        self.t.frees += 1;
    }

    fn check_accounts(&self, when: &str) {
        let inner = inner_live() - self.inner_start;
        ensure!(
            inner == self.live,
            "worker {}: {when}: the inner allocator holds {inner} bytes for this thread, the \
             worker holds {} (a block lost or made up by the wrapper)",
            self.id,
            self.live
        );
    }

    fn run(mut self) -> Tally {
        let _done = Done(self.id);
        self.inner_start = inner_live();
        let mut nth_armed = false;
        while !STOP.load(Relaxed) {
            let slot = self.rng.below(SLOTS as u64) as usize;
            if !nth_armed && self.rng.below(64) == 0 {
                // Fail one of the next few allocations of this thread,
                // whatever the attributes say.
                mayfail::fail_nth(1 + self.rng.below(4));
                nth_armed = true;
                self.t.fail_nth_armed += 1;
            }
            if self.slots[slot].is_none() {
                self.allocate(slot);
            } else if self.rng.percent(50) {
                self.reallocate(slot);
            } else {
                self.free(slot);
            }
            if nth_armed && mayfail::fail_nth_pending() == 0 {
                nth_armed = false;
                self.t.fail_nth_fired += 1;
            }
            self.check_accounts("after an operation");
            self.t.ops += 1;
            PROGRESS[self.id].store(self.t.ops, Relaxed);
        }
        mayfail::fail_nth(0);
        for slot in 0..SLOTS {
            if self.slots[slot].is_some() {
                self.free(slot);
            }
        }
        self.check_accounts("after freeing everything");
        ensure!(
            self.live == 0,
            "worker {}: {} bytes left",
            self.id,
            self.live
        );
        self.t
    }
}

/// Tells the watchdog that a worker ended, also when it panicked.
struct Done(usize);

impl Drop for Done {
    fn drop(&mut self) {
        DONE[self.0].store(true, Relaxed);
    }
}

/// Writes to stderr without allocating and past libtest's capture.
fn raw_stderr(text: &str) {
    // SAFETY: the pointer and length describe `text`.
    unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}

/// Aborts the process if a worker makes no progress for `stall()`.
fn watchdog(threads: usize, seed: u64) {
    let mut last = [(0u64, Instant::now()); MAX_THREADS];
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let mut all_done = true;
        for (id, seen) in last.iter_mut().enumerate().take(threads) {
            if DONE[id].load(Relaxed) {
                continue;
            }
            all_done = false;
            let now = PROGRESS[id].load(Relaxed);
            if now != seen.0 {
                *seen = (now, Instant::now());
            } else if seen.1.elapsed() > stall() {
                let s = stats();
                raw_stderr(&format!(
                    "stress: worker {id} made no progress for {:?} after {now} operations \
                     (retries knob {}, {s:?}, seed {seed}): a hang\n",
                    stall(),
                    mayfail::retries()
                ));
                std::process::abort();
            }
        }
        if all_done && STOP.load(Relaxed) {
            return;
        }
    }
}

/// Changes the retry knob every few milliseconds and the injection mode
/// every phase; returns (knob changes, injection reconfigurations).
fn controller(seed: u64, phase: Duration) -> (u64, u64) {
    let mut rng = Rng::new(seed ^ 0xc0ff_ee00);
    let mut knob_changes = 0;
    let mut reconfigurations = 0;
    let mut transient = false;
    let mut phase_start = Instant::now();
    while !STOP.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(2 + rng.below(20)));
        let knob = [-1, 0, 1, 2, 3, 8][rng.below(6) as usize];
        mayfail::set_retries(knob);
        knob_changes += 1;
        if phase_start.elapsed() >= phase {
            transient = !transient;
            let probability = [1, 2, 3, 5][rng.below(4) as usize];
            let spec = format!(
                "probability={probability},times=-1,task-filter=Y,transient={},seed={}",
                if transient { "Y" } else { "N" },
                rng.next()
            );
            // Reconfigured while the workers allocate: an allocation may see
            // a mix of the two configurations, never anything worse.
            mayfail::configure_injection(&spec).unwrap();
            reconfigurations += 1;
            phase_start = Instant::now();
        }
    }
    (knob_changes, reconfigurations)
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?}: a whole number")),
    )
}

#[test]
fn threads_allocate_under_injection_and_a_changing_knob_without_losing_anything() {
    let secs = env_u64("MAYFAIL_STRESS_SECS").unwrap_or(12).max(1);
    let seed = env_u64("MAYFAIL_STRESS_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        splitmix64(t.as_nanos() as u64 ^ u64::from(std::process::id()))
    });
    let threads = 4 + (splitmix64(seed) % 5) as usize;
    println!("stress: seed {seed} (MAYFAIL_STRESS_SEED), {threads} threads, {secs} s");
    let duration = Duration::from_secs(secs);
    let phase = (duration / 6).min(Duration::from_secs(1));

    mayfail::configure_injection(&format!(
        "probability=3,times=-1,task-filter=Y,transient=N,seed={seed}"
    ))
    .unwrap();
    let before = stats();
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|id| {
            std::thread::Builder::new()
                .name(format!("stress-{id}"))
                .spawn(move || Worker::new(id, seed).run())
                .unwrap()
        })
        .collect();
    let control = std::thread::spawn(move || controller(seed, phase));
    let dog = std::thread::spawn(move || watchdog(threads, seed));

    std::thread::sleep(duration);
    STOP.store(true, Relaxed);
    let mut total = Tally::default();
    let mut panicked = None;
    for w in workers {
        match w.join() {
            Ok(t) => total.add(&t),
            Err(e) => panicked = Some(e),
        }
    }
    let (knob_changes, reconfigurations) = control.join().unwrap();
    dog.join().unwrap();
    mayfail::disable_injection();
    mayfail::set_retries(-1);
    if let Some(e) = panicked {
        std::panic::resume_unwind(e);
    }
    let d = stats().since(&before);
    let elapsed = start.elapsed();

    println!(
        "stress: {} operations in {:.1} s ({} alloc/alloc_zeroed, {} zeroed, {} realloc, {} \
         dealloc; {} in nofail, {} in noretry)",
        total.ops,
        elapsed.as_secs_f64(),
        total.allocs,
        total.zeroed,
        total.reallocs,
        total.frees,
        total.nofail_allocs,
        total.noretry_allocs
    );
    println!(
        "stress: failures injected {}, nulls seen {}, retries {}, recovered {}, failed after \
         the policy {}; fail-nth armed {} fired {}",
        d.injected,
        total.nulls,
        d.retries,
        d.recovered,
        d.failed,
        total.fail_nth_armed,
        total.fail_nth_fired
    );
    println!(
        "stress: bytes verified {} ({} MiB), written {} ({} MiB); failed reallocs intact {}, \
         reallocs that kept their contents {}; knob changed {} times, injection reconfigured \
         {} times",
        total.bytes_verified,
        total.bytes_verified >> 20,
        total.bytes_written,
        total.bytes_written >> 20,
        total.failed_reallocs_intact,
        total.grown_or_shrunk_intact,
        knob_changes,
        reconfigurations
    );

    assert_eq!(
        d.injected,
        total.nulls + d.recovered,
        "every injected failure is either a null the caller saw or an allocation that \
         recovered (seed {seed}): {d:?} {total:?}"
    );
    assert!(
        d.failed <= total.nulls,
        "the policy gave up more often than callers saw null: {d:?} {total:?}"
    );
    assert!(d.retries >= d.recovered, "{d:?}");
    // The run was long enough to exercise every path.
    assert!(total.ops >= 1000, "{total:?}");
    assert!(
        total.failed_reallocs_intact > 0 && total.grown_or_shrunk_intact > 0,
        "{total:?}"
    );
    assert!(total.zeroed > 0 && total.frees > 0, "{total:?}");
    assert!(
        d.recovered > 0,
        "transient failures were retried and recovered: {d:?}"
    );
    assert!(total.fail_nth_fired > 0, "{total:?}");
    assert!(knob_changes > 0 && reconfigurations > 0);
}
