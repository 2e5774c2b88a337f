//! Stacks and their names: walking the current stack without allocating,
//! the table of loaded modules (so an address can be named relative to its
//! file), resolving addresses to functions and lines (C++ names demangled
//! by the process's own C++ runtime), and classifying a frame as allocation
//! machinery (mayfail, std, alloc, core, the C++ standard library, the C
//! library's functions that allocate for their caller), the runtime (the
//! Rust runtime, the test harness, the loader, libc's start-up and exit) or
//! the user's code.
//!
//! Used by the crash report, the sweep and the site walk. Walking and
//! locating never allocate, lock or panic; resolving and classifying
//! allocate (the `backtrace` crate) and take that crate's lock, so callers
//! run them under the in-reclaim mark, never from a signal handler before
//! the report's first lines are out. A fork waits for the address being
//! resolved (`pthread_atfork`), so no child starts with that lock held; a
//! resolution for the allocator never waits for a fork (it gives up, and
//! the new stack passes unrecorded).

use core::cell::Cell;
use core::ffi::c_void;
use core::fmt::Write;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::path::Path;

#[cfg(feature = "sites")]
pub(crate) use crate::modules::modules;
pub(crate) use crate::modules::{build_modules, locate};
use crate::sys;
use crate::text::StackBuf;

/// Frames kept per stack.
pub(crate) const MAX_FRAMES: usize = 64;
/// Frames printed in a backtrace after trimming.
const PRINTED_FRAMES: usize = 16;

/// Fills `frames` with the return addresses of the current stack, innermost
/// first; returns how many. Does not allocate.
#[inline(never)]
pub(crate) fn walk(frames: &mut [usize]) -> usize {
    let mut depth = 0;
    // SAFETY: on Unix, the unsynchronized walk uses libgcc's unwinder, which
    // is thread-safe and does not allocate; the crate's lock only matters
    // for Windows' dbghelp.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if depth == frames.len() {
                return false;
            }
            frames[depth] = frame.ip() as usize;
            depth += 1;
            depth < frames.len()
        });
    }
    depth
}

/// Crates whose functions are allocation machinery, not the caller: the
/// standard library, mayfail (and its preload library) and its unwinder,
/// and the allocation plumbing of the collections crates (hashbrown's
/// tables, allocator-api2's `Global`), which the user calls into but does
/// not write.
const MACHINERY_CRATES: [&str; 8] = [
    "std",
    "alloc",
    "core",
    "mayfail",
    "mayfail_preload",
    "backtrace",
    "hashbrown",
    "allocator_api2",
];
/// Symbols of the global allocator shims, which have no crate path.
const MACHINERY_SYMBOLS: [&str; 3] = ["__rust", "__rdl", "__rg_"];

/// Splits a qualified path `<Type as Trait>::rest` (or `<Type>::rest`) into
/// its self type and trait; `None` for a plain path.
fn split_qualified(name: &str) -> Option<(&str, Option<&str>)> {
    let inner = name.strip_prefix('<')?;
    let bytes = inner.as_bytes();
    let mut depth = 0usize;
    let mut as_at = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' | b'(' | b'[' => depth += 1,
            // `->` in a fn type is no bracket.
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' | b')' | b']' if depth > 0 => depth -= 1,
            b'>' => {
                let ty = &inner[..as_at.unwrap_or(i)];
                let tr = as_at.map(|at| &inner[at + 4..i]);
                return Some((ty, tr));
            }
            b' ' if depth == 0 && as_at.is_none() && inner[i..].starts_with(" as ") => {
                as_at = Some(i);
            }
            _ => {}
        }
    }
    None
}

/// The crate a type's path names: `None` for a primitive (`str`, `u8`,
/// `[T]`) or a generic parameter, which belong to no crate.
fn crate_of_type(ty: &str) -> Option<&str> {
    let mut ty = ty.trim();
    for prefix in ["&mut ", "&", "*const ", "*mut ", "dyn ", "impl ", "[", "("] {
        if let Some(rest) = ty.strip_prefix(prefix) {
            ty = rest.trim_start();
        }
    }
    if ty.starts_with('<') {
        return crate_of(ty);
    }
    let path = &ty[..ty.find(['<', '(', ';', ',', ' ']).unwrap_or(ty.len())];
    let (krate, _) = path.split_once("::")?;
    Some(krate)
}

/// The crate that defines a demangled function: the first segment of a
/// plain path; for a method of a trait impl `<Type as Trait>::f`, the
/// trait's crate when that is not the standard library (a third-party trait
/// implemented on `Rc<T>` is that crate's code), else the type's crate when
/// it has one (a user's type implementing `Clone`), else the trait's (std
/// implementing its own traits on `str`, `u8` or a generic `T`). `None` for
/// a symbol without a path (`main`, `__rust_alloc`, C functions). An
/// inherent method of a primitive type is std's.
fn crate_of(name: &str) -> Option<&str> {
    match split_qualified(name) {
        Some((ty, Some(tr))) => {
            let trait_crate = crate_of_type(tr);
            match (trait_crate, crate_of_type(ty)) {
                (Some(t), _) if !is_std(t) => Some(t),
                (_, Some(y)) if !is_std(y) => Some(y),
                (t, y) => t.or(y),
            }
        }
        // Only the standard library has inherent methods on primitives
        // (`<[u8]>::to_vec_in`, `<str>::repeat`).
        Some((ty, None)) => crate_of_type(ty).or(Some("core")),
        None => crate_of_type(name),
    }
}

/// The standard library's crates, and its private dependencies, which carry
/// a disambiguator in their names (`gimli[9d27...]`).
fn is_std(krate: &str) -> bool {
    matches!(krate, "std" | "alloc" | "core") || krate.contains('[')
}

/// Whether a demangled symbol belongs to the allocation machinery: its
/// defining crate (see [`crate_of`]) is one of [`MACHINERY_CRATES`] or of
/// std's private dependencies, or it is an allocator shim.
pub(crate) fn is_machinery(name: &str) -> bool {
    match crate_of(name) {
        // `__rustc::__rust_alloc`: the shims, in their own namespace.
        Some(krate) => {
            is_std(krate) || MACHINERY_CRATES.contains(&krate) || krate.starts_with("__rust")
        }
        None => MACHINERY_SYMBOLS.iter().any(|p| name.starts_with(p)),
    }
}

/// Whether a function is mayfail's sweep running the operation (the
/// operation's caller): a call site is never below it.
fn is_sweep_runner(name: &str) -> bool {
    name.starts_with("mayfail::sweep::") || name.starts_with("<mayfail::sweep::")
}

/// mayfail's sources as its debug information names them (the package's
/// directory, a registry's copy or a path dependency), and those of its
/// sweep and of the preload library beside it in the workspace.
const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
const SWEEP_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/sweep/");
const PRELOAD_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mayfail-preload/src/");

/// Whether a name has no crate path: `two_points`, `{closure#0}`,
/// `trace_unsynchronized<F>`. A build with `debug = "line-tables-only"`
/// names its functions (the inlined ones, and those instantiated in it)
/// that way; a shim or a C function has no path either.
fn is_unqualified(name: &str) -> bool {
    crate_of(name).is_none()
}

/// Whether a source file is allocation machinery's: std, alloc and core
/// (and std's vendored dependencies) from a toolchain, mayfail's own, or a
/// registry crate of [`MACHINERY_CRATES`]. For frames whose name has no
/// crate path.
fn is_machinery_file(file: &Path) -> bool {
    let Some(file) = file.to_str() else {
        return false;
    };
    if file.starts_with(OWN_SOURCES) || file.starts_with(PRELOAD_SOURCES) {
        return true;
    }
    // std's vendored dependencies; the C++ standard library's headers
    // (a function inlined from them may be named without its namespace).
    if file.contains("/rust/deps/") || file.contains("/include/c++/") {
        return true;
    }
    if RUNTIME_FILES.iter().any(|r| file.contains(r)) {
        return ["/library/std/", "/library/alloc/", "/library/core/"]
            .iter()
            .any(|lib| file.contains(lib));
    }
    crate::text::registry_crate(file).is_some_and(|krate| {
        MACHINERY_CRATES.iter().any(|m| {
            m.len() == krate.len()
                && m.bytes()
                    .zip(krate.bytes())
                    .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
        })
    })
}

/// One function a return address stands for: several when functions were
/// inlined there, innermost first.
pub(crate) struct Frame<'a> {
    /// The demangled name, without the hash (`<unknown>` if there is none).
    pub(crate) name: &'a str,
    /// Whether the debug information named it.
    #[cfg_attr(not(feature = "sites"), allow(dead_code))]
    pub(crate) named: bool,
    /// Its source file, if known.
    pub(crate) file: Option<&'a Path>,
    /// Its line, if known.
    pub(crate) line: Option<u32>,
    /// Whether its symbol is a C++ one (Itanium mangling).
    #[cfg_attr(not(feature = "sites"), allow(dead_code))]
    pub(crate) cpp: bool,
    /// Whether it is the C++ standard library's (see [`is_cpp_library`]).
    pub(crate) cpp_library: bool,
}

impl Frame<'_> {
    /// Whether it is allocation machinery: the C++ standard library's, by
    /// its mangled name; by its crate path ([`is_machinery`]); or for a name
    /// without one, by its file.
    pub(crate) fn is_machinery(&self) -> bool {
        self.cpp_library
            || is_machinery(self.name)
            || (is_unqualified(self.name) && self.file.is_some_and(is_machinery_file))
    }

    /// Whether it is the sweep's runner (see [`is_sweep_runner`]), by name
    /// or, for a name without a crate path, by its file.
    fn is_sweep_runner(&self) -> bool {
        is_sweep_runner(self.name)
            || (is_unqualified(self.name)
                && self
                    .file
                    .and_then(Path::to_str)
                    .is_some_and(|f| f.starts_with(SWEEP_SOURCES)))
    }
}

/// Calls `f` with each function `ip` stands for, innermost first. The one
/// place addresses are turned into names: the `backtrace` crate allocates
/// and takes its lock while it resolves, so callers hold the in-reclaim mark
/// and never run it from a signal handler before the report's first lines.
pub(crate) fn resolve(ip: usize, mut f: impl FnMut(&Frame<'_>)) {
    let Some(_resolving) = Resolving::enter() else {
        return;
    };
    backtrace::resolve(ip as *mut c_void, |symbol| {
        let mut text = StackBuf::<512>::new();
        let mut demangled = StackBuf::<512>::new();
        let (mut cpp, mut cpp_library) = (false, false);
        let named = match symbol.name() {
            Some(name) => {
                let named = write!(text, "{name:#}").is_ok();
                // Left mangled by Rust's demangler: a C++ symbol.
                let raw = name.as_bytes();
                if text.as_bytes().starts_with(b"_Z") || raw.starts_with(b"__cxa_") {
                    cpp = true;
                    cpp_library = is_cpp_library(raw);
                    if !demangle_cpp(raw, &mut demangled) {
                        demangled = StackBuf::new();
                    }
                }
                named
            }
            None => text.write_str("<unknown>").is_err(),
        };
        let text = if demangled.as_bytes().is_empty() {
            &text
        } else {
            &demangled
        };
        // A name cut inside a character keeps its whole characters.
        let bytes = text.as_bytes();
        let name = match core::str::from_utf8(bytes) {
            Ok(name) => name,
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
        };
        f(&Frame {
            name,
            named,
            file: symbol.filename(),
            line: symbol.lineno(),
            cpp,
            cpp_library,
        });
    });
}

/// Whether a C++ symbol (Itanium mangling, `_Z...`) is the C++ standard
/// library's allocation machinery: `operator new` and `operator delete`
/// (`_Znwm`, `_Znam`...), a function of namespace `std` (`St`, or one of
/// the abbreviations `Sa` for `std::allocator`, `Sb`, `Ss`, `Si`, `So`,
/// `Sd` for the strings and streams) or `__gnu_cxx`, whatever its
/// qualifiers, or of a local entity (a lambda) inside one; and the C++
/// runtime's `__cxa_` functions (`__cxa_allocate_exception` allocates a
/// `throw`'s exception). `std::vector<T>::_M_realloc_insert`,
/// `std::__new_allocator<T>::allocate`, `std::allocator_traits` and
/// `std::__cxx11::basic_string<...>::_M_create` all are: the user's
/// function that called them is the site.
fn is_cpp_library(mangled: &[u8]) -> bool {
    if mangled.starts_with(b"__cxa_") {
        return true;
    }
    let Some(mut rest) = mangled.strip_prefix(b"_Z") else {
        return false;
    };
    // A local entity belongs to its enclosing function, which comes next.
    rest = rest.strip_prefix(b"Z").unwrap_or(rest);
    if [&b"nw"[..], b"na", b"dl", b"da"]
        .iter()
        .any(|op| rest.starts_with(op))
    {
        return true;
    }
    if let Some(nested) = rest.strip_prefix(b"N") {
        rest = nested;
    }
    // CV and reference qualifiers of a member function; internal linkage.
    while let [b'r' | b'V' | b'K' | b'R' | b'O' | b'L', tail @ ..] = rest {
        rest = tail;
    }
    matches!(
        rest,
        [b'S', b't' | b'a' | b'b' | b's' | b'i' | b'o' | b'd', ..]
    ) || rest.starts_with(b"9__gnu_cxx")
}

/// The C++ runtime's demangler, `char *__cxa_demangle(const char *mangled,
/// char *buffer, size_t *length, int *status)` (Itanium C++ ABI).
type CxaDemangle = unsafe extern "C" fn(
    *const core::ffi::c_char,
    *mut core::ffi::c_char,
    *mut usize,
    *mut core::ffi::c_int,
) -> *mut core::ffi::c_char;

/// Writes the demangled form of the C++ symbol `mangled` into `out`
/// (`std::vector<int, std::allocator<int> >::push_back(int const&)`), with
/// the C++ runtime's `__cxa_demangle`, looked up in the process: every C++
/// program has loaded one. `false`, and nothing written, if there is none
/// or it cannot demangle the name. Allocates (the demangler returns a
/// `malloc`'d string): only where resolving does, under the in-reclaim
/// mark.
fn demangle_cpp<const N: usize>(mangled: &[u8], out: &mut StackBuf<N>) -> bool {
    let mut c_name = [0u8; 1024];
    if mangled.len() >= c_name.len() || mangled.contains(&0) {
        return false;
    }
    c_name[..mangled.len()].copy_from_slice(mangled);
    // SAFETY: a NUL-terminated name; RTLD_DEFAULT searches the loaded
    // objects in their usual order.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__cxa_demangle".as_ptr()) };
    if symbol.is_null() {
        return false;
    }
    // SAFETY: `__cxa_demangle` has this signature in the Itanium C++ ABI,
    // which every C++ runtime on this platform follows.
    let demangle = unsafe { core::mem::transmute::<*mut c_void, CxaDemangle>(symbol) };
    let mut status: core::ffi::c_int = -1;
    // SAFETY: a NUL-terminated name; no buffer and no length, so the
    // demangler allocates the result; a valid status slot.
    let text = unsafe {
        demangle(
            c_name.as_ptr().cast(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            &mut status,
        )
    };
    if text.is_null() {
        return false;
    }
    // SAFETY: on success, a NUL-terminated string, ours until freed below.
    let demangled = unsafe { core::ffi::CStr::from_ptr(text) };
    let written = match demangled.to_str() {
        Ok(name) if status == 0 => out.write_str(name).is_ok(),
        _ => false,
    };
    // SAFETY: the demangler allocated `text` with `malloc`; freed once.
    unsafe { libc::free(text.cast()) };
    written
}

// ---------------------------------------------------------------------------
// Resolving and fork.

/// The thread (kernel id) resolving an address now, or 0. While a thread
/// resolves, the `backtrace` crate's lock is held and its caches change; a
/// fork then would give the child that lock held by a thread it does not
/// have, and the child's first resolution (inside `malloc`, at its first
/// new stack) would wait for ever. So a fork waits for the resolution in
/// progress to end (the `pthread_atfork` handlers below, registered by
/// [`register_fork_handlers`] outside the allocator), and holds the turn
/// until it is done. A resolution outside the allocator waits for a fork in
/// progress; one the allocator asked for (see [`never_waiting_for_fork`])
/// never does: the forking thread may be running another prepare handler
/// that waits for a lock the allocating thread holds, so it gives up at
/// once and its new stack passes unrecorded, to be met again later. Held
/// for one address at a time, never across a call back into the caller's
/// code.
static RESOLVER: AtomicI32 = AtomicI32::new(0);
/// Whether the fork handlers are registered.
static FORK_HANDLERS: AtomicBool = AtomicBool::new(false);
/// Whether the fork in progress took [`RESOLVER`] (rather than finding its
/// own thread resolving).
static FORK_TOOK: AtomicBool = AtomicBool::new(false);
/// Forks in progress (from their prepare handler to their parent handler):
/// resolutions let them go first, so that threads that resolve one address
/// after another do not starve a fork.
static FORKS_IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while the thread resolves for the allocator: it must not wait
    /// for a fork in progress.
    static NO_FORK_WAIT: Cell<bool> = const { Cell::new(false) };
    /// Set when a resolution of the thread gave up for a fork in progress.
    static GAVE_UP: Cell<bool> = const { Cell::new(false) };
}

/// Registers the fork handlers, once per process. `pthread_atfork` may
/// allocate and takes the C library's fork-handler lock, which a fork holds
/// while it runs prepare handlers: so never from inside the allocator (a
/// prepare handler that allocates would take that lock twice). Called when
/// injection is configured through the API, when a sweep starts, and by
/// this crate's constructor when `MAYFAIL_INJECT` is set.
pub(crate) fn register_fork_handlers() {
    // Miri models no fork, and no `pthread_atfork`.
    if !FORK_HANDLERS.swap(true, Relaxed) && !cfg!(miri) {
        // SAFETY: the handlers are `extern "C"` functions that live as long
        // as the process (or this library), and touch only atomics.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork),
                Some(after_fork_in_child),
            )
        };
    }
}

/// This crate's constructor (in the executable, or in the preload library):
/// registers the fork handlers if `MAYFAIL_INJECT` is set, since the
/// injection it asks for is installed later by the first allocation,
/// inside the allocator, where registering is not safe. Referred to by the
/// start-up, so that the linker keeps it.
#[cfg(not(miri))]
#[used]
#[unsafe(link_section = ".init_array")]
pub(crate) static FORK_HANDLERS_AT_START: extern "C" fn() = fork_handlers_at_start;

#[cfg(not(miri))]
extern "C" fn fork_handlers_at_start() {
    if sys::getenv(c"MAYFAIL_INJECT").is_some() {
        register_fork_handlers();
    }
}

/// Runs `f`, whose resolutions (on this thread) never wait for a fork in
/// progress: they give up, and `f` sees no names for those addresses.
/// Returns whether none gave up. For the allocator's resolutions.
#[cfg(feature = "sites")]
pub(crate) fn never_waiting_for_fork(f: impl FnOnce()) -> bool {
    let _ = NO_FORK_WAIT.try_with(|flag| flag.set(true));
    let _ = GAVE_UP.try_with(|flag| flag.set(false));
    f();
    let _ = NO_FORK_WAIT.try_with(|flag| flag.set(false));
    !GAVE_UP.try_with(Cell::get).unwrap_or(false)
}

/// The calling thread's turn to resolve; dropping it ends the turn.
struct Resolving {
    taken: bool,
}

impl Resolving {
    /// The turn, or `None` if the thread must not wait for the fork in
    /// progress.
    fn enter() -> Option<Resolving> {
        let no_wait = NO_FORK_WAIT.try_with(Cell::get).unwrap_or(false);
        let taken = take_resolver(false, no_wait);
        if taken.is_none() {
            let _ = GAVE_UP.try_with(|flag| flag.set(true));
        }
        Some(Resolving { taken: taken? })
    }
}

impl Drop for Resolving {
    fn drop(&mut self) {
        if self.taken {
            RESOLVER.store(0, Release);
        }
    }
}

/// Waits until no other thread resolves (and, unless `forking`, no fork is
/// in progress) and takes the turn: `Some(false)` if the calling thread
/// already has it, `None` if a fork is in progress and `no_wait` forbids
/// waiting for it.
fn take_resolver(forking: bool, no_wait: bool) -> Option<bool> {
    let me = sys::gettid();
    let mut backoff = crate::backoff::Backoff::new();
    loop {
        let owner = RESOLVER.load(Relaxed);
        if owner == me {
            return Some(false);
        }
        let fork_in_progress = !forking && FORKS_IN_PROGRESS.load(Acquire) != 0;
        if fork_in_progress && no_wait {
            return None;
        }
        if owner == 0
            && !fork_in_progress
            && RESOLVER.compare_exchange(0, me, Acquire, Relaxed).is_ok()
        {
            return Some(true);
        }
        backoff.next_pause().wait();
    }
}

/// Before a fork: wait for the resolution in progress, and hold off others.
extern "C" fn before_fork() {
    FORKS_IN_PROGRESS.fetch_add(1, Release);
    FORK_TOOK.store(take_resolver(true, false) == Some(true), Relaxed);
}

/// After a fork, in the parent: resolutions may go on.
extern "C" fn after_fork() {
    if FORK_TOOK.load(Relaxed) {
        RESOLVER.store(0, Release);
    }
    FORKS_IN_PROGRESS.fetch_sub(1, Release);
}

/// After a fork, in the child: its only thread is the one that forked, and
/// no resolution was in progress.
extern "C" fn after_fork_in_child() {
    FORKS_IN_PROGRESS.store(0, Relaxed);
    RESOLVER.store(0, Release);
}

/// Symbols of std's path from a failed allocation to the abort, innermost
/// last: `rust_oom` is called by `__rust_alloc_error_handler`, called by
/// `handle_alloc_error`, called by the allocation's caller.
pub(crate) const ALLOC_ERROR_FRAMES: [&str; 4] = [
    "rust_oom",
    "__rg_oom",
    "__rust_alloc_error_handler",
    "handle_alloc_error",
];

/// Where the caller of a run of functions named with `needles` starts in
/// `frames` (innermost first): the index just past the outermost frame of
/// the first such run. For an abort's stack and [`ALLOC_ERROR_FRAMES`], the
/// frames from there are those of the allocation that std could not fail.
pub(crate) fn below_named(frames: &[usize], needles: &[&str]) -> Option<usize> {
    let named = |ip: usize| {
        // The C library, the loader and the unwinder (`abort`, `raise`, the
        // signal return) hold none of std's functions: naming their frames
        // would read their separate debug files (often compressed) for
        // nothing.
        if library_of(ip) != Library::Other {
            return false;
        }
        let mut found = false;
        resolve(ip, |frame| {
            found |= needles.iter().any(|needle| frame.name.contains(needle));
        });
        found
    };
    let start = frames.iter().position(|&ip| named(ip))?;
    let run = frames[start..].iter().take_while(|&&ip| named(ip)).count();
    Some(start + run)
}

/// Writes the raw frames of a stack to stderr, each as `module+offset`
/// (stable across runs, resolvable later with `addr2line`). Needs neither
/// memory nor much stack: safe as a crash report's first lines.
pub(crate) fn write_raw_frames(frames: &[usize]) {
    let mut line = StackBuf::<1024>::new();
    let _ = line.write_str("mayfail:   raw frames:");
    for &ip in frames.iter().take(16) {
        let (module, offset) = locate(ip);
        match module {
            Some(m) => {
                let _ = write!(line, " {}+{offset:#x}", crate::text::Clean(m.name()));
            }
            None => {
                let _ = write!(line, " {ip:#x}");
            }
        }
    }
    sys::write_stderr(line.finish_line());
}

/// Runs `job` on a fresh thread with a large stack and waits for it: symbol
/// resolution needs far more stack than a small thread (or a signal
/// handler on one) may have left. The thread enters the in-reclaim mark
/// first, so what resolution allocates is served, never injected. Returns
/// `false`, without running `job`, if no thread could be made: a report
/// then goes without names rather than overflowing the caller's stack.
pub(crate) fn on_big_stack(job: &mut dyn FnMut()) -> bool {
    extern "C" fn run(arg: *mut c_void) -> *mut c_void {
        // SAFETY: `arg` is the `&mut &mut dyn FnMut()` below, alive until
        // the join returns, and used by this thread only meanwhile.
        let job = unsafe { &mut *arg.cast::<&mut dyn FnMut()>() };
        let _reclaiming = crate::scope::ReclaimGuard::enter();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        core::ptr::null_mut()
    }
    let mut job = job;
    // SAFETY: all-zero pthread_t and attribute objects are valid storage for
    // the calls below to initialise.
    let (mut thread, mut attr): (libc::pthread_t, libc::pthread_attr_t) =
        unsafe { (core::mem::zeroed(), core::mem::zeroed()) };
    // SAFETY: `attr` is initialised before use and destroyed after; `job`
    // outlives the thread, which is joined before this returns.
    unsafe {
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 8 << 20);
        let arg = (&mut job as *mut &mut dyn FnMut()).cast::<c_void>();
        let rc = libc::pthread_create(&mut thread, &attr, run, arg);
        libc::pthread_attr_destroy(&mut attr);
        if rc != 0 {
            return false;
        }
        libc::pthread_join(thread, core::ptr::null_mut());
    }
    true
}

/// How a call site shows its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg(any(feature = "sweep", feature = "sites"))]
pub(crate) enum Paths {
    /// As the debug information has them: absolute (the runner's state
    /// file keeps them, and its JSON).
    #[cfg(feature = "sites")]
    Full,
    /// Short: relative to the current directory (the package's, under
    /// cargo), a registry crate's as `name-version/src/file.rs`, std's from
    /// `library/`.
    #[cfg(feature = "sweep")]
    Short,
}

/// `file` as a report shows it: see [`Paths::Short`].
#[cfg(feature = "sweep")]
pub(crate) fn short_path(file: &Path, dir: Option<&Path>) -> String {
    if let Some(relative) = dir.and_then(|dir| file.strip_prefix(dir).ok()) {
        return relative.display().to_string();
    }
    let text = file.display().to_string();
    // `~/.cargo/registry/src/<index>/<crate>-<version>/...`,
    // `~/.cargo/git/checkouts/<repo>-<hash>/<rev>/...`
    for marker in ["/registry/src/", "/git/checkouts/"] {
        if let Some(at) = text.find(marker) {
            let rest = &text[at + marker.len()..];
            let skip = if marker == "/registry/src/" {
                rest.find('/').map_or(0, |slash| slash + 1)
            } else {
                0
            };
            return rest[skip..].to_owned();
        }
    }
    // `/rustc/<commit>/library/...`
    if let Some(rest) = text.strip_prefix("/rustc/")
        && let Some(slash) = rest.find('/')
    {
        return rest[slash + 1..].to_owned();
    }
    text
}

/// The call site of a stack: its first `depth` functions in code the user
/// can change, as `function (file:line) <- caller (file:line)`. Every
/// function of the allocation machinery ([`is_machinery`]) is left out,
/// inlined or not, wherever it is on the stack, so the same line makes the
/// same site in debug and release builds; so are the C library's functions
/// the failed allocation was made in (`strdup`, `fopen`: the site is their
/// caller's). The walk ends at the sweep's
/// runner and at the test harness. The addresses must belong to this
/// process (or to its parent before a fork, which has the same mappings).
#[cfg(any(feature = "sweep", feature = "sites"))]
pub(crate) fn site_of(frames: &[usize], depth: usize, paths: Paths) -> String {
    let mut site = String::new();
    let mut written = 0;
    let mut ended = false;
    #[cfg(feature = "sweep")]
    let dir = std::env::current_dir().ok();
    for &ip in frames {
        if written >= depth || ended {
            break;
        }
        if written == 0 && library_of(ip) == Library::Libc {
            continue;
        }
        resolve(ip, |frame| {
            ended |= frame.is_sweep_runner()
                || frame.name.contains("__rust_begin_short_backtrace")
                || is_entry_point(frame.name);
            if ended || written >= depth || !frame.named || frame.is_machinery() {
                return;
            }
            if written > 0 {
                site.push_str(" <- ");
            }
            site.push_str(frame.name);
            if let (Some(file), Some(line)) = (frame.file, frame.line) {
                let shown = match paths {
                    #[cfg(feature = "sites")]
                    Paths::Full => file.display().to_string(),
                    #[cfg(feature = "sweep")]
                    Paths::Short => short_path(file, dir.as_deref()),
                };
                let _ = write!(site, " ({shown}:{line})");
            }
            written += 1;
        });
    }
    if written == 0 {
        site.push_str("<no symbols>");
    }
    site
}

/// Functions of std's panic machinery: an allocation made below one of
/// them formats or boxes a panic's payload for the function that panicked.
#[cfg(feature = "sites")]
const PANIC_FRAMES: [&str; 5] = [
    "core::panicking::",
    "std::panicking::",
    "std::panic::",
    "rust_begin_unwind",
    "begin_panic",
];

/// Functions that raise a panic: an allocation made anywhere below one of
/// them (a `Display` of the code's own called to format the message, a
/// panic hook) is made for the panic, not by the code's own path.
#[cfg(feature = "sites")]
const RAISING_FRAMES: [&str; 4] = [
    "core::panicking::panic",
    "std::panicking::begin_panic",
    "std::panicking::rust_panic_with_hook",
    "rust_begin_unwind",
];

/// Frames looked at for [`RAISING_FRAMES`] below the first user frame.
#[cfg(feature = "sites")]
const RAISING_DEPTH: usize = 48;

/// Whether the allocation of `frames` serves a panic (its message or its
/// payload): a frame of std's panic machinery lies between it and the
/// first function outside the allocation machinery, or a function that
/// raises a panic lies below (within [`RAISING_DEPTH`] frames, before the
/// test harness): the code's `Display` formatting the message it panics
/// with (`panic!("{error}")`). The function that panicked did not itself
/// allocate.
#[cfg(feature = "sites")]
pub(crate) fn serves_panic(frames: &[usize]) -> bool {
    let mut panic = false;
    let mut user = false;
    let mut ended = false;
    for &ip in frames.iter().take(RAISING_DEPTH) {
        if panic || ended {
            break;
        }
        resolve(ip, |frame| {
            if panic || ended || !frame.named {
                return;
            }
            if frame.name.contains("__rust_begin_short_backtrace") {
                ended = true;
            } else if user {
                panic = RAISING_FRAMES.iter().any(|p| frame.name.contains(p));
            } else if PANIC_FRAMES.iter().any(|p| frame.name.contains(p)) {
                panic = true;
            } else if !frame.is_machinery() {
                user = true;
            }
        });
    }
    panic
}

/// Prints a backtrace of `frames` to stderr, allocation machinery (and the
/// C library's functions that allocated for their caller) trimmed from the
/// top, at most [`PRINTED_FRAMES`] frames, ending at the test
/// harness. Resolving allocates: the caller holds the in-reclaim mark.
pub(crate) fn write_backtrace(frames: &[usize]) {
    sys::write_stderr(
        b"mayfail:   backtrace of the failing allocation (allocation frames of mayfail and std trimmed):\n",
    );
    let mut printed = 0;
    let mut trimming = true;
    for &ip in frames {
        if printed >= PRINTED_FRAMES {
            break;
        }
        // The C library's functions the allocation was made in (`strdup`)
        // are trimmed with the machinery: their caller is the site.
        if trimming && library_of(ip) == Library::Libc {
            continue;
        }
        // One return address may stand for several inlined functions,
        // innermost first: keep up to four, with whether each is machinery.
        let mut lines: [(StackBuf<400>, bool); 4] = [const { (StackBuf::new(), false) }; 4];
        let mut count = 0;
        let mut reached_harness = false;
        resolve(ip, |frame| {
            if count == lines.len() || reached_harness {
                return;
            }
            if frame.name.contains("__rust_begin_short_backtrace") || frame.is_sweep_runner() {
                reached_harness = true;
                return;
            }
            let (line, machinery) = &mut lines[count];
            *machinery = frame.is_machinery();
            let _ = write!(line, "  {printed:>3}: {}", frame.name);
            if let (Some(file), Some(lineno)) = (frame.file, frame.line) {
                let _ = write!(line, "\n           at {}:{lineno}", file.display());
            }
            count += 1;
        });
        if count == 0 {
            if trimming {
                continue;
            }
            let mut line = StackBuf::<64>::new();
            let _ = write!(line, "  {printed:>3}: {ip:#x}");
            sys::write_stderr(line.finish_line());
            printed += 1;
            continue;
        }
        let skip = if trimming {
            lines[..count]
                .iter()
                .take_while(|(_, machinery)| *machinery)
                .count()
        } else {
            0
        };
        if skip == count {
            continue;
        }
        trimming = false;
        for (line, _) in &mut lines[skip..count] {
            sys::write_stderr(line.finish_line());
        }
        printed += 1;
        if reached_harness {
            // Below this, only the runtime or the test harness: std cuts
            // its own backtraces here too.
            break;
        }
    }
}

// ---------------------------------------------------------------------------
// Runtime or program: the innermost frame outside the allocation machinery.

/// Whose code a stack is, judged by its innermost frame below the
/// allocation machinery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg(feature = "sites")]
pub(crate) enum Class {
    /// The program's own code, or a dependency's.
    User,
    /// The Rust runtime, the test harness, or the C runtime's start-up,
    /// exit and dynamic loader.
    Runtime,
}

/// Symbols of the Rust runtime, the test harness and libc's start-up (in a
/// program that links libc statically; a shared libc is judged by
/// [`LIBC_MODULES`]).
#[cfg(feature = "sites")]
const RUNTIME_PREFIXES: [&str; 9] = [
    "test::",
    "<test::",
    "getopts::",
    "std_detect::",
    "panic_unwind::",
    "panic_abort::",
    "unwind::",
    "rustc_demangle::",
    "__libc_",
];
/// Entry points of processes and threads. Not `main`: see [`is_rust_main`].
#[cfg(any(feature = "sweep", feature = "sites"))]
const RUNTIME_NAMES: [&str; 6] = [
    "_start",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__call_tls_dtors",
];
/// Source paths of the standard library as shipped by rustup (remapped),
/// its vendored dependencies, and a local toolchain's sources.
const RUNTIME_FILES: [&str; 3] = ["/rustc/", "/rust/deps/", "/lib/rustlib/src/rust/"];
/// Shared libraries of the C runtime that are never a caller's: the dynamic
/// loader (start-up, `dlopen`, thread-local storage) and the unwinder.
const RUNTIME_MODULES: [&str; 3] = ["ld-linux", "libgcc_s", "ld-musl"];
/// The C and C++ libraries' shared objects. Their functions allocate on
/// behalf of their caller (`strdup`, `asprintf`, `getline`, `fopen`, a
/// stream's buffer, `operator new`): a frame there is skipped like the
/// allocation machinery, and the caller decides. Start-up, exit and a
/// thread's start end in an entry point ([`RUNTIME_NAMES`]) or in the
/// loader (which runs the libraries' constructors), so they stay the
/// runtime's.
const LIBC_MODULES: [&str; 9] = [
    "libc.so",
    "libpthread",
    "libdl.so",
    "librt.so",
    "libm.so",
    "libresolv",
    "libstdc++",
    "libc++",
    "libc++abi",
];

/// What a shared object is to a stack below the allocation machinery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Library {
    /// The loader or the unwinder: the runtime.
    Runtime,
    /// The C or C++ library: allocates for its caller.
    Libc,
    /// Anything else: the program, a library it uses, or unknown.
    Other,
}

/// What the module holding `ip` is (see [`Library`]).
fn library_of(ip: usize) -> Library {
    let Some(module) = locate(ip).0 else {
        return Library::Other;
    };
    let name = module.name();
    let listed = |list: &[&str]| list.iter().any(|m| name.starts_with(m.as_bytes()));
    if listed(&RUNTIME_MODULES) {
        Library::Runtime
    } else if listed(&LIBC_MODULES) {
        Library::Libc
    } else {
        Library::Other
    }
}

/// Whether a function starts a process or a thread (libc's start-up, which
/// calls a C program's `main`, or a thread's start): a call site ends there.
#[cfg(any(feature = "sweep", feature = "sites"))]
fn is_entry_point(name: &str) -> bool {
    name.starts_with("__libc_start") || RUNTIME_NAMES.contains(&name)
}

/// Whether a frame is std's `lang_start`, which the `main` rustc generates
/// for a Rust program calls (by its path, or unqualified in std's file).
#[cfg(feature = "sites")]
fn is_lang_start(frame: &Frame<'_>) -> bool {
    frame.name.starts_with("std::rt::lang_start")
        || (frame.name.starts_with("lang_start") && frame.file.is_some_and(is_machinery_file))
}

/// Whether a frame named `main` is the C-ABI `main` rustc generates for a
/// Rust program (the runtime's: it calls `std::rt::lang_start`), told by
/// the frame it called, `after_lang_start`. A C program's `main`, a Rust
/// program's own `fn main` named without its crate path
/// (`debug = "line-tables-only"`) and a `#[no_mangle] main` are the user's.
#[cfg(feature = "sites")]
fn is_rust_main(frame: &Frame<'_>, after_lang_start: bool) -> bool {
    frame.name == "main" && after_lang_start
}

/// Decided by the innermost frame below the allocation machinery (the
/// unwinder, mayfail, the global allocator shims, std, alloc, core) and the
/// C library (which allocates for its caller): the program's own code (or
/// a dependency's) makes it a site; the Rust runtime, the test harness, the
/// loader and the entry points of processes and threads do not.
#[cfg(feature = "sites")]
pub(crate) fn classify(frames: &[usize]) -> Class {
    let mut below_machinery = false;
    let mut any_named = false;
    let mut after_lang_start = false;
    for &ip in frames {
        if below_machinery {
            match library_of(ip) {
                Library::Runtime => return Class::Runtime,
                Library::Libc => continue,
                Library::Other => {}
            }
        }
        let mut verdict = None;
        resolve(ip, |frame| {
            if verdict.is_some() || !frame.named {
                return;
            }
            any_named = true;
            let name = frame.name;
            let called_lang_start = after_lang_start;
            after_lang_start = is_lang_start(frame);
            if frame.is_machinery() {
                below_machinery = true;
                return;
            }
            if !below_machinery {
                return;
            }
            let runtime_file = frame
                .file
                .and_then(|f| f.to_str())
                .is_some_and(|f| RUNTIME_FILES.iter().any(|r| f.contains(r)));
            // A C++ namespace `test` is no test harness.
            let runtime_name = !frame.cpp
                && (RUNTIME_PREFIXES.iter().any(|p| name.starts_with(p))
                    || RUNTIME_NAMES.contains(&name)
                    || is_rust_main(frame, called_lang_start));
            let runtime = runtime_file || runtime_name;
            verdict = Some(if runtime { Class::Runtime } else { Class::User });
        });
        if let Some(verdict) = verdict {
            return verdict;
        }
    }
    // Only machinery, libc and unnamed frames (a thread's start, a stack
    // deeper than the walk): the runtime's. No symbols at all (a stripped
    // program): cannot tell, count it.
    if any_named {
        Class::Runtime
    } else {
        Class::User
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_machinery_is_recognised() {
        for name in [
            "alloc::raw_vec::RawVec<T,A>::grow_one",
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
            "mayfail::alloc::MayFail<A>::serve_engaged",
            "<mayfail::alloc::MayFail<A> as core::alloc::global::GlobalAlloc>::alloc",
            "__rust_alloc",
            "__rustc::__rust_alloc",
            "__rdl_alloc",
            "std::alloc::System::alloc",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "<<alloc::boxed::Box<str> as core::convert::From<&str>>::from as core::ops::FnOnce>::call_once",
            "<T as alloc::slice::<impl [T]>::to_vec_in::ConvertVec>::to_vec",
            "<gimli[9d272e8433f81454]::read::abbrev::Attributes>::push",
            "<str as alloc::string::SpecToString>::spec_to_string",
            "<u8 as <[_]>::to_vec_in::ConvertVec>::to_vec::<alloc::alloc::Global>",
            "<[u8]>::to_vec_in::<alloc::alloc::Global>",
            "<u32 as alloc::string::SpecToString>::spec_to_string",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<[T] as alloc::slice::<impl [T]>>::to_vec",
            "<&str as alloc::string::ToString>::to_string",
            "<allocator_api2::stable::alloc::global::Global>::alloc_impl",
            "allocator_api2::stable::alloc::global::Global::alloc_impl",
            "<allocator_api2::stable::alloc::global::Global as allocator_api2::stable::alloc::Allocator>::allocate",
            "<hashbrown::raw::RawTable<T,A> as core::ops::drop::Drop>::drop",
            "<fn() -> u8 as core::ops::function::FnOnce<()>>::call_once",
        ] {
            assert!(is_machinery(name), "{name}");
        }
        for name in [
            "my_app::cache::insert",
            "inject::vec_push_aborts",
            "<my_app::X as Y>::f",
            "<alloc::rc::Rc<T> as fallible_collections::rc::FallibleRc<T>>::try_new",
            "<my_app::Config as core::clone::Clone>::clone",
            "<alloc::vec::Vec<T> as my_app::Extend2>::extend2",
            "fallible_collections::vec::std_io::try_read_up_to::{{closure}}",
            "main",
        ] {
            assert!(!is_machinery(name), "{name}");
        }
    }

    #[test]
    fn names_without_a_crate_path_are_judged_by_their_file() {
        let registry = "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f";
        fn frame<'a>(name: &'a str, file: &'a str) -> Frame<'a> {
            Frame {
                name,
                named: true,
                file: Some(Path::new(file)),
                line: Some(1),
                cpp: false,
                cpp_library: false,
            }
        }
        // Machinery: mayfail's own sources, std's, a registry crate of the
        // list (its directory spelled with dashes, a version with a `-`).
        for (name, file) in [
            (
                "serve_engaged<std::alloc::System>",
                format!("{OWN_SOURCES}alloc.rs"),
            ),
            (
                "trace_unsynchronized<F>",
                format!("{registry}/backtrace-0.3.77/src/backtrace/mod.rs"),
            ),
            (
                "alloc_impl",
                format!("{registry}/allocator-api2-0.2.21/src/stable/alloc/global.rs"),
            ),
            (
                "reserve_rehash<T>",
                format!("{registry}/hashbrown-0.16.0-rc.1/src/raw/mod.rs"),
            ),
            (
                "grow_one<u8>",
                "/rustc/0123abcd/library/alloc/src/raw_vec/mod.rs".to_owned(),
            ),
            (
                "call_once<F, ()>",
                "/rustc/0123abcd/library/core/src/ops/function.rs".to_owned(),
            ),
            ("{closure#0}", format!("{PRELOAD_SOURCES}lib.rs")),
        ] {
            assert!(frame(name, &file).is_machinery(), "{name} in {file}");
        }
        // The user's code, a crate not in the list, and a qualified name
        // (judged by its path, wherever its file is).
        for (name, file) in [
            ("two_points", "/work/app/src/lib.rs".to_owned()),
            ("{closure#0}", "/work/app/tests/it.rs".to_owned()),
            (
                "try_reserve<T>",
                format!("{registry}/fallible_collections-0.5.2/src/vec.rs"),
            ),
            (
                "backtrace_2d",
                format!("{registry}/backtrace-2d-1.0.0/src/lib.rs"),
            ),
            ("my_app::cache::insert", format!("{OWN_SOURCES}alloc.rs")),
        ] {
            assert!(!frame(name, &file).is_machinery(), "{name} in {file}");
        }
        // The sweep's runner ends a site, by name or by file.
        assert!(frame("{closure#0}", &format!("{SWEEP_SOURCES}child.rs")).is_sweep_runner());
        assert!(!frame("{closure#0}", "/work/app/src/sweep/child.rs").is_sweep_runner());
        assert_eq!(
            crate::text::registry_crate(&format!("{registry}/foo-2d-1.0.0/src/lib.rs")),
            Some("foo-2d")
        );
    }

    #[test]
    fn the_cpp_librarys_allocation_machinery_is_told_by_its_mangled_name() {
        for name in [
            "_Znwm",
            "_Znam",
            "_ZnwmRKSt9nothrow_t",
            "_ZnwmSt11align_val_t",
            "_ZNSt15__new_allocatorIiE8allocateEmPKv",
            "_ZNSt16allocator_traitsISaIiEE8allocateERS0_m",
            "_ZNSt6vectorIiSaIiEE17_M_realloc_insertIJRKiEEEvN9__gnu_cxx17__normal_iteratorIPiS1_EEDpOT_",
            "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEE9_M_createERmm",
            "_ZNKSt6vectorIiSaIiEE12_M_check_lenEmPKc",
            "_ZN9__gnu_cxx13new_allocatorIiE8allocateEmPKv",
            "_ZNSaIcEC1Ev",
            "_ZSt4moveIRiEONSt16remove_referenceIT_E4typeEOS2_",
            "_ZZNSt6vectorIiSaIiEE9push_backERKiENKUlvE_clEv",
            "__cxa_allocate_exception",
        ] {
            assert!(is_cpp_library(name.as_bytes()), "{name}");
        }
        for name in [
            "_ZN3app5Cache6insertEi",
            "_ZL4growRSt6vectorIiSaIiEE",
            "_Z4growRSt6vectorIiSaIiEE",
            "_ZZ4mainENKUliE_clEi",
            "_ZN4test3runEv",
            "main",
            "_ZN5alloc7raw_vec11finish_grow17h0123456789abcdefE",
        ] {
            assert!(!is_cpp_library(name.as_bytes()), "{name}");
        }
    }

    #[cfg(feature = "sites")]
    #[test]
    fn only_the_main_that_calls_lang_start_is_the_runtimes() {
        fn frame<'a>(name: &'a str, file: &'a str) -> Frame<'a> {
            Frame {
                name,
                named: true,
                file: Some(Path::new(file)),
                line: Some(1),
                cpp: false,
                cpp_library: false,
            }
        }
        let rt = "/rustc/0123abcd/library/std/src/rt.rs";
        assert!(is_lang_start(&frame("std::rt::lang_start::<()>", rt)));
        assert!(is_lang_start(&frame("std::rt::lang_start_internal", rt)));
        assert!(is_lang_start(&frame("lang_start<()>", rt)));
        assert!(!is_lang_start(&frame(
            "lang_start_engine",
            "/work/app/src/main.rs"
        )));
        // rustc's C-ABI `main` calls lang_start; a C program's `main`, and a
        // Rust `fn main` named without its path, call something else.
        assert!(is_rust_main(&frame("main", ""), true));
        assert!(!is_rust_main(&frame("main", "/work/c/program.c"), false));
        assert!(!is_rust_main(
            &frame("main", "/work/app/src/main.rs"),
            false
        ));
        assert!(!is_rust_main(
            &frame("app::main", "/work/app/src/main.rs"),
            true
        ));
        for name in [
            "__libc_start_call_main",
            "__libc_start_main_impl",
            "_start",
            "start_thread",
        ] {
            assert!(is_entry_point(name), "{name}");
        }
        for name in ["main", "__GI___strdup", "copy"] {
            assert!(!is_entry_point(name), "{name}");
        }
    }

    #[cfg(feature = "sweep")]
    #[test]
    fn printed_paths_leave_out_homes_and_toolchain_hashes() {
        let dir = Path::new("/work/app");
        for (file, shown) in [
            ("/work/app/src/main.rs", "src/main.rs"),
            (
                "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/fallible_collections-0.5.2/src/vec.rs",
                "fallible_collections-0.5.2/src/vec.rs",
            ),
            (
                "/rustc/0123456789abcdef/library/alloc/src/string.rs",
                "library/alloc/src/string.rs",
            ),
            ("/elsewhere/lib.rs", "/elsewhere/lib.rs"),
        ] {
            assert_eq!(short_path(Path::new(file), Some(dir)), shown);
        }
    }
}
