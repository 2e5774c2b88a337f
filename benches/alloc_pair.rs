//! What the `MayFail` wrapper costs on the success path, side by side with
//! the allocator it wraps.
//!
//! Every benchmark calls the allocators directly through `GlobalAlloc`: bare
//! `std::alloc::System`, and a `static MayFail<System>` that is *not* this
//! binary's global allocator (criterion's own allocations keep going to the
//! default one). One group per size, each with the two functions `System`
//! and `MayFail<System>`, so criterion's report puts them next to each other;
//! one more group grows a block with `realloc`. Each sample runs on a fresh
//! thread (see [`timed_on_fresh_thread`]).
//!
//! Run with `cargo bench --bench alloc_pair` (about a minute and a half on a
//! 2-core machine, once built). `ci/bench.sh` runs it together with the
//! instruction counts of `examples/alloc_pairs.rs`.

use std::alloc::{GlobalAlloc, Layout, System, handle_alloc_error};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use mayfail::MayFail;

static MAYFAIL: MayFail<System> = MayFail::system();

/// The sizes of the alloc+free groups, in bytes.
const SIZES: [usize; 6] = [16, 64, 256, 1024, 4096, 65536];

/// Alignment of every layout: that of a `Box<[u64]>`, the common case.
const ALIGN: usize = 8;

/// The realloc group: start at this size, double until `REALLOC_TO`.
const REALLOC_FROM: usize = 16;
const REALLOC_TO: usize = 4096;

/// A layout whose size the optimiser cannot see, so both allocators run the
/// general code path rather than one specialised for a constant.
fn layout(size: usize) -> Layout {
    Layout::from_size_align(black_box(size), ALIGN).unwrap()
}

/// One alloc+free pair.
#[inline(always)]
fn pair<A: GlobalAlloc>(a: &A, layout: Layout) {
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

/// A block of `REALLOC_FROM` bytes grown by doubling to `REALLOC_TO`, then
/// freed: one alloc, `log2(REALLOC_TO / REALLOC_FROM)` reallocs, one free.
#[inline(always)]
fn grow<A: GlobalAlloc>(a: &A, first: Layout) {
    // SAFETY: every layout has a non-zero size and alignment `ALIGN`; each
    // realloc gets the live block with the layout it currently has; a failed
    // realloc aborts, so the old block is never used after a successful one.
    unsafe {
        let mut layout = first;
        let mut p = black_box(a.alloc(layout));
        if p.is_null() {
            handle_alloc_error(layout);
        }
        while layout.size() < REALLOC_TO {
            let new_size = layout.size() * 2;
            p = black_box(a.realloc(p, layout, new_size));
            layout = Layout::from_size_align_unchecked(new_size, ALIGN);
            if p.is_null() {
                handle_alloc_error(layout);
            }
        }
        a.dealloc(p, layout);
    }
}

/// `iters` alloc+free pairs. Out of line, one copy per allocator, so both
/// allocators' loops are compiled alike (with the pair inlined), whatever the
/// optimiser decides about the closures around them.
#[inline(never)]
fn pairs<A: GlobalAlloc>(a: &A, layout: Layout, iters: u64) {
    for _ in 0..iters {
        pair(a, layout);
    }
}

/// `iters` growths; see [`pairs`].
#[inline(never)]
fn grows<A: GlobalAlloc>(a: &A, first: Layout, iters: u64) {
    for _ in 0..iters {
        grow(a, first);
    }
}

/// Runs `run(iters)` on a new thread and returns the time it took.
///
/// The thread gets a malloc arena of its own, which holds nothing but the
/// measured blocks, so every benchmark starts from the same heap state. On
/// criterion's own thread, sizes beyond glibc's tcache (> 1032 bytes) are at
/// the mercy of whatever criterion freed before: the measured block may be
/// carved from, and consolidated with, a free neighbour, and the same pair
/// then took 10 ns in one benchmark and 17 or 22 ns in the next, whichever
/// allocator was measured.
///
/// The price: the process is multi-threaded, so glibc locks the arena for
/// sizes beyond the tcache (4096 and 65536 bytes take ~27 ns here, against
/// ~11 ns in the single-threaded `examples/alloc_pairs`). Both allocators pay
/// it alike.
fn timed_on_fresh_thread(iters: u64, run: impl Fn(u64) + Sync) -> Duration {
    std::thread::scope(|s| {
        s.spawn(|| {
            run(1); // the thread's first allocation sets up its arena and tcache
            let start = Instant::now();
            run(iters);
            start.elapsed()
        })
        .join()
        .unwrap()
    })
}

/// Short but stable settings: 14 benchmarks must fit in about 90 seconds.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(100)
        .nresamples(20_000);
}

fn alloc_free(c: &mut Criterion) {
    // The first allocation a MayFail serves reads the environment (its
    // cold "engaged" path); get it out of the way before measuring.
    pair(&MAYFAIL, layout(16));

    for size in SIZES {
        let layout = layout(size);
        let mut group = c.benchmark_group(format!("alloc_free/{size}"));
        configure(&mut group);
        group.bench_function("System", |b| {
            b.iter_custom(|n| timed_on_fresh_thread(n, |n| pairs(&System, layout, n)))
        });
        group.bench_function("MayFail<System>", |b| {
            b.iter_custom(|n| timed_on_fresh_thread(n, |n| pairs(&MAYFAIL, layout, n)))
        });
        group.finish();
    }
}

fn realloc_grow(c: &mut Criterion) {
    pair(&MAYFAIL, layout(16));

    let first = layout(REALLOC_FROM);
    let mut group = c.benchmark_group(format!("realloc_grow/{REALLOC_FROM}-{REALLOC_TO}"));
    configure(&mut group);
    group.bench_function("System", |b| {
        b.iter_custom(|n| timed_on_fresh_thread(n, |n| grows(&System, first, n)))
    });
    group.bench_function("MayFail<System>", |b| {
        b.iter_custom(|n| timed_on_fresh_thread(n, |n| grows(&MAYFAIL, first, n)))
    });
    group.finish();
}

criterion_group!(benches, alloc_free, realloc_grow);
criterion_main!(benches);
