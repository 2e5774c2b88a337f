//! The benchmark suite's shared code: the workloads and the `main` of every
//! configuration binary.
//!
//! Each binary under `src/bin/` is three lines: a `#[global_allocator]`
//! (the configuration) and a call to [`main`]. The workloads are compiled
//! once, here, so every configuration runs the same machine code; only the
//! allocator behind `__rust_alloc` differs.
//!
//! A configuration binary is run by the driver (`run-suite`) as:
//!
//! ```text
//! CONFIG time WORKLOAD          warm up, then time the workload; prints CPU/wall nanoseconds
//!                               of each measured run
//! CONFIG count WORKLOAD OPS     one run of OPS operations inside `callgrind_region` (for
//!                               valgrind --toggle-collect); prints the allocator calls made
//!                               inside when the configuration can count them
//! CONFIG list                   the workloads, one per line
//! ```
//!
//! Every measured run happens on a freshly spawned thread, after a warm-up
//! run on that thread: the thread gets its own malloc arena and tcache, so
//! every configuration starts from the same heap, whatever `main` allocated.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod workloads;

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use workloads::Workload;

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

fn find(name: &str) -> Option<Workload> {
    workloads::all().into_iter().find(|w| w.name == name)
}

fn usage() -> ExitCode {
    eprintln!("usage: CONFIG time WORKLOAD | CONFIG count WORKLOAD OPS | CONFIG list");
    ExitCode::from(2)
}

/// The `main` of a configuration binary. `counts` reads the configuration's
/// own allocation counters, where it has them.
pub fn main(counts: Option<Counts>) -> ExitCode {
    // Prime the global allocator: a MayFail reads the environment and sets
    // its reserve aside on its first allocation. (The runtime has usually
    // allocated already; this makes it certain, the same in every binary.)
    black_box(Vec::<u8>::with_capacity(black_box(1)));

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["list"] => {
            for w in workloads::all() {
                println!("{}\t{}\t{}\t{}", w.name, w.group, w.ops, w.op);
            }
            ExitCode::SUCCESS
        }
        ["time", name] => {
            let Some(w) = find(name) else { return usage() };
            let times = std::thread::scope(|s| {
                s.spawn(|| {
                    (w.run)(w.warm_ops);
                    (0..w.reps)
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
        ["count", name, ops] => {
            let (Some(w), Ok(ops)) = (find(name), ops.parse::<u64>()) else {
                return usage();
            };
            let delta = std::thread::scope(|s| {
                s.spawn(|| {
                    (w.run)(w.warm_ops.min(ops));
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
