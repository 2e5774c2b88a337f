//! What the `MayFail` wrapper costs on the success path, side by side with
//! the allocator it wraps, with criterion: the suite's `pairs-*` workloads
//! (alloc+free pairs) and its growth by `realloc` (`vec-push`,
//! `string-build`: as `Vec<u8>::push` and `String::push_str` do it).
//!
//! Every benchmark calls the allocators directly through `GlobalAlloc`: bare
//! `std::alloc::System`, and a `static MayFail<System>` that is *not* this
//! binary's global allocator (criterion's own allocations keep going to the
//! default one). One group per workload, each with the two functions `System`
//! and `MayFail<System>`, so criterion's report puts them next to each other.
//! Each sample runs on a fresh thread (see [`timed_on_fresh_thread`]).
//!
//! Direct calls let the optimiser inline `MayFail`'s methods into the loop,
//! as a `#[global_allocator]` gets them in a user's crate; but the block
//! around them is this file's, not std's `RawVec` code. For the cost a
//! program sees, and for the other allocators and wrappers, use the suite's
//! binaries (`ci/bench.sh`, see `benches/README.md`). Criterion's
//! run-to-run spread on a shared 2-core machine is larger than the
//! difference it is asked to show: a cross-check, not the measurement.
//!
//! Run with `cargo bench --manifest-path benches/suite/Cargo.toml --bench
//! alloc_pair` (about a minute and a half on a 2-core machine, once built);
//! `ci/bench.sh --criterion` runs it and prints a table of the medians.

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

/// Workload 2: bytes pushed into each vector (as the suite's `vec-push`).
const VEC_BYTES: usize = 256;

/// Workload 2: words appended to each string (as the suite's `string-build`).
const STRING_WORDS: usize = 24;
const WORDS: [&str; 8] = [
    "alpha",
    "be",
    "gamma",
    "delta-epsilon",
    "zeta",
    "eta",
    "theta",
    "iota:",
];

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

/// A byte buffer that grows as `Vec<u8>` and `String` do (`RawVec`'s
/// amortised growth: the larger of twice the capacity and what is needed,
/// at least 8 bytes), through the allocator `A`: the same sequence of alloc,
/// realloc and free calls as the standard collections make.
struct Buf<'a, A: GlobalAlloc> {
    a: &'a A,
    ptr: *mut u8,
    cap: usize,
    len: usize,
}

impl<'a, A: GlobalAlloc> Buf<'a, A> {
    fn new(a: &'a A) -> Self {
        Buf {
            a,
            ptr: core::ptr::null_mut(),
            cap: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed <= self.cap {
            return;
        }
        let cap = needed.max(self.cap * 2).max(8);
        let layout = Layout::from_size_align(cap, 1).unwrap();
        // SAFETY: `cap >= 8`; a live block is reallocated with the layout it
        // has (size `self.cap`, align 1).
        let p = unsafe {
            if self.cap == 0 {
                self.a.alloc(layout)
            } else {
                let old = Layout::from_size_align_unchecked(self.cap, 1);
                self.a.realloc(self.ptr, old, cap)
            }
        };
        if p.is_null() {
            handle_alloc_error(layout);
        }
        self.ptr = p;
        self.cap = cap;
    }

    #[inline(always)]
    fn push(&mut self, byte: u8) {
        self.reserve(1);
        // SAFETY: `len < cap` after `reserve`.
        unsafe { self.ptr.add(self.len).write(byte) };
        self.len += 1;
    }

    #[inline(always)]
    fn push_str(&mut self, s: &str) {
        self.reserve(s.len());
        // SAFETY: `len + s.len() <= cap` after `reserve`; distinct blocks.
        unsafe {
            core::ptr::copy_nonoverlapping(s.as_ptr(), self.ptr.add(self.len), s.len());
        }
        self.len += s.len();
    }
}

impl<A: GlobalAlloc> Drop for Buf<'_, A> {
    fn drop(&mut self) {
        if self.cap != 0 {
            // SAFETY: the live block, with the layout it was given.
            unsafe {
                self.a
                    .dealloc(self.ptr, Layout::from_size_align_unchecked(self.cap, 1))
            }
        }
    }
}

/// `iters` vectors grown from empty by `VEC_BYTES` pushes, then dropped.
#[inline(never)]
fn vec_pushes<A: GlobalAlloc>(a: &A, iters: u64) {
    for _ in 0..iters {
        let mut v = Buf::new(a);
        for b in 0..VEC_BYTES {
            v.push(black_box(b as u8));
        }
        black_box(v.ptr);
    }
}

/// `iters` strings built from `STRING_WORDS` words and spaces, then dropped.
#[inline(never)]
fn string_builds<A: GlobalAlloc>(a: &A, iters: u64) {
    for i in 0..iters {
        let mut s = Buf::new(a);
        for k in 0..STRING_WORDS {
            s.push_str(black_box(WORDS[(i as usize + k) % WORDS.len()]));
            s.push(b' ');
        }
        black_box(s.ptr);
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
/// ~11 ns on a single-threaded process). Both allocators pay
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

/// Short but stable settings: 16 benchmarks must fit in about 90 seconds.
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

fn growth(c: &mut Criterion) {
    pair(&MAYFAIL, layout(16));

    let mut group = c.benchmark_group(format!("vec_push/{VEC_BYTES}"));
    configure(&mut group);
    group.bench_function("System", |b| {
        b.iter_custom(|n| timed_on_fresh_thread(n, |n| vec_pushes(&System, n)))
    });
    group.bench_function("MayFail<System>", |b| {
        b.iter_custom(|n| timed_on_fresh_thread(n, |n| vec_pushes(&MAYFAIL, n)))
    });
    group.finish();

    let mut group = c.benchmark_group(format!("string_build/{STRING_WORDS}"));
    configure(&mut group);
    group.bench_function("System", |b| {
        b.iter_custom(|n| timed_on_fresh_thread(n, |n| string_builds(&System, n)))
    });
    group.bench_function("MayFail<System>", |b| {
        b.iter_custom(|n| timed_on_fresh_thread(n, |n| string_builds(&MAYFAIL, n)))
    });
    group.finish();
}

criterion_group!(benches, alloc_free, growth);
criterion_main!(benches);
