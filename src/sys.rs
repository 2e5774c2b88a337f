//! The operating-system calls the rest of the crate shares: clocks,
//! anonymous mappings, the environment, `errno`, raw writes, thread names,
//! background threads, the address-space limit, signal names and glibc's
//! exit hook.
//!
//! A leaf: it depends on nothing else in the crate. Every function here but
//! [`spawn_detached`] (which creates a thread, outside the allocator) may
//! run inside the allocator or a signal handler, so none allocates, locks or
//! panics.

#[cfg(feature = "inject")]
use core::ffi::c_int;
use core::ffi::{CStr, c_void};
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
    #[allow(clippy::unnecessary_cast)] // time_t and c_long are 32-bit on some targets
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Nanoseconds on the monotonic clock.
pub(crate) fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// A fresh, zero-filled, readable and writable private mapping of `len`
/// bytes (no swap reserved), or `None`.
#[cfg(any(feature = "sweep", feature = "sites", feature = "pressure"))]
pub(crate) fn map_anonymous(len: usize) -> Option<*mut u8> {
    // Miri does not model MAP_NORESERVE; the reservation changes nothing it
    // checks.
    let flags = if cfg!(miri) {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
    } else {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
    };
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choice; nothing else is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

/// Unmaps a mapping made by [`map_anonymous`].
///
/// # Safety
///
/// `ptr` and `len` describe a whole mapping from [`map_anonymous`] that
/// nothing uses any more.
#[cfg(any(feature = "sweep", feature = "sites"))]
pub(crate) unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { libc::munmap(ptr.cast(), len) };
}

/// The environment variable's bytes, without allocating.
pub(crate) fn getenv(name: &CStr) -> Option<&'static [u8]> {
    // SAFETY: `name` is NUL-terminated. The returned pointer, if not null,
    // points to a NUL-terminated string in the environment block, which we
    // only read here, before the program is likely to modify its environment.
    let p = unsafe { libc::getenv(name.as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` is a valid NUL-terminated C string (see above); the
    // environment block lives for the rest of the process unless the program
    // calls `setenv`, and callers use the slice during start-up only.
    Some(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Sets the calling thread's `errno`.
#[cfg(feature = "sites")]
pub(crate) fn set_errno(value: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = value };
}

/// This thread's `errno`.
pub(crate) fn errno() -> i32 {
    // SAFETY: `__errno_location` returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Writes all of `bytes` to `fd` with `write(2)`, retrying on `EINTR` and
/// short writes, giving up silently on any other error.
pub(crate) fn write_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live, initialised slice;
        // `write` does not keep the pointer.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n > 0 {
            bytes = &bytes[n as usize..];
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// Writes all of `bytes` to stderr as [`write_fd`] does.
pub(crate) fn write_stderr(bytes: &[u8]) {
    write_fd(libc::STDERR_FILENO, bytes);
}

/// The kernel keeps 15 bytes of a thread's name (16 with the NUL).
#[cfg(feature = "inject")]
pub(crate) const KERNEL_NAME_BYTES: usize = 15;

/// The current thread's name as the kernel keeps it, into `buf`.
#[cfg(feature = "inject")]
pub(crate) fn thread_name(buf: &mut [u8; 16]) -> &[u8] {
    // SAFETY: `buf` is 16 writable bytes, the size the call is given;
    // pthread_getname_np on the calling thread uses prctl, no allocation.
    let rc = unsafe {
        libc::pthread_getname_np(libc::pthread_self(), buf.as_mut_ptr().cast(), buf.len())
    };
    if rc != 0 {
        return &[];
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..len]
}

/// The calling thread's kernel id.
pub(crate) fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The calling process's id.
#[cfg(feature = "inject")]
pub(crate) fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// The soft `RLIMIT_AS` in bytes, or `None` when there is none (or it cannot
/// be read).
pub(crate) fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit; getrlimit does not allocate.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    #[allow(clippy::unnecessary_cast)] // rlim_t is narrower on some targets
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as u64)
}

/// The machine's RAM plus swap, in bytes (`sysinfo`), or `None`.
pub(crate) fn memory_and_swap() -> Option<u64> {
    // SAFETY: an all-zero sysinfo is a valid value for the call to fill.
    let mut info: libc::sysinfo = unsafe { core::mem::zeroed() };
    // SAFETY: `info` is valid and writable; sysinfo does not allocate.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the fields are narrower on 32-bit targets
    let unit = (info.mem_unit as u64).max(1);
    #[allow(clippy::unnecessary_cast)]
    let total = (info.totalram as u64).saturating_add(info.totalswap as u64);
    Some(total.saturating_mul(unit))
}

/// The name of a signal, for reports: `SIGABRT`, `SIGSEGV`... or `signal`.
#[cfg(feature = "inject")]
pub(crate) fn signal_name(sig: c_int) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

#[cfg(feature = "inject")]
#[cfg(feature = "sites")]
unsafe extern "C" {
    /// glibc's `on_exit`: like `atexit`, with the exit status. The `libc`
    /// crate does not declare it; the crate supports glibc only (see the
    /// `compile_error!` in the crate root).
    fn on_exit(function: extern "C" fn(status: c_int, arg: *mut c_void), arg: *mut c_void)
    -> c_int;
}

/// Runs `function` with the exit status when the process exits normally.
#[cfg(feature = "sites")]
pub(crate) fn call_on_exit(function: extern "C" fn(status: c_int, arg: *mut c_void)) {
    // SAFETY: `function` is a valid handler for the life of the process and
    // takes no argument we pass.
    unsafe { on_exit(function, ptr::null_mut()) };
}

/// A file's identity: its device and inode numbers.
#[cfg(any(feature = "sweep", feature = "sites"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    pub(crate) device: u64,
    pub(crate) inode: u64,
}

/// The identity of the file open at `fd`, or `None` if `fd` is not open.
/// Async-signal-safe.
#[cfg(any(feature = "sweep", feature = "sites"))]
pub(crate) fn file_id(fd: c_int) -> Option<FileId> {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is writable; fstat of any number is safe.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are narrower on some targets
    Some(FileId {
        device: st.st_dev as u64,
        inode: st.st_ino as u64,
    })
}

/// Moves a descriptor of ours out of the way of the program's own: to the
/// first free number from three quarters of the descriptor limit (at most
/// 3072) up, close-on-exec, closing `fd`. A program that opens files gets
/// the lowest free numbers, and one that closes "all" its descriptors
/// usually closes a low range. Returns `fd` itself if it cannot be moved.
/// Async-signal-safe.
#[cfg(any(feature = "sweep", feature = "sites"))]
pub(crate) fn move_descriptor_high(fd: c_int) -> c_int {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(4096) as c_int
    } else {
        1024
    };
    let base = soft / 4 * 3;
    if base <= fd {
        return fd;
    }
    // SAFETY: duplicating an open descriptor of ours to a free number.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, base) };
    if moved < 0 {
        return fd;
    }
    // SAFETY: `fd` is ours and now duplicated.
    unsafe { libc::close(fd) };
    moved
}

/// Starts a detached POSIX thread running `entry(arg)` on a stack of
/// `stack` bytes, with every signal blocked in it: mayfail's background
/// threads never take a signal meant for the process (one that the program
/// blocks in its own threads to wait for it with `sigwait`). The mask is set
/// around `pthread_create`, so the thread has it from its first
/// instruction; the caller's mask is restored after. `false` when the
/// thread could not be created.
///
/// May allocate (the C library's thread set-up): never called inside the
/// allocator.
///
/// # Safety
///
/// `entry` must never unwind, and `arg` must stay valid for as long as it
/// uses it.
pub(crate) unsafe fn spawn_detached(
    entry: extern "C" fn(*mut c_void) -> *mut c_void,
    arg: *mut c_void,
    stack: usize,
) -> bool {
    // SAFETY: all-zero pthread_t, attribute and signal sets are valid
    // storage for the calls below to initialise.
    let (mut thread, mut attr, mut all, mut old): (
        libc::pthread_t,
        libc::pthread_attr_t,
        libc::sigset_t,
        libc::sigset_t,
    ) = unsafe { core::mem::zeroed() };
    // SAFETY: `attr` is initialised before use and destroyed after; the
    // sets are valid and writable; the thread is detached, so nobody joins
    // it; the caller vouches for `entry` and `arg`. None of these calls
    // unwinds.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, stack);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        let rc = libc::pthread_create(&mut thread, &attr, entry, arg);
        libc::pthread_attr_destroy(&mut attr);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        rc == 0
    }
}

/// A pidfd for `pid`, a child of ours not yet reaped; `-1` where the
/// kernel has no pidfds (before Linux 5.3).
#[cfg(any(feature = "sweep", feature = "sites"))]
pub(crate) fn pidfd_open(pid: libc::pid_t) -> c_int {
    // SAFETY: pidfd_open takes a pid and flags and returns a descriptor or
    // -1; `pid` is our unreaped child, so it names no other process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 { -1 } else { fd as c_int }
}

/// The start of the file at `path` (at most `buf.len()` bytes), read
/// without allocating.
#[cfg(feature = "sites")]
pub(crate) fn read_small<'a>(path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: a NUL-terminated path; closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: reads at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` is open and ours.
    unsafe { libc::close(fd) };
    buf.get(..usize::try_from(n).ok()?)
}

/// How many threads this process has (`/proc/self/stat`'s 20th field),
/// read without allocating; `None` if it cannot be read.
#[cfg(feature = "sites")]
pub(crate) fn thread_count() -> Option<u64> {
    threads_of(c"/proc/self/stat")
}

/// How many threads the process whose `stat` file is `path` has.
#[cfg(feature = "sites")]
pub(crate) fn threads_of(path: &CStr) -> Option<u64> {
    let mut buf = [0u8; 1024];
    let text = read_small(path, &mut buf)?;
    // The command's name (field 2) may hold spaces and parentheses: the
    // fields after it start after its last `)`.
    let after = text.iter().rposition(|&b| b == b')')?;
    let field = text[after + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(17)?;
    core::str::from_utf8(field).ok()?.parse().ok()
}

/// Names the calling thread (at most [`KERNEL_NAME_BYTES`] bytes).
pub(crate) fn name_this_thread(name: &CStr) {
    // SAFETY: names the calling thread, alive; `name` is NUL-terminated.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
}

/// Whether this process runs under valgrind (its preloaded core library is
/// mapped): the unit tests that fork skip there, as valgrind's forked
/// children report the blocks of the parent's threads as errors at `_exit`.
#[cfg(all(test, feature = "inject"))]
pub(crate) fn under_valgrind() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.contains("/vgpreload_"))
}
