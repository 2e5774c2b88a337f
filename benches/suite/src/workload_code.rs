// The workloads. This file has no inner attributes so that it can be
// `include!`d twice: by `workloads.rs`, into the suite's library (the
// "out-of-line" form: compiled once, reaching the global allocator through
// the `__rust_alloc` shim), and by every configuration binary, into the crate
// that declares the `#[global_allocator]` (the "in-crate" form: compiled as a
// user's own code is, with the allocator's methods in view of the inliner).
//
// Every workload is deterministic (fixed seeds, fixed sizes): the same
// arguments make the same allocator calls in every binary, which is what lets
// callgrind's instruction counts be subtracted.

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

use mayfail_bench_suite::{Workload, cores, w};

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

// --- the pair and map workloads of the outside measurement --------------------

/// `n` `Vec::<u8>::with_capacity(size)`, each dropped at once, `size`
/// cycling over 16, 17, ..., 512: the allocation a program makes most,
/// through std's generic `RawVec` code, as a user's crate compiles it.
#[inline(never)]
pub fn vec_pairs(n: u64) {
    let mut size = 16;
    for _ in 0..n {
        let v = Vec::<u8>::with_capacity(black_box(size));
        black_box(&v);
        drop(v);
        size = if size == 512 { 16 } else { size + 1 };
    }
}

/// Entries in each map of [`btree_maps`].
const BTREE_ENTRIES: u64 = 20_000;

/// `n` maps of [`BTREE_ENTRIES`] entries, each built and dropped (see [`btree`]).
#[inline(never)]
pub fn btree_maps(n: u64) {
    for _ in 0..n {
        btree(BTREE_ENTRIES);
    }
}

// --- application workloads --------------------------------------------------

/// A word of 2 to 9 lowercase letters from `rng`, appended to `out`.
fn push_word(rng: &mut Rng, out: &mut String) {
    for _ in 0..2 + rng.below(8) {
        out.push((b'a' + rng.below(26) as u8) as char);
    }
}

#[cfg(feature = "apps")]
/// Text of about `bytes` bytes: lines of words, some of them numbers, dates
/// or e-mail addresses, for [`regex_scan`].
fn text(bytes: usize) -> String {
    let mut rng = Rng::new(0x7e47);
    let mut out = String::with_capacity(bytes + 128);
    while out.len() < bytes {
        match rng.below(16) {
            0 => {
                let _ = std::fmt::Write::write_fmt(
                    &mut out,
                    format_args!(
                        "20{:02}-{:02}-{:02}",
                        rng.below(30),
                        1 + rng.below(12),
                        1 + rng.below(28)
                    ),
                );
            }
            1 => {
                push_word(&mut rng, &mut out);
                out.push('@');
                push_word(&mut rng, &mut out);
                out.push_str(".org");
            }
            2 | 3 => {
                let _ = std::fmt::Write::write_fmt(
                    &mut out,
                    format_args!("{}", rng.next_u64() % 100_000),
                );
            }
            _ => push_word(&mut rng, &mut out),
        }
        out.push(if rng.below(12) == 0 { '\n' } else { ' ' });
    }
    out
}

/// Records in the JSON document of [`json_round_trip`]: about 1.2 MB.
#[cfg(feature = "apps")]
const JSON_RECORDS: u64 = 5_000;

/// The JSON document of [`json_round_trip`], generated once per process:
/// an array of records with numbers, strings, an array and a nested object.
#[cfg(feature = "apps")]
fn json_document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut rng = Rng::new(0x150d);
        let records: Vec<serde_json::Value> = (0..JSON_RECORDS)
            .map(|id| {
                let mut name = String::new();
                push_word(&mut rng, &mut name);
                let tags: Vec<String> = (0..rng.below(6))
                    .map(|_| {
                        let mut t = String::new();
                        push_word(&mut rng, &mut t);
                        t
                    })
                    .collect();
                serde_json::json!({
                    "id": id,
                    "name": name,
                    "score": rng.below(1_000_000) as f64 / 1000.0,
                    "active": rng.below(2) == 0,
                    "tags": tags,
                    "position": { "x": rng.below(10_000), "y": rng.below(10_000), "layer": rng.below(8) },
                    "note": text(40 + rng.below(120) as usize),
                })
            })
            .collect();
        serde_json::to_string(&records).expect("serialisable")
    })
}

/// `n` times: parse the document of [`json_document`] (about 1.2 MB) into a
/// `serde_json::Value` and serialise it back to a string; both dropped.
#[cfg(feature = "apps")]
#[inline(never)]
pub fn json_round_trip(n: u64) {
    let doc = json_document();
    for _ in 0..n {
        let value: serde_json::Value = serde_json::from_str(black_box(doc)).expect("valid JSON");
        let back = serde_json::to_string(&value).expect("serialisable");
        black_box(back.len());
    }
}

#[cfg(feature = "apps")]
/// The text [`regex_scan`] searches, generated once per process: 256 KiB.
fn regex_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| text(256 * 1024))
}

/// `n` times: compile four regular expressions (dates, e-mail addresses,
/// numbers, words with a given shape) and count their matches in 256 KiB of
/// text, capturing groups for the dates.
#[cfg(feature = "apps")]
#[inline(never)]
pub fn regex_scan(n: u64) {
    let haystack = regex_text();
    for _ in 0..n {
        let date = regex::Regex::new(r"(\d{4})-(\d{2})-(\d{2})").unwrap();
        let mail = regex::Regex::new(r"\b[a-z]+@[a-z]+\.(org|com|net)\b").unwrap();
        let number = regex::Regex::new(r"\b[0-9]{3,5}\b").unwrap();
        let shaped = regex::Regex::new(r"\b(?:[aeiou][^aeiou\s]){2,}\w*").unwrap();
        let mut found = 0usize;
        for caps in date.captures_iter(haystack) {
            found += caps[1].len();
        }
        found += mail.find_iter(haystack).count();
        found += number.find_iter(haystack).count();
        found += shaped.find_iter(haystack).count();
        black_box(found);
    }
}

/// A `HashMap<String, Vec<u8>>` of `n` entries (formatted keys, values of 8
/// to 64 bytes) built, read back and dropped.
#[inline(never)]
pub fn hash_map(n: u64) {
    let mut rng = Rng::new(0x4a54);
    let mut map: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..n {
        let key = format!("key-{:x}-{i}", rng.next_u64() >> 40);
        let value = vec![i as u8; 8 + rng.below(57) as usize];
        map.insert(key, value);
    }
    let total: usize = map.values().map(Vec::len).sum();
    black_box(total);
    drop(map);
}

/// `n` strings of 2 to 9 letters generated into a `Vec<String>`, sorted
/// (stable sort: a scratch buffer) and dropped.
#[inline(never)]
pub fn sort_strings(n: u64) {
    let mut rng = Rng::new(0x5027);
    let mut v: Vec<String> = (0..n)
        .map(|_| {
            let mut s = String::new();
            push_word(&mut rng, &mut s);
            s
        })
        .collect();
    v.sort();
    black_box(&v);
}

/// Entries in each map of [`maps`].
const MAP_ENTRIES: u64 = 5_000;

/// `threads` threads, each building and dropping `n` maps: a
/// `BTreeMap<u64, String>` and a `HashMap<u64, Vec<u64>>` of [`MAP_ENTRIES`]
/// entries each. The same work per thread at 1 and 2 threads.
pub fn maps(threads: usize, n: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(0x3a95 + t as u64);
                for _ in 0..n {
                    let mut tree = BTreeMap::new();
                    let mut hash = HashMap::new();
                    for i in 0..MAP_ENTRIES {
                        let key = rng.next_u64();
                        tree.insert(key, String::from(&TEXT[..8 + (key % 25) as usize]));
                        hash.insert(key, vec![i; 1 + (key % 8) as usize]);
                    }
                    black_box((&tree, &hash));
                }
            });
        }
    });
}

fn maps_1t(n: u64) {
    maps(1, n)
}
fn maps_2t(n: u64) {
    maps(2, n)
}

/// Every workload, in table order. The default set is what `run-suite`
/// measures unless told otherwise (`--all`, `--only`); `larson-Nt` and
/// `glibc-thread-Nt` (one thread per CPU) are listed only on machines with
/// more than 2 CPUs.
pub fn all() -> Vec<Workload> {
    const PAIR: &str = "alloc+free pair";
    const PAIRS: u64 = 2_000_000;
    const REPLACED: &str = "block replaced per thread";
    let mut list = vec![
        // name, operation, ops per timed run, per callgrind run, threads, default set, run
        w(
            "vec-pairs",
            "Vec::with_capacity+drop",
            2_000_000,
            100_000,
            1,
            true,
            vec_pairs,
        ),
        w(
            "btree-20k",
            "20 k-entry BTreeMap",
            8,
            1,
            1,
            true,
            btree_maps,
        ),
        w(
            "hashmap",
            "HashMap entry",
            40_000,
            20_000,
            1,
            true,
            hash_map,
        ),
        w(
            "sort-strings",
            "String",
            100_000,
            20_000,
            1,
            true,
            sort_strings,
        ),
        w(
            "maps-1t",
            "5 k-entry map pair per thread",
            20,
            1,
            1,
            true,
            maps_1t,
        ),
        w(
            "maps-2t",
            "5 k-entry map pair per thread",
            20,
            1,
            2,
            true,
            maps_2t,
        ),
        w("pairs-64", PAIR, PAIRS, 100_000, 1, true, pairs_64),
        w(
            "vec-push",
            "256-byte Vec",
            100_000,
            10_000,
            1,
            true,
            vec_push,
        ),
        w("pairs-16", PAIR, PAIRS, 100_000, 1, false, pairs_16),
        w("pairs-256", PAIR, PAIRS, 100_000, 1, false, pairs_256),
        w("pairs-1024", PAIR, PAIRS, 100_000, 1, false, pairs_1024),
        w("pairs-4096", PAIR, PAIRS, 100_000, 1, false, pairs_4096),
        w("pairs-65536", PAIR, PAIRS, 100_000, 1, false, pairs_65536),
        w(
            "string-build",
            "24-word String",
            100_000,
            10_000,
            1,
            false,
            string_build,
        ),
        w("btree-1m", "entry", 1_000_000, 1_000_000, 1, false, btree),
        w(
            "larson-1t",
            REPLACED,
            1_000_000,
            100_000,
            1,
            false,
            larson_1t,
        ),
        w(
            "larson-2t",
            REPLACED,
            1_000_000,
            100_000,
            2,
            false,
            larson_2t,
        ),
        w(
            "glibc-thread-1t",
            REPLACED,
            1_000_000,
            100_000,
            1,
            false,
            glibc_thread_1t,
        ),
        w(
            "glibc-thread-2t",
            REPLACED,
            1_000_000,
            100_000,
            2,
            false,
            glibc_thread_2t,
        ),
        w(
            "glibc-simple-25",
            PAIR,
            PAIRS,
            100_000,
            1,
            false,
            glibc_simple_25,
        ),
        w(
            "glibc-simple-100",
            PAIR,
            PAIRS,
            100_000,
            1,
            false,
            glibc_simple_100,
        ),
        w(
            "glibc-simple-400",
            PAIR,
            PAIRS,
            100_000,
            1,
            false,
            glibc_simple_400,
        ),
        w(
            "glibc-simple-1600",
            PAIR,
            PAIRS,
            100_000,
            1,
            false,
            glibc_simple_1600,
        ),
    ];
    #[cfg(feature = "apps")]
    list.splice(
        4..4,
        [
            w(
                "json",
                "1.2 MB JSON parsed+serialised",
                3,
                1,
                1,
                true,
                json_round_trip,
            ),
            w(
                "regex",
                "4 regexes compiled+run over 256 KiB",
                8,
                1,
                1,
                true,
                regex_scan,
            ),
        ],
    );
    if cores() > 2 {
        list.push(w(
            "larson-Nt",
            REPLACED,
            1_000_000,
            100_000,
            cores() as u8,
            false,
            larson_nt,
        ));
        list.push(w(
            "glibc-thread-Nt",
            REPLACED,
            1_000_000,
            100_000,
            cores() as u8,
            false,
            glibc_thread_nt,
        ));
    }
    list
}
