//! Thin wrappers over the system calls several modules share: clocks and
//! anonymous mappings. They never allocate, lock or panic, so that code
//! inside the allocator can use them.

use core::ptr;

/// Nanoseconds on `clock` (`CLOCK_MONOTONIC`, `CLOCK_REALTIME`), saturating.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id leaves
    // it zero.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A fresh, zero-filled, readable and writable private mapping of `len`
/// bytes (no swap reserved), or `None`.
pub(crate) fn map_anonymous(len: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choice; nothing else is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}
