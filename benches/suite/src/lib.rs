//! The benchmark suite's shared code: the workload descriptions and the
//! `main` of every configuration binary.
//!
//! Each binary under `src/bin/` is a `#[global_allocator]` (the
//! configuration), a module that `include!`s `workload_code.rs` (the
//! workloads compiled in the binary's own crate, as a user's code is: the
//! "in-crate" form) and a call to [`main`]. The same source is compiled once
//! more into this library ([`workloads`], the "out-of-line" form): the same
//! machine code in every binary, reaching the allocator only through the
//! `__rust_alloc` shim. The two forms show what the allocator costs with and
//! without the inlining a user's program gets.
//!
//! A configuration binary is run by the driver (`run-suite`) as:
//!
//! ```text
//! CONFIG FORM time WORKLOAD        warm up, then time the workload; prints CPU/wall
//!                                  nanoseconds of each measured run
//! CONFIG FORM count WORKLOAD OPS   one run of OPS operations inside `callgrind_region` (for
//!                                  valgrind --toggle-collect); prints the allocator calls
//!                                  made inside when the configuration can count them
//! CONFIG list                      the workloads, one per line
//! ```
//!
//! FORM is `in-crate` or `out-of-line`. Every measured run happens on a
//! freshly spawned thread, after a warm-up run on that thread: the thread
//! gets its own malloc arena and tcache, so every configuration starts from
//! the same heap, whatever `main` allocated.

#![deny(unsafe_op_in_unsafe_fn)]

// The workload source names this crate by its name, as the binaries do.
extern crate self as mayfail_bench_suite;

pub mod workloads;

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

/// One workload: what it does, what one "operation" is, and how much of it
/// one measured run does.
pub struct Workload {
    /// Its name on the command line and in the tables.
    pub name: &'static str,
    /// What one operation is, for the absolute column of the table.
    pub op: &'static str,
    /// Operations in one timed run (`run(ops)`); a tenth of it (at least
    /// one) warms up.
    pub ops: u64,
    /// Operations in the callgrind run.
    pub count_ops: u64,
    /// Threads the workload runs on.
    pub threads: u8,
    /// In the set `run-suite` measures by default.
    pub default: bool,
    /// Runs `ops` operations.
    pub run: fn(u64),
}

impl Workload {
    /// Operations in the warm-up run before the measured ones.
    pub fn warm_ops(&self) -> u64 {
        (self.ops / 10).max(1)
    }
}

/// Timed runs per process (the process reports every one, the driver keeps
/// the fastest).
pub const REPS: u32 = 3;

/// A [`Workload`], in one line of the table in `workload_code.rs`.
pub const fn w(
    name: &'static str,
    op: &'static str,
    ops: u64,
    count_ops: u64,
    threads: u8,
    default: bool,
    run: fn(u64),
) -> Workload {
    Workload {
        name,
        op,
        ops,
        count_ops,
        threads,
        default,
        run,
    }
}

/// The CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Allocator calls counted by a configuration that can count them (the
/// `StatsAlloc` one): allocations, deallocations, reallocations.
pub type Counts = fn() -> [usize; 3];

/// The measured region for callgrind: `valgrind --tool=callgrind
/// --toggle-collect='*callgrind_region*'` counts only what runs inside.
#[inline(never)]
pub fn callgrind_region(run: fn(u64), ops: u64) {
    run(black_box(ops));
}

/// CPU time consumed by the whole process so far, all threads, in
/// nanoseconds: unlike wall-clock time, it does not grow while another
/// process has the CPU (nor, on a VM with steal-time accounting, while the
/// host does).
pub fn cpu_time_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: CONFIG FORM time WORKLOAD | CONFIG FORM count WORKLOAD OPS | CONFIG list \
         (FORM: in-crate or out-of-line)"
    );
    ExitCode::from(2)
}

/// The `main` of a configuration binary. `in_crate` is the workload list the
/// binary compiled itself (`in_crate::all()`); `counts` reads the
/// configuration's own allocation counters, where it has them.
pub fn main(in_crate: Vec<Workload>, counts: Option<Counts>) -> ExitCode {
    // Prime the global allocator: a MayFail reads the environment and sets
    // its reserve aside on its first allocation. (The runtime has usually
    // allocated already; this makes it certain, the same in every binary.)
    black_box(Vec::<u8>::with_capacity(black_box(1)));

    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out_of_line = Some(workloads::all());
    let mut in_crate = Some(in_crate);
    let mut find = |form: &str, name: &str| -> Option<Workload> {
        let list = match form {
            "in-crate" => in_crate.take()?,
            "out-of-line" => out_of_line.take()?,
            _ => return None,
        };
        list.into_iter().find(|w| w.name == name)
    };
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => {
            for w in workloads::all() {
                println!("{}\t{}\t{}\t{}", w.name, w.threads, w.ops, w.op);
            }
            ExitCode::SUCCESS
        }
        [form, "time", name] => {
            let Some(w) = find(form, name) else {
                return usage();
            };
            let times = std::thread::scope(|s| {
                s.spawn(|| {
                    (w.run)(w.warm_ops());
                    (0..REPS)
                        .map(|_| {
                            let (wall, cpu) = (Instant::now(), cpu_time_ns());
                            (w.run)(black_box(w.ops));
                            (cpu_time_ns() - cpu, wall.elapsed().as_nanos())
                        })
                        .collect::<Vec<_>>()
                })
                .join()
                .unwrap()
            });
            let line: Vec<String> = times.iter().map(|(c, w)| format!("{c}/{w}")).collect();
            println!("{}", line.join(" "));
            ExitCode::SUCCESS
        }
        [form, "count", name, ops] => {
            let (Some(w), Ok(ops)) = (find(form, name), ops.parse::<u64>()) else {
                return usage();
            };
            let delta = std::thread::scope(|s| {
                s.spawn(|| {
                    (w.run)(w.warm_ops().min(ops));
                    let before = counts.map(|c| c());
                    callgrind_region(w.run, ops);
                    let after = counts.map(|c| c());
                    before
                        .zip(after)
                        .map(|(b, a)| [0, 1, 2].map(|i| a[i] - b[i]))
                })
                .join()
                .unwrap()
            });
            if let Some([allocs, deallocs, reallocs]) = delta {
                println!("allocs {allocs} deallocs {deallocs} reallocs {reallocs}");
            }
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
