//! The heap limit: a cap on the bytes live through `MayFail` (Go's
//! `GOMEMLIMIT`, a memory cgroup's charge), so that the reclaimers and the
//! retry policy act where the kernel would otherwise let every `malloc`
//! succeed and end the process at a page fault.
//!
//! An allocation that would take the count over the limit is treated as a
//! null from the inner allocator: the retry policy runs the reclaimers
//! (telling them how many bytes are over), then its knob decides. `nofail`
//! scopes and mayfail's own slow path (reclaimers, the logger) may go over
//! the limit, as the kernel's `__GFP_NOFAIL` and `PF_MEMALLOC` may; that is
//! counted.
//!
//! ## The count
//!
//! The shared total (`stats::HEAP`) is written only when a thread's own share
//! runs out or overflows, never per allocation. Each thread keeps a credit
//! (bytes it may allocate without asking, taken from the total 64 KiB at a
//! time: [`BATCH`]) and a count of the bytes it freed since it last folded
//! them into its credit. On x86-64, when mayfail is linked into the
//! executable, `alloc.rs` subtracts a request's size from the credit and
//! adds a freed block's size to the freed count in place, from the thread
//! pointer; elsewhere the engaged path and `dealloc`'s out-of-line call do
//! the same here.
//!
//! The total is the bytes live plus every thread's credit and unfolded
//! frees: at most 128 KiB per thread above the bytes live (a thread holds
//! at most [`BATCH`] of credit and folds its frees once they pass
//! [`BATCH`]), so the limit may refuse an allocation up to 128 KiB per
//! thread early. A thread hands its share back when it exits (a `pthread`
//! key's destructor), registered the first time it comes to hold one: its
//! first charge from the total or its first free (a thread's freed count
//! starts where any free leaves the in-place lane, so that threads which
//! only free are registered too).
//!
//! Blocks allocated before the count started (a limit first set at run
//! time; under the preload library, blocks from before its constructor)
//! are not in the total, and the total never goes below 0: their frees
//! take off at most what it holds. The live bytes pass the limit by at most
//! the size of such blocks freed after the count started; without them,
//! never.
//! Once on, the count stays on for the rest of the process (also when the
//! limit is taken away), so that it stays right.
//!
//! Nothing here allocates or takes a lock; the shared words are written
//! with relaxed atomic adds on the slow path only.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::engaged;
use crate::report;
use crate::scope::{self, FREED_FRESH, FREED_START, LimitCells, Mode};
use crate::stats::{COUNTERS, HEAP, bump};
use crate::sys;

/// How many bytes a thread takes from the shared total at a time, and how
/// many it may have freed before it folds them back.
pub(crate) const BATCH: u64 = 64 << 10;

/// A heap limit, as [`set_limit`] and
/// [`MayFail::with_limit`](crate::MayFail::with_limit) take it, and as
/// `MAYFAIL_LIMIT` spells it (`512M`, `90%`, `cgroup`, `none`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// No limit.
    None,
    /// A number of bytes (`MAYFAIL_LIMIT=512M`).
    Bytes(usize),
    /// A percentage, 1 to 100, of the process's memory cgroup limit, or of
    /// the machine's RAM where no cgroup limits it (`MAYFAIL_LIMIT=90%`).
    Percent(u8),
    /// The process's memory cgroup limit (v2: the smaller of `memory.max`
    /// and `memory.high`; v1: `memory.limit_in_bytes`; the smallest along
    /// its ancestors), less the headroom for what is not heap (see
    /// [`set_limit_headroom`]); the machine's RAM less the headroom where no
    /// cgroup limits the process (`MAYFAIL_LIMIT=cgroup`).
    Cgroup,
}

/// The largest limit in bytes: larger values mean the same.
const MAX_BYTES: u64 = 1 << 60;

const KIND_NONE: u64 = 1;
const KIND_BYTES: u64 = 2;
const KIND_PERCENT: u64 = 3;
const KIND_CGROUP: u64 = 4;

/// A limit as one word (0: unset), for the layers.
pub(crate) const fn encode(limit: Limit) -> u64 {
    match limit {
        Limit::None => KIND_NONE,
        Limit::Bytes(b) => {
            let b = if b as u64 > MAX_BYTES {
                MAX_BYTES
            } else {
                b as u64
            };
            (b << 3) | KIND_BYTES
        }
        Limit::Percent(p) => ((p as u64) << 3) | KIND_PERCENT,
        Limit::Cgroup => KIND_CGROUP,
    }
}

fn decode(word: u64) -> Option<Limit> {
    let value = word >> 3;
    match word & 7 {
        KIND_NONE => Some(Limit::None),
        KIND_BYTES => Some(Limit::Bytes(value as usize)),
        KIND_PERCENT => Some(Limit::Percent(value as u8)),
        KIND_CGROUP => Some(Limit::Cgroup),
        _ => None,
    }
}

/// The limit's layers, highest first: [`set_limit`], `MAYFAIL_LIMIT`, the
/// compiled default. Read-mostly, on a line of their own.
#[repr(align(128))]
struct Layers {
    user: AtomicU64,
    env: AtomicU64,
    default: AtomicU64,
    /// The headroom's layers ([`set_limit_headroom`],
    /// `MAYFAIL_LIMIT_HEADROOM`), as `Bytes` or `Percent` words.
    headroom_user: AtomicU64,
    headroom_env: AtomicU64,
    /// When the cgroup's limit was last read (`sys::now_ns`).
    read_ns: AtomicU64,
    /// The soft mark, a percentage of the limit (`MAYFAIL_LIMIT_SOFT`;
    /// 0: off), and the mark in force in bytes (`u64::MAX`: none).
    soft_percent: AtomicU64,
    soft_bytes: AtomicU64,
    /// The background reclaimer's `eventfd` (-1: none), written when the
    /// count passes the soft mark.
    wake_fd: AtomicI32,
    /// Set from the wake-up until the background reclaimer has run.
    soft_pending: AtomicBool,
}

static LAYERS: Layers = Layers {
    user: AtomicU64::new(0),
    env: AtomicU64::new(0),
    default: AtomicU64::new(0),
    headroom_user: AtomicU64::new(0),
    headroom_env: AtomicU64::new(0),
    read_ns: AtomicU64::new(0),
    soft_percent: AtomicU64::new(DEFAULT_SOFT_PERCENT as u64),
    soft_bytes: AtomicU64::new(u64::MAX),
    wake_fd: AtomicI32::new(-1),
    soft_pending: AtomicBool::new(false),
};

/// The default soft mark: reclaim starts in the background when the count
/// passes this percentage of the limit.
pub const DEFAULT_SOFT_PERCENT: u8 = 90;

/// The default headroom under a cgroup limit: this percentage of the
/// limit, and at least [`MIN_HEADROOM`] bytes, for what the cgroup is
/// charged besides the heap (code, stacks, page cache, the allocator's own
/// overhead and fragmentation).
pub const DEFAULT_HEADROOM_PERCENT: u8 = 10;
/// The smallest default headroom, in bytes: 16 MiB.
pub const MIN_HEADROOM: usize = 16 << 20;

/// Whether the count is on: allocations are charged, frees credited.
#[inline]
pub(crate) fn counting() -> bool {
    engaged::is_set(engaged::LIMITED | engaged::LIMIT_LANE)
}

/// The limit in force, in bytes (`None`: no limit).
pub fn limit() -> Option<usize> {
    crate::config::read_env_once();
    read_env_once();
    let bytes = HEAP.limit.load(Relaxed);
    (bytes != usize::MAX).then_some(bytes)
}

/// The limit in force, in bytes, as the slow path reads it (the
/// environment has been read).
pub(crate) fn bytes() -> Option<usize> {
    let bytes = HEAP.limit.load(Relaxed);
    (bytes != usize::MAX).then_some(bytes)
}

/// Sets the heap limit for the rest of the process, over `MAYFAIL_LIMIT`
/// and the compiled default ([`MayFail::with_limit`](crate::MayFail::with_limit)).
/// Takes effect at once. The first limit set starts the count of the bytes
/// live through `MayFail` (see [`stats`](crate::stats)); blocks allocated
/// before it are not counted, and their frees take the count down to 0 at
/// most, so the bytes live may pass the limit by at most the size of such
/// blocks freed later. `Limit::None` takes the limit away; the count goes
/// on.
///
/// A percentage outside 1 to 100 is refused with one line on stderr and the
/// limit keeps its value.
///
/// ```
/// # #[global_allocator]
/// # static GLOBAL: mayfail::MayFail<std::alloc::System> = mayfail::MayFail::system();
/// use mayfail::Limit;
/// mayfail::set_limit(Limit::Bytes(1 << 30));
/// assert_eq!(mayfail::limit(), Some(1 << 30));
/// mayfail::set_limit(Limit::None);
/// assert_eq!(mayfail::limit(), None);
/// ```
pub fn set_limit(limit: Limit) {
    crate::config::read_env_once();
    read_env_once();
    if let Limit::Percent(p) = limit
        && !(1..=100).contains(&p)
    {
        report::bad_argument(
            format_args!("mayfail::set_limit(Limit::Percent({p}))"),
            LIMIT_ACCEPTED,
            format_args!("limit = {:?}", self::limit()),
        );
        return;
    }
    LAYERS.user.store(encode(limit), Relaxed);
    resolve();
}

/// Registers the compiled default (the first allocator served wins) and
/// reads `MAYFAIL_LIMIT`; starts the count if a limit is set. Called by
/// the first allocation, after the state offset is known.
pub(crate) fn start(default: u64) {
    if default != 0 {
        let _ = LAYERS
            .default
            .compare_exchange(0, default, Relaxed, Relaxed);
    }
    read_env_once();
    resolve();
}

static ENV_READ: AtomicU32 = AtomicU32::new(0);

/// Reads `MAYFAIL_LIMIT` once.
fn read_env_once() {
    if ENV_READ.swap(1, Relaxed) != 0 {
        return;
    }
    if let Some(value) = sys::getenv(c"MAYFAIL_LIMIT_HEADROOM") {
        match parse_headroom(value) {
            Ok(headroom) => LAYERS.headroom_env.store(encode(headroom), Relaxed),
            Err(()) => report::bad_env(
                "MAYFAIL_LIMIT_HEADROOM",
                value,
                HEADROOM_ACCEPTED,
                format_args!("{DEFAULT_HEADROOM_PERCENT}% of the cgroup's limit, at least 16M"),
            ),
        }
    }
    if let Some(value) = sys::getenv(c"MAYFAIL_LIMIT_SOFT") {
        let trimmed = value.trim_ascii();
        let percent = trimmed
            .strip_suffix(b"%")
            .and_then(crate::text::parse_u64)
            .filter(|&p| p <= 100);
        match percent {
            Some(p) => LAYERS.soft_percent.store(p, Relaxed),
            None => report::bad_env(
                "MAYFAIL_LIMIT_SOFT",
                value,
                "a percentage of the heap limit from 0% (off) to 100% (90%)",
                format_args!("{DEFAULT_SOFT_PERCENT}%"),
            ),
        }
    }
    if let Some(value) = sys::getenv(c"MAYFAIL_LIMIT") {
        match parse_limit(value) {
            Ok(limit) => LAYERS.env.store(encode(limit), Relaxed),
            Err(()) => report::bad_env(
                "MAYFAIL_LIMIT",
                value,
                LIMIT_ACCEPTED,
                format_args!(
                    "{:?}",
                    decode(LAYERS.default.load(Relaxed)).unwrap_or(Limit::None)
                ),
            ),
        }
    }
}

const LIMIT_ACCEPTED: &str = "a size in bytes with an optional K, M or G suffix (512M), a \
                              percentage from 1% to 100% of the memory cgroup's limit (else of \
                              RAM), cgroup (the cgroup's limit less the headroom), or none";
const HEADROOM_ACCEPTED: &str = "a size in bytes with an optional K, M or G suffix (64M), or a \
                                 percentage from 0% to 99% of the cgroup's limit";

/// `MAYFAIL_LIMIT_HEADROOM`: `BYTES[K|M|G]` or `N%` (0 to 99).
pub(crate) fn parse_headroom(s: &[u8]) -> Result<Limit, ()> {
    let s = s.trim_ascii();
    if let Some(digits) = s.strip_suffix(b"%") {
        let n = crate::text::parse_u64(digits).ok_or(())?;
        return if n < 100 {
            Ok(Limit::Percent(n as u8))
        } else {
            Err(())
        };
    }
    crate::config::parse_bytes(s).map(Limit::Bytes)
}

/// Sets the headroom that [`Limit::Cgroup`] leaves under the cgroup's limit
/// for what is not heap, in bytes, over `MAYFAIL_LIMIT_HEADROOM` and the
/// default ([`DEFAULT_HEADROOM_PERCENT`] of the limit, at least
/// [`MIN_HEADROOM`]). The limit in force is worked out again at once.
pub fn set_limit_headroom(bytes: usize) {
    crate::config::read_env_once();
    read_env_once();
    LAYERS
        .headroom_user
        .store(encode(Limit::Bytes(bytes)), Relaxed);
    resolve();
}

/// The headroom in force under a cgroup limit of `cgroup` bytes.
fn headroom(cgroup: u64) -> u64 {
    let word = [&LAYERS.headroom_user, &LAYERS.headroom_env]
        .iter()
        .map(|layer| layer.load(Relaxed))
        .find(|&w| w != 0);
    match word.and_then(decode) {
        Some(Limit::Bytes(b)) => b as u64,
        Some(Limit::Percent(p)) => cgroup / 100 * p as u64,
        _ => (cgroup / 100 * DEFAULT_HEADROOM_PERCENT as u64).max(MIN_HEADROOM as u64),
    }
}

/// The headroom [`Limit::Cgroup`] leaves under the process's cgroup limit
/// (or RAM), in bytes.
pub fn limit_headroom() -> usize {
    crate::config::read_env_once();
    read_env_once();
    let base = crate::cgroup::memory_limit().unwrap_or_else(ram);
    usize::try_from(headroom(base)).unwrap_or(usize::MAX)
}

/// `MAYFAIL_LIMIT`: `BYTES[K|M|G]`, `N%` (1 to 100) or `none`; surrounding
/// blanks allowed. A limit of 0 bytes is refused: nothing could be
/// allocated.
pub(crate) fn parse_limit(s: &[u8]) -> Result<Limit, ()> {
    let s = s.trim_ascii();
    if s.eq_ignore_ascii_case(b"none") {
        return Ok(Limit::None);
    }
    if s.eq_ignore_ascii_case(b"cgroup") {
        return Ok(Limit::Cgroup);
    }
    if let Some(digits) = s.strip_suffix(b"%") {
        let n = crate::text::parse_u64(digits).ok_or(())?;
        return match n {
            1..=100 => Ok(Limit::Percent(n as u8)),
            _ => Err(()),
        };
    }
    match crate::config::parse_bytes(s)? {
        0 => Err(()),
        n => Ok(Limit::Bytes(n)),
    }
}

/// The machine's RAM, in bytes.
fn ram() -> u64 {
    // SAFETY: an all-zero sysinfo is a valid value for the call to fill.
    let mut info: libc::sysinfo = unsafe { core::mem::zeroed() };
    // SAFETY: `info` is valid and writable; sysinfo does not allocate.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    #[allow(clippy::unnecessary_cast)] // the fields are narrower on 32-bit targets
    (info.totalram as u64).saturating_mul((info.mem_unit as u64).max(1))
}

/// Works out the limit in force from the layers, and starts the count when
/// there is one.
fn resolve() {
    let word = [&LAYERS.user, &LAYERS.env, &LAYERS.default]
        .iter()
        .map(|layer| layer.load(Relaxed))
        .find(|&w| w != 0)
        .unwrap_or(KIND_NONE);
    let bytes = match decode(word).unwrap_or(Limit::None) {
        Limit::None => u64::MAX,
        Limit::Bytes(b) => b as u64,
        Limit::Percent(p) => {
            let base = read_cgroup().unwrap_or_else(ram);
            (base / 100).saturating_mul(p as u64)
        }
        Limit::Cgroup => {
            let base = read_cgroup().unwrap_or_else(ram);
            base.saturating_sub(headroom(base)).max(1)
        }
    };
    let soft = match LAYERS.soft_percent.load(Relaxed) {
        0 => u64::MAX,
        p if bytes != u64::MAX => bytes / 100 * p,
        _ => u64::MAX,
    };
    LAYERS.soft_bytes.store(soft, Relaxed);
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    HEAP.limit.store(bytes, Relaxed);
    if bytes != usize::MAX {
        count();
    }
}

/// The cgroup's limit, noting when it was read.
fn read_cgroup() -> Option<u64> {
    LAYERS.read_ns.store(sys::now_ns().max(1), Relaxed);
    crate::cgroup::memory_limit()
}

/// On a limit hit: reads the cgroup's limit again if the limit depends on
/// it and it was last read more than a second ago, so that a container
/// whose limit changes is followed.
pub(crate) fn refresh_if_due() {
    let read = LAYERS.read_ns.load(Relaxed);
    if read != 0 && sys::now_ns().saturating_sub(read) >= 1_000_000_000 {
        resolve();
    }
}

/// The `pthread` key whose destructor hands an exiting thread's share back
/// (`u32::MAX`: none).
static EXIT_KEY: AtomicU32 = AtomicU32::new(u32::MAX);

/// Starts the count (once): the exit key, then the engaged word's bits.
fn count() {
    if counting() {
        return;
    }
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is writable; `thread_exit` never unwinds. glibc's
    // pthread_key_create does not allocate.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } == 0 {
        let _ = EXIT_KEY.compare_exchange(u32::MAX, key, Relaxed, Relaxed);
    }
    let flag = if lane_possible() {
        engaged::LIMIT_LANE
    } else {
        engaged::LIMITED
    };
    engaged::set(flag, true);
}

/// Whether the in-place lanes can reach every thread's share.
fn lane_possible() -> bool {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    {
        scope::STATE_OFFSET.load(Relaxed) != 0
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    false
}

/// Whether an allocation is exempt from the limit: inside `nofail`, or
/// mayfail's own slow path on this thread.
pub(crate) fn exempt() -> bool {
    scope::mode() == Mode::NoFail || scope::in_reclaim()
}

/// What a request charges before the inner allocator is asked, and what a
/// success gives back: an allocation charges its size; a realloc charges
/// its growth, or gives back its shrinkage.
pub(crate) fn delta(old: usize, new: usize, realloc: bool) -> (usize, usize) {
    if !realloc {
        (new, 0)
    } else if new >= old {
        (new - old, 0)
    } else {
        (0, old - new)
    }
}

/// Charges `bytes` to the calling thread; `Err(over)`, with nothing
/// charged, when they would take the total `over` bytes past the limit,
/// unless `exempt`.
pub(crate) fn charge(bytes: usize, exempt: bool) -> Result<(), usize> {
    let bytes = bytes as u64;
    scope::with_limit_cells(|cells| charge_thread(cells, bytes, exempt))
        .unwrap_or_else(|| reserve(bytes, exempt))
}

fn charge_thread(cells: &LimitCells, bytes: u64, exempt: bool) -> Result<(), usize> {
    let credit = settled_credit(cells);
    if credit >= bytes {
        cells.credit.set(credit - bytes);
        return Ok(());
    }
    let available = credit.saturating_add(take_freed(cells));
    if available >= bytes {
        keep(cells, available - bytes);
        return Ok(());
    }
    let need = bytes - available;
    cells.credit.set(0);
    let result = match reserve(need.saturating_add(BATCH), false) {
        Ok(()) => {
            cells.credit.set(BATCH);
            Ok(())
        }
        Err(_) => reserve(need, exempt).inspect_err(|_| keep(cells, available)),
    };
    register_exit(cells);
    result
}

/// The thread's credit, a borrow the in-place lane left undone taken as 0.
fn settled_credit(cells: &LimitCells) -> u64 {
    let credit = cells.credit.get();
    if credit > i64::MAX as u64 { 0 } else { credit }
}

/// Undoes the in-place lane's subtraction of `size` from the thread's
/// credit when it borrowed (the lane then left for the engaged path, which
/// charges the request itself).
pub(crate) fn undo_lane(size: usize) {
    let _ = scope::with_limit_cells(|cells| {
        let credit = cells.credit.get();
        if credit > i64::MAX as u64 {
            cells.credit.set(credit.wrapping_add(size as u64));
        }
    });
}

/// Takes the thread's unfolded frees, and makes its exit hand its share
/// back from now on: whatever it takes becomes the thread's credit or goes
/// back to the shared total.
fn take_freed(cells: &LimitCells) -> u64 {
    let start = if cells.registered.get() {
        FREED_START
    } else {
        FREED_FRESH
    };
    let freed = cells.freed.replace(FREED_START);
    register_exit(cells);
    freed.wrapping_sub(start) as u64
}

/// Leaves the thread `credit`, giving what passes [`BATCH`] back to the
/// shared total.
fn keep(cells: &LimitCells, credit: u64) {
    if credit > BATCH {
        release(credit - BATCH);
        cells.credit.set(BATCH);
    } else {
        cells.credit.set(credit);
    }
}

/// Takes `bytes` from the shared total; `Err(over)` when that would pass
/// the limit (and not `exempt`), taking nothing.
fn reserve(bytes: u64, exempt: bool) -> Result<(), usize> {
    let limit = HEAP.limit.load(Relaxed) as u64;
    let add = bytes.min(i64::MAX as u64 / 2) as i64;
    let total = HEAP.total.fetch_add(add, Relaxed).saturating_add(add);
    if total > 0 && total as u64 > limit {
        let over = total as u64 - limit;
        if !exempt {
            release(add as u64);
            return Err(usize::try_from(over).unwrap_or(usize::MAX));
        }
        bump(&COUNTERS.limit_exceeded);
    }
    HEAP.peak.fetch_max(total, Relaxed);
    if total > 0 && total as u64 > LAYERS.soft_bytes.load(Relaxed) {
        wake_background();
    }
    Ok(())
}

/// The count passed the soft mark: wakes the background reclaimer, once
/// until it has run, with a write to its `eventfd` (no lock, never blocks).
fn wake_background() {
    let fd = LAYERS.wake_fd.load(Relaxed);
    if fd < 0 || LAYERS.soft_pending.swap(true, Relaxed) {
        return;
    }
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to the eventfd; a full
    // counter (never, in practice) makes it fail with EAGAIN, harmlessly.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// Where the background reclaimer listens (`eventfd`), set once it runs.
pub(crate) fn set_wake_fd(fd: i32) {
    LAYERS.wake_fd.store(fd, Relaxed);
}

/// In a forked child, which has no background reclaimer: forgets (and
/// closes) the parent's `eventfd`, so that the child's allocations never
/// wake the parent's thread, and clears the wake-up, so that a reclaimer
/// the child starts is woken.
pub(crate) fn forget_wake_fd() {
    let fd = LAYERS.wake_fd.swap(-1, Relaxed);
    if fd >= 0 {
        // SAFETY: the child's copy of the parent's eventfd, closed once
        // (the swap above took it).
        unsafe { libc::close(fd) };
    }
    LAYERS.soft_pending.store(false, Relaxed);
}

/// The soft mark's work, for the background reclaimer: how many bytes the
/// count is above the soft mark (0: none), and clears the wake-up.
pub(crate) fn above_soft_mark() -> u64 {
    LAYERS.soft_pending.store(false, Relaxed);
    let total = HEAP.total.load(Relaxed);
    let soft = LAYERS.soft_bytes.load(Relaxed);
    if total > 0 && soft != u64::MAX {
        (total as u64).saturating_sub(soft)
    } else {
        0
    }
}

/// Gives `bytes` back to the shared total, which never goes below 0: the
/// frees of blocks allocated before the count started were never added to
/// it, and taking them off would leave room under the limit for as many
/// bytes again. Counting too many is the safe direction.
fn release(bytes: u64) {
    let bytes = bytes.min(i64::MAX as u64 / 2) as i64;
    let mut total = HEAP.total.load(Relaxed);
    loop {
        let after = total.saturating_sub(bytes).max(0);
        match HEAP
            .total
            .compare_exchange_weak(total, after, Relaxed, Relaxed)
        {
            Ok(_) => return,
            Err(now) => total = now,
        }
    }
}

/// Credits `bytes` freed (or given back by a shrinking realloc, or charged
/// for a request the inner allocator then refused) to the calling thread.
pub(crate) fn uncharge(bytes: usize) {
    let done = scope::with_limit_cells(|cells| {
        let freed = cells.freed.get().wrapping_add(bytes as i64);
        cells.freed.set(freed);
        if freed < 0 {
            fold(cells);
        }
    });
    if done.is_none() {
        release(bytes as u64);
    }
}

/// A block of `size` bytes is being freed, out of line: either the
/// in-place lane already added it and the thread's freed count passed
/// [`BATCH`] (the count is negative), or the lane was not taken.
pub(crate) fn freed_out_of_line(size: usize) {
    let lane_added = scope::with_limit_cells(|cells| {
        let added = cells.freed.get() < 0;
        if added {
            fold(cells);
        }
        added
    });
    if lane_added != Some(true) {
        uncharge(size);
    }
}

/// Folds the thread's frees into its credit.
fn fold(cells: &LimitCells) {
    let credit = settled_credit(cells).saturating_add(take_freed(cells));
    keep(cells, credit);
}

/// Makes the thread's exit hand its share back, once per thread.
fn register_exit(cells: &LimitCells) {
    if cells.registered.replace(true) {
        return;
    }
    let key = EXIT_KEY.load(Relaxed);
    if key != u32::MAX {
        // SAFETY: `key` was made by pthread_key_create; the value is a
        // non-null marker, never dereferenced. For the first keys glibc
        // stores it without allocating; later ones may allocate, which
        // re-enters the allocator with `registered` already set.
        unsafe { libc::pthread_setspecific(key, core::ptr::dangling::<u8>().cast()) };
    }
}

/// The exit key's destructor: the thread's credit and unfolded frees go
/// back to the shared total, and the thread starts afresh (a later
/// destructor's free registers the hand-back again: the C library runs the
/// keys' destructors again while any is set).
extern "C" fn thread_exit(_value: *mut libc::c_void) {
    let _ = scope::with_limit_cells(|cells| {
        let share = settled_credit(cells).saturating_add(take_freed(cells));
        cells.credit.set(0);
        cells.registered.set(false);
        cells.freed.set(FREED_FRESH);
        release(share);
    });
}

/// For `mayfail-preload`, whose frees can name only a block's usable size
/// (`malloc_usable_size`): after the engine served a request of `asked`
/// bytes with a block whose usable size is `usable()`, the heap limit's count
/// is corrected to the usable size, so that the block's free takes off
/// what its allocation put on. Nothing while the limit does not count. Not
/// part of the API.
#[doc(hidden)]
pub fn __count_usable(asked: usize, usable: impl FnOnce() -> usize) {
    if !counting() {
        return;
    }
    let usable = usable();
    if usable > asked {
        // The block is there already: the correction may pass the limit.
        let _ = charge(usable - asked, true);
    } else if asked > usable {
        uncharge(asked - usable);
    }
}

/// Whether the in-place lane would take an allocation now (the word is
/// exactly the lane's bit).
#[inline]
pub(crate) fn lane_on() -> bool {
    engaged::word() == engaged::LIMIT_LANE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_in_every_documented_form() {
        assert_eq!(parse_limit(b"512M"), Ok(Limit::Bytes(512 << 20)));
        assert_eq!(parse_limit(b" 4096 "), Ok(Limit::Bytes(4096)));
        assert_eq!(parse_limit(b"2g"), Ok(Limit::Bytes(2 << 30)));
        assert_eq!(parse_limit(b"90%"), Ok(Limit::Percent(90)));
        assert_eq!(parse_limit(b"100%"), Ok(Limit::Percent(100)));
        assert_eq!(parse_limit(b"none"), Ok(Limit::None));
        assert_eq!(parse_limit(b"NONE"), Ok(Limit::None));
        assert_eq!(parse_limit(b"cgroup"), Ok(Limit::Cgroup));
        assert_eq!(parse_headroom(b"64M"), Ok(Limit::Bytes(64 << 20)));
        assert_eq!(parse_headroom(b"0"), Ok(Limit::Bytes(0)));
        assert_eq!(parse_headroom(b"20%"), Ok(Limit::Percent(20)));
        for bad in [&b"100%"[..], b"x", b"-1", b""] {
            assert_eq!(parse_headroom(bad), Err(()));
        }
        for bad in [
            &b""[..],
            b"0",
            b"0%",
            b"101%",
            b"-5%",
            b"%",
            b"1.5G",
            b"12Q",
            b"512MB",
            b"cgroups",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_limit(bad),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits_survive_their_encoding() {
        for limit in [
            Limit::None,
            Limit::Bytes(1),
            Limit::Bytes(512 << 20),
            Limit::Percent(1),
            Limit::Percent(100),
            Limit::Cgroup,
        ] {
            assert_eq!(decode(encode(limit)), Some(limit));
        }
        assert_eq!(decode(0), None);
        assert_eq!(
            decode(encode(Limit::Bytes(usize::MAX))),
            Some(Limit::Bytes(MAX_BYTES as usize))
        );
    }

    #[test]
    fn a_realloc_charges_its_growth_and_gives_back_its_shrinkage() {
        assert_eq!(delta(0, 64, false), (64, 0));
        assert_eq!(delta(64, 100, true), (36, 0));
        assert_eq!(delta(100, 64, true), (0, 36));
    }
}
