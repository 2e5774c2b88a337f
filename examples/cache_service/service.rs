//! The service: answers requests with 16 KiB responses and caches every
//! response; a reclaimer drops the oldest half of the cache. Shared by the
//! `cache_service` example and the container test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The size of one response.
pub const RESPONSE: usize = 16 << 10;

/// Where responses are allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heap {
    /// Through the global allocator (`MayFail`).
    Global,
    /// Straight from `System`, as a program without `MayFail` does.
    System,
}

/// One cached response: 16 KiB, every page written.
pub struct Response {
    block: NonNull<u8>,
    heap: Heap,
}

// SAFETY: a response owns its block; blocks can be freed from any thread.
unsafe impl Send for Response {}

const LAYOUT: Layout = match Layout::from_size_align(RESPONSE, 16) {
    Ok(layout) => layout,
    Err(_) => panic!("a valid layout"),
};

impl Response {
    /// Builds the response to request `n`.
    pub fn new(n: u64, heap: Heap) -> Response {
        // SAFETY: the layout has a non-zero size.
        let block = unsafe {
            match heap {
                Heap::Global => std::alloc::alloc(LAYOUT),
                Heap::System => System.alloc(LAYOUT),
            }
        };
        let Some(block) = NonNull::new(block) else {
            std::alloc::handle_alloc_error(LAYOUT);
        };
        // SAFETY: a fresh block of RESPONSE writable bytes.
        unsafe { block.as_ptr().write_bytes((n % 251) as u8, RESPONSE) };
        Response { block, heap }
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, from this heap.
        unsafe {
            match self.heap {
                Heap::Global => std::alloc::dealloc(self.block.as_ptr(), LAYOUT),
                Heap::System => System.dealloc(self.block.as_ptr(), LAYOUT),
            }
        }
    }
}

/// The cache, oldest response first.
pub static CACHE: Mutex<VecDeque<Response>> = Mutex::new(VecDeque::new());
/// How often the reclaimer ran, and how many responses it dropped.
pub static RECLAIMER_RUNS: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The reclaimer: drops the oldest half of the cache. It runs on the thread
/// whose allocation hit the limit, which may hold the cache's lock: it only
/// tries the lock.
pub fn drop_oldest_half(_wanted: usize) -> usize {
    RECLAIMER_RUNS.fetch_add(1, Relaxed);
    let Ok(mut cache) = CACHE.try_lock() else {
        return 0;
    };
    let n = cache.len() / 2;
    cache.drain(..n);
    DROPPED.fetch_add(n as u64, Relaxed);
    n * RESPONSE
}

/// The process's peak resident set (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Serves `requests` requests, caching every response, and returns the
/// number served. Prints progress every 1024 requests.
pub fn serve(requests: u64, heap: Heap) -> u64 {
    mayfail::add_reclaimer(drop_oldest_half).expect("a reclaimer slot");
    let mut served = 0;
    for n in 0..requests {
        let response = Response::new(n, heap);
        CACHE.lock().unwrap().push_back(response);
        served += 1;
        if served % 1024 == 0 {
            println!("served {served}");
        }
    }
    served
}

/// One line of figures: requests served, cache, the heap's peak, the
/// reclaimer's runs, mayfail's counters.
pub fn report(served: u64) -> String {
    let s = mayfail::stats();
    format!(
        "served={served} cached={} peak_rss={} heap_peak={} limit={} limit_hits={} \
         soft_reclaims={} reclaim_passes={} reclaimer_runs={} dropped={} failed={}",
        CACHE.lock().unwrap().len(),
        peak_rss(),
        s.heap_peak,
        s.limit.map_or("none".to_owned(), |l| l.to_string()),
        s.limit_hits,
        s.soft_reclaims,
        s.reclaim_passes,
        RECLAIMER_RUNS.load(Relaxed),
        DROPPED.load(Relaxed),
        s.failed,
    )
}
