//! The workloads, compiled once into the suite's library, so every
//! configuration binary runs the same machine code and reaches its global
//! allocator through the same `__rust_alloc` shim.
//!
//! Every workload is deterministic (fixed seeds, fixed sizes): the same
//! arguments make the same allocator calls in every binary, which is what
//! lets callgrind's instruction counts be subtracted.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::collections::BTreeMap;
use std::hint::black_box;

/// One workload: what it does, what one "operation" is, and how much of it
/// one measured run does.
pub struct Workload {
    /// Its name on the command line and in the tables.
    pub name: &'static str,
    /// The group it belongs to in the issue (1 to 5).
    pub group: u8,
    /// What one operation is, for the absolute column of the table.
    pub op: &'static str,
    /// Operations in one measured run (`run(ops)`).
    pub ops: u64,
    /// Operations in the warm-up run before the measured ones.
    pub warm_ops: u64,
    /// Measured runs per process (the process reports the fastest).
    pub reps: u32,
    /// Runs `ops` operations.
    pub run: fn(u64),
}

/// Alignment of the raw alloc+free layouts: that of a `Box<[u64]>`.
const ALIGN: usize = 8;

/// A small, fast, deterministic generator (xorshift64*), the same in every
/// binary.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed.
    pub const fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// The next value.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64() >> 32) * u128::from(n)) >> 32) as u64
    }
}

// --- 1. alloc+free pairs ------------------------------------------------------

/// `n` alloc+free pairs of `size` bytes through the global allocator, the
/// layout hidden from the optimiser.
#[inline(never)]
pub fn pairs(size: usize, n: u64) {
    let layout = Layout::from_size_align(black_box(size), ALIGN).unwrap();
    for _ in 0..n {
        // SAFETY: `layout` has a non-zero size; the block is freed with the
        // layout it was allocated with.
        unsafe {
            let p = black_box(alloc(layout));
            if p.is_null() {
                handle_alloc_error(layout);
            }
            dealloc(p, layout);
        }
    }
}

fn pairs_16(n: u64) {
    pairs(16, n)
}
fn pairs_64(n: u64) {
    pairs(64, n)
}
fn pairs_256(n: u64) {
    pairs(256, n)
}
fn pairs_1024(n: u64) {
    pairs(1024, n)
}
fn pairs_4096(n: u64) {
    pairs(4096, n)
}
fn pairs_65536(n: u64) {
    pairs(65536, n)
}

// --- 2. realloc-heavy growth ------------------------------------------------

/// `n` vectors, each grown from empty to 256 bytes one `push` at a time
/// (alloc 8, reallocs to 16, 32, 64, 128, 256, free: 7 allocator calls per
/// 256 pushes), then dropped.
#[inline(never)]
pub fn vec_push(n: u64) {
    for _ in 0..n {
        let mut v: Vec<u8> = Vec::new();
        for b in 0..=255u8 {
            v.push(black_box(b));
        }
        black_box(&v);
    }
}

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

/// `n` strings, each built from 24 words and spaces with `push_str` and
/// `push` (about 150 bytes: alloc, 5 reallocs, free), then dropped.
#[inline(never)]
pub fn string_build(n: u64) {
    for i in 0..n {
        let mut s = String::new();
        for k in 0..24 {
            s.push_str(black_box(WORDS[(i as usize + k) % WORDS.len()]));
            s.push(' ');
        }
        black_box(&s);
    }
}

// --- 3. a big map built and dropped -------------------------------------------

const TEXT: &str = "The quick brown fox jumps over the lazy dog; pack my box.";

/// A `BTreeMap<u64, String>` of `n` entries with pseudo-random keys and
/// values of 8 to 32 bytes (one allocation each, plus the tree's nodes),
/// built and dropped.
#[inline(never)]
pub fn btree(n: u64) {
    let mut rng = Rng::new(0x5eed_b7ee);
    let mut map = BTreeMap::new();
    for _ in 0..n {
        let key = rng.next_u64();
        let len = 8 + (key % 25) as usize;
        map.insert(key, String::from(&TEXT[..len]));
    }
    black_box(&map);
    drop(map);
}

// --- 4. multi-threaded --------------------------------------------------------

/// A block held in a slot, as addresses (so slots can move between threads).
#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    size: usize,
}

fn block_alloc(size: usize) -> Block {
    let layout = Layout::from_size_align(size, ALIGN).unwrap();
    // SAFETY: `size` is non-zero.
    let p = unsafe { alloc(layout) };
    if p.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: `p` points to `size >= 1` writable bytes.
    unsafe {
        p.write(size as u8);
        p.add(size - 1).write(size as u8);
    }
    Block {
        addr: p as usize,
        size,
    }
}

fn block_free(block: Block) {
    if block.addr != 0 {
        // SAFETY: `block` came from `block_alloc` with this size and was not
        // freed since (its slot is overwritten or cleared right after).
        unsafe {
            dealloc(
                block.addr as *mut u8,
                Layout::from_size_align_unchecked(block.size, ALIGN),
            )
        }
    }
}

/// Slots per chunk in [`larson`] (mimalloc-bench runs larson with 5000
/// chunks per thread, sizes 8 to 1000).
const LARSON_SLOTS: usize = 5000;
/// Rounds in [`larson`]: each hands every chunk to a new thread.
const LARSON_ROUNDS: u64 = 20;

/// Larson-like: `threads` chunks of [`LARSON_SLOTS`] blocks of 8 to 1000
/// bytes. In each of [`LARSON_ROUNDS`] rounds, `threads` new threads each
/// take a chunk (rotated, so never the one they had) and replace random
/// blocks of it, `n / LARSON_ROUNDS` each: free the block there, allocated
/// by another thread, and allocate a new one. The blocks are freed by
/// another thread than the one that allocated them, as in larson, where each
/// thread hands its chunk to a new thread.
pub fn larson(threads: usize, n: u64) {
    let per_round = (n / LARSON_ROUNDS).max(1);
    let mut chunks: Vec<Vec<Block>> = (0..threads)
        .map(|c| {
            let mut rng = Rng::new(0x1a25_0000 + c as u64);
            (0..LARSON_SLOTS)
                .map(|_| block_alloc(8 + rng.below(993) as usize))
                .collect()
        })
        .collect();
    for round in 0..LARSON_ROUNDS {
        chunks.rotate_left(1);
        chunks = std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .drain(..)
                .enumerate()
                .map(|(t, mut chunk)| {
                    s.spawn(move || {
                        let mut rng = Rng::new((round << 16) + t as u64 + 0x1a25);
                        for _ in 0..per_round {
                            let slot = &mut chunk[rng.below(LARSON_SLOTS as u64) as usize];
                            block_free(*slot);
                            *slot = block_alloc(8 + rng.below(993) as usize);
                        }
                        chunk
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
    }
    for chunk in chunks {
        chunk.into_iter().for_each(block_free);
    }
}

fn larson_1t(n: u64) {
    larson(1, n)
}
fn larson_2t(n: u64) {
    larson(2, n)
}
fn larson_nt(n: u64) {
    larson(cores(), n)
}

/// Working set of each thread in [`glibc_thread`] (glibc's benchtests).
const GLIBC_WORKING_SET: usize = 1024;
/// The size table of [`glibc_thread`]: glibc's `NUM_BLOCK_SIZES`.
const GLIBC_BLOCK_SIZES: usize = 8000;
/// The offset table: glibc's `NUM_OFFSETS`.
const GLIBC_OFFSETS: usize = GLIBC_WORKING_SET * 4;

/// glibc's `get_block_size`: an inverse-square distribution from 4 to 32768
/// bytes (mean about 36), from a uniform `r` in `[0, 1]`.
fn glibc_block_size(r: f32) -> usize {
    let exponent = -2.0f32;
    let min_pow = 4.0f32.powf(exponent + 1.0);
    let max_pow = 32768.0f32.powf(exponent + 1.0);
    (((max_pow - min_pow) * r + min_pow).powf(1.0 / (exponent + 1.0)) as usize).max(1)
}

/// mimalloc-bench's glibc-thread (glibc's `bench-malloc-thread.c`, with the
/// blocks touched as in mimalloc-bench): each of `threads` threads has a
/// working set of 1024 blocks and, `n` times, frees the block at a random
/// offset and allocates one of a random size (4 to 32768 bytes, inverse
/// square) there, writing every byte of it. A fixed count instead of the
/// original's 2 seconds.
pub fn glibc_thread(threads: usize, n: u64) {
    let mut rng = Rng::new(88);
    let sizes: Vec<usize> = (0..GLIBC_BLOCK_SIZES)
        .map(|_| glibc_block_size(rng.below(1 << 24) as f32 / (1u32 << 24) as f32))
        .collect();
    let offsets: Vec<usize> = (0..GLIBC_OFFSETS)
        .map(|_| rng.below(GLIBC_WORKING_SET as u64) as usize)
        .collect();
    let (sizes, offsets) = (&sizes, &offsets);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || {
                let mut set = vec![Block { addr: 0, size: 0 }; GLIBC_WORKING_SET];
                let (mut offset_state, mut size_state) = (0, 0);
                for _ in 0..n {
                    offset_state = if offset_state >= GLIBC_OFFSETS - 1 {
                        0
                    } else {
                        offset_state + 1
                    };
                    size_state = if size_state >= GLIBC_BLOCK_SIZES - 1 {
                        0
                    } else {
                        size_state + 1
                    };
                    let slot = &mut set[offsets[offset_state]];
                    block_free(*slot);
                    *slot = block_alloc(sizes[size_state]);
                    // SAFETY: the block has `size` writable bytes.
                    unsafe {
                        let p = slot.addr as *mut u8;
                        for i in 0..slot.size {
                            p.add(i).write(i as u8);
                        }
                    }
                }
                set.into_iter().for_each(block_free);
            });
        }
    });
}

fn glibc_thread_1t(n: u64) {
    glibc_thread(1, n)
}
fn glibc_thread_2t(n: u64) {
    glibc_thread(2, n)
}
fn glibc_thread_nt(n: u64) {
    glibc_thread(cores(), n)
}

// --- 5. glibc-simple ------------------------------------------------------------

/// Block size of [`glibc_simple`]: the benchmark's default.
const GLIBC_SIMPLE_SIZE: usize = 16;

/// mimalloc-bench's glibc-simple (glibc's `bench-malloc-simple.c`, blocks
/// touched as in mimalloc-bench): allocate `blocks` blocks of 16 bytes,
/// write them, free them all; `n / blocks` times, so `n` pairs.
pub fn glibc_simple(blocks: usize, n: u64) {
    let layout = Layout::from_size_align(black_box(GLIBC_SIMPLE_SIZE), ALIGN).unwrap();
    let mut arr: Vec<*mut u32> = vec![core::ptr::null_mut(); blocks];
    for _ in 0..(n / blocks as u64).max(1) {
        for slot in arr.iter_mut() {
            // SAFETY: non-zero size.
            let p = unsafe { alloc(layout) } as *mut u32;
            if p.is_null() {
                handle_alloc_error(layout);
            }
            for g in 0..layout.size() / 4 {
                // SAFETY: `layout.size()` bytes, aligned for u32.
                unsafe { p.add(g).write(g as u32) };
            }
            *slot = p;
        }
        for &p in arr.iter() {
            // SAFETY: allocated just above with `layout`.
            unsafe { dealloc(p as *mut u8, layout) };
        }
    }
    black_box(&arr);
}

fn glibc_simple_25(n: u64) {
    glibc_simple(25, n)
}
fn glibc_simple_100(n: u64) {
    glibc_simple(100, n)
}
fn glibc_simple_400(n: u64) {
    glibc_simple(400, n)
}
fn glibc_simple_1600(n: u64) {
    glibc_simple(1600, n)
}

/// The CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

const fn w(
    name: &'static str,
    group: u8,
    op: &'static str,
    ops: u64,
    warm_ops: u64,
    reps: u32,
    run: fn(u64),
) -> Workload {
    Workload {
        name,
        group,
        op,
        ops,
        warm_ops,
        reps,
        run,
    }
}

/// Every workload, in table order. `larson-Nt` and `glibc-thread-Nt` (one
/// thread per CPU) are listed only on machines with more than 2 CPUs.
pub fn all() -> Vec<Workload> {
    const PAIR: &str = "alloc+free pair";
    const PAIRS: u64 = 2_000_000;
    let mut list = vec![
        w("pairs-16", 1, PAIR, PAIRS, PAIRS / 10, 3, pairs_16),
        w("pairs-64", 1, PAIR, PAIRS, PAIRS / 10, 3, pairs_64),
        w("pairs-256", 1, PAIR, PAIRS, PAIRS / 10, 3, pairs_256),
        w("pairs-1024", 1, PAIR, PAIRS, PAIRS / 10, 3, pairs_1024),
        w("pairs-4096", 1, PAIR, PAIRS, PAIRS / 10, 3, pairs_4096),
        w("pairs-65536", 1, PAIR, PAIRS, PAIRS / 10, 3, pairs_65536),
        w("vec-push", 2, "256-byte Vec", 100_000, 10_000, 3, vec_push),
        w(
            "string-build",
            2,
            "24-word String",
            100_000,
            10_000,
            3,
            string_build,
        ),
        w("btree-1m", 3, "entry", 1_000_000, 100_000, 2, btree),
        w(
            "larson-1t",
            4,
            "block replaced per thread",
            1_000_000,
            100_000,
            3,
            larson_1t,
        ),
        w(
            "larson-2t",
            4,
            "block replaced per thread",
            1_000_000,
            100_000,
            3,
            larson_2t,
        ),
        w(
            "glibc-thread-1t",
            4,
            "block replaced per thread",
            1_000_000,
            100_000,
            3,
            glibc_thread_1t,
        ),
        w(
            "glibc-thread-2t",
            4,
            "block replaced per thread",
            1_000_000,
            100_000,
            3,
            glibc_thread_2t,
        ),
    ];
    if cores() > 2 {
        list.push(w(
            "larson-Nt",
            4,
            "block replaced per thread",
            1_000_000,
            100_000,
            3,
            larson_nt,
        ));
        list.push(w(
            "glibc-thread-Nt",
            4,
            "block replaced per thread",
            1_000_000,
            100_000,
            3,
            glibc_thread_nt,
        ));
    }
    list.extend([
        w(
            "glibc-simple-25",
            5,
            PAIR,
            PAIRS,
            PAIRS / 10,
            3,
            glibc_simple_25,
        ),
        w(
            "glibc-simple-100",
            5,
            PAIR,
            PAIRS,
            PAIRS / 10,
            3,
            glibc_simple_100,
        ),
        w(
            "glibc-simple-400",
            5,
            PAIR,
            PAIRS,
            PAIRS / 10,
            3,
            glibc_simple_400,
        ),
        w(
            "glibc-simple-1600",
            5,
            PAIR,
            PAIRS,
            PAIRS / 10,
            3,
            glibc_simple_1600,
        ),
    ]);
    list
}
