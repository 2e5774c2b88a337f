//! What a sweep costs per allocation point on this machine.
//!
//! ```sh
//! cargo run --release --example sweep_cost -- 200     # an operation with 200 allocations
//! ```
//!
//! The operation builds a vector of `N` strings with fallible allocations,
//! so every point is handled; the program prints the report's summary and
//! the cost per point, for one child at a time and for one per CPU.

use std::collections::TryReserveError;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();

fn build(n: usize) -> Result<Vec<String>, TryReserveError> {
    let mut out = Vec::new();
    out.try_reserve(n)?;
    for i in 0..n {
        let mut s = String::new();
        s.try_reserve(16)?;
        s.push_str(if i % 2 == 0 { "even" } else { "odd" });
        out.push(s);
    }
    Ok(out)
}

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let n = match arg.as_deref().map(str::parse::<usize>) {
        None => 200,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            eprintln!(
                "sweep_cost: the argument {:?} is not a count of allocations: give a whole \
                 number >= 1 (default 200)",
                arg.unwrap_or_default()
            );
            return ExitCode::from(2);
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    for jobs in [1, cpus] {
        let report = mayfail::Sweep::new().jobs(jobs).run(|| build(n));
        if !report.is_handled() {
            eprintln!("{report}");
            return ExitCode::FAILURE;
        }
        let points = report.points().len();
        println!(
            "jobs {jobs}: {points} points in {:.3} s: {:.2} ms per point",
            report.elapsed().as_secs_f64(),
            report.elapsed().as_secs_f64() * 1000.0 / points as f64
        );
    }
    ExitCode::SUCCESS
}
