//! A service that caches 1 GiB of 16 KiB responses, with a reclaimer that
//! drops the oldest half of its cache, for a container with less memory.
//!
//! ```sh
//! cargo build --release --example cache_service
//! # A memory cgroup of 256 MiB (cgroup v2 with systemd; see the guide for v1):
//! systemd-run --scope -p MemoryMax=256M -p MemorySwapMax=0 \
//!     target/release/examples/cache_service --system        # killed: exit 137
//! systemd-run --scope -p MemoryMax=256M -p MemorySwapMax=0 \
//!     env MAYFAIL_LIMIT=cgroup target/release/examples/cache_service
//! # Outside any cgroup, a limit in bytes:
//! MAYFAIL_LIMIT=256M target/release/examples/cache_service
//! ```
//!
//! With `--system` the responses come straight from `System`, as in a
//! program without `MayFail`: under the cgroup's limit every `malloc`
//! succeeds and the kernel's OOM killer ends the process at a page fault;
//! the reclaimer never runs. Under `MayFail` with `MAYFAIL_LIMIT=cgroup`, an
//! allocation that would take the heap past the cgroup's limit (less a
//! headroom) runs the reclaimer first, and every request is served.
//! Arguments: `[--system] [REQUESTS]` (default 65536: 1 GiB of responses).

mod service;

use mayfail::MayFail;
use service::{Heap, report, serve};

#[global_allocator]
static GLOBAL: MayFail<std::alloc::System> = MayFail::system();

fn main() -> std::process::ExitCode {
    let mut heap = Heap::Global;
    let mut requests = 65536u64;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--system" => heap = Heap::System,
            n => match n.parse() {
                Ok(n) => requests = n,
                Err(_) => {
                    eprintln!(
                        "cache_service: unknown argument {n:?}; usage: cache_service [--system] [REQUESTS]"
                    );
                    return std::process::ExitCode::from(2);
                }
            },
        }
    }
    let served = serve(requests, heap);
    println!("{}", report(served));
    std::process::ExitCode::SUCCESS
}
