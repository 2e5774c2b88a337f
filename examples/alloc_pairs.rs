//! COUNT alloc+free pairs of SIZE bytes through one allocator, called
//! directly through `GlobalAlloc`, for counting instructions:
//!
//! ```text
//! cargo build --release --example alloc_pairs
//! valgrind --tool=callgrind target/release/examples/alloc_pairs mayfail 64 1000000
//! ```
//!
//! `ALLOCATOR` is `system` (bare `std::alloc::System`) or `mayfail` (a
//! `static MayFail<System>`, not the program's global allocator). Whichever
//! is measured, the program first does one pair through the MayFail (its
//! first allocation reads the environment and sets its reserve aside) and one
//! through the measured allocator, so both runs start the loop from the same
//! heap, and a run with COUNT 0 is the baseline to subtract. The work is
//! deterministic: same arguments, same instructions.
//!
//! Called directly, `MayFail`'s methods are inlined into this loop; as a
//! `#[global_allocator]` they are reached through the `__rust_alloc` shim
//! and cost more. The figures a program sees, for every allocator and peer
//! wrapper, come from the benchmark suite (`ci/bench.sh`, see
//! `benches/README.md`); this example is the direct-call view, by hand.

use std::alloc::{GlobalAlloc, Layout, System, handle_alloc_error};
use std::hint::black_box;
use std::process::ExitCode;

use mayfail::MayFail;

static MAYFAIL: MayFail<System> = MayFail::system();

/// Alignment of every layout: that of a `Box<[u64]>`.
const ALIGN: usize = 8;

/// The measured loop, one copy per allocator (`run::<System>`,
/// `run::<MayFail<System>>`), kept out of line so its code is easy to find.
#[inline(never)]
fn run<A: GlobalAlloc>(a: &A, layout: Layout, count: u64) {
    for _ in 0..count {
        // SAFETY: `layout` has a non-zero size; the block is freed with the
        // allocator and layout it was allocated with.
        unsafe {
            let p = black_box(a.alloc(layout));
            if p.is_null() {
                handle_alloc_error(layout);
            }
            a.dealloc(p, layout);
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: alloc_pairs system|mayfail SIZE COUNT   (SIZE >= 1 bytes)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [which, size, count] = args.as_slice() else {
        return usage();
    };
    let (Ok(size), Ok(count)) = (size.parse::<usize>(), count.parse::<u64>()) else {
        return usage();
    };
    let Ok(layout) = Layout::from_size_align(size, ALIGN) else {
        return usage();
    };
    if size == 0 {
        return usage();
    }
    let layout = black_box(layout);
    let count = black_box(count);
    let system = match which.as_str() {
        "system" => true,
        "mayfail" => false,
        _ => return usage(),
    };
    // The same start whichever allocator is measured: the MayFail's first
    // allocation may allocate for itself (its reserve) and so shape the heap.
    run(&MAYFAIL, layout, 1);
    if system {
        run(&System, layout, 1);
        run(&System, layout, count);
    } else {
        run(&MAYFAIL, layout, 1);
        run(&MAYFAIL, layout, count);
    }
    ExitCode::SUCCESS
}
