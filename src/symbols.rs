//! Stacks and their names: walking the current stack without allocating,
//! the table of loaded modules (so an address can be named relative to its
//! file), resolving addresses to functions and lines, and classifying a
//! frame as allocation machinery (mayfail, std, alloc, core), the runtime
//! (test harness, libc start-up) or the user's code.
//!
//! Used by the crash report, the sweep and the site walk. Walking and
//! locating never allocate, lock or panic; resolving and classifying
//! allocate (the `backtrace` crate) and take that crate's lock, so callers
//! run them under the in-reclaim mark, never from a signal handler before
//! the report's first lines are out.

use core::ffi::c_void;
use core::fmt::Write;
use std::path::Path;

pub(crate) use crate::modules::{build_modules, locate, modules};
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

/// Frames of these crates and symbols are allocation machinery, not the
/// caller: they are trimmed from the top of the backtrace. Matched after any
/// leading `<` of a qualified path.
const TRIMMED: [&str; 10] = [
    "backtrace::",
    "mayfail::",
    "mayfail_preload::",
    "__rust",
    "__rdl",
    "__rg_",
    "alloc::",
    "core::",
    "std::",
    "hashbrown::",
];

/// Whether a demangled symbol belongs to the allocation machinery. A
/// qualified path `<Type as Trait>::f` does when its type does, or when its
/// type is a bare generic parameter (`<T as alloc::...>`) and its trait does.
pub(crate) fn is_machinery(name: &str) -> bool {
    // A crate name with a disambiguator (`gimli[9d27...]::`) is one of std's
    // private dependencies: machinery too.
    let machinery_path = |path: &str| {
        TRIMMED.iter().any(|prefix| path.starts_with(prefix))
            || path
                .split("::")
                .next()
                .is_some_and(|krate| krate.contains('['))
    };
    let inner = name.trim_start_matches('<');
    if machinery_path(inner) {
        return true;
    }
    match inner.split_once(" as ") {
        Some((ty, rest)) => {
            let generic = !ty.is_empty()
                && ty.len() <= 2
                && ty
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            generic && machinery_path(rest.trim_start_matches('<'))
        }
        None => false,
    }
}

/// One function a return address stands for: several when functions were
/// inlined there, innermost first.
pub(crate) struct Frame<'a> {
    /// The demangled name, without the hash (`<unknown>` if there is none).
    pub(crate) name: &'a str,
    /// Whether the debug information named it.
    pub(crate) named: bool,
    /// Its source file, if known.
    pub(crate) file: Option<&'a Path>,
    /// Its line, if known.
    pub(crate) line: Option<u32>,
}

/// Calls `f` with each function `ip` stands for, innermost first. The one
/// place addresses are turned into names: the `backtrace` crate allocates
/// and takes its lock while it resolves, so callers hold the in-reclaim mark
/// and never run it from a signal handler before the report's first lines.
pub(crate) fn resolve(ip: usize, mut f: impl FnMut(&Frame<'_>)) {
    backtrace::resolve(ip as *mut c_void, |symbol| {
        let mut text = StackBuf::<512>::new();
        let named = match symbol.name() {
            Some(name) => write!(text, "{name:#}").is_ok(),
            None => text.write_str("<unknown>").is_err(),
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
        });
    });
}

/// Whether any function of the stack `frames` has a name containing one of
/// `needles`.
pub(crate) fn any_named(frames: &[usize], needles: &[&str]) -> bool {
    let mut found = false;
    for &ip in frames {
        resolve(ip, |frame| {
            found |= needles.iter().any(|needle| frame.name.contains(needle));
        });
        if found {
            return true;
        }
    }
    false
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

/// The call site of a stack: its first `depth` frames outside the
/// allocation machinery, as `function (file:line) <- caller (file:line)`.
/// The addresses must belong to this process (or to its parent before a
/// fork, which has the same mappings).
pub(crate) fn site_of(frames: &[usize], depth: usize) -> String {
    let mut site = String::new();
    let mut written = 0;
    let mut trimming = true;
    let dir = std::env::current_dir().ok();
    for &ip in frames {
        if written >= depth {
            break;
        }
        resolve(ip, |frame| {
            if written >= depth || (trimming && is_machinery(frame.name)) {
                return;
            }
            trimming = false;
            if written > 0 {
                site.push_str(" <- ");
            }
            site.push_str(frame.name);
            if let (Some(file), Some(line)) = (frame.file, frame.line) {
                let shown = dir
                    .as_deref()
                    .and_then(|dir| file.strip_prefix(dir).ok())
                    .unwrap_or(file);
                let _ = write!(site, " ({}:{line})", shown.display());
            }
            written += 1;
        });
    }
    if written == 0 {
        site.push_str("<no symbols>");
    }
    site
}

/// Prints a backtrace of `frames` to stderr, allocation machinery trimmed
/// from the top, at most [`PRINTED_FRAMES`] frames, ending at the test
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
        // One return address may stand for several inlined functions,
        // innermost first: keep up to four, with whether each is machinery.
        let mut lines: [(StackBuf<400>, bool); 4] = [const { (StackBuf::new(), false) }; 4];
        let mut count = 0;
        let mut reached_harness = false;
        resolve(ip, |frame| {
            if count == lines.len() || reached_harness {
                return;
            }
            if frame.name.contains("__rust_begin_short_backtrace") {
                reached_harness = true;
                return;
            }
            let (line, machinery) = &mut lines[count];
            *machinery = is_machinery(frame.name);
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
pub(crate) enum Class {
    /// The program's own code, or a dependency's.
    User,
    /// The Rust runtime, the test harness or the C library.
    Runtime,
}

/// Symbols of the Rust runtime, the test harness and libc's start-up.
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
const RUNTIME_NAMES: [&str; 7] = [
    "main",
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
/// Shared libraries of the C runtime.
const RUNTIME_MODULES: [&str; 5] = ["libc.so", "ld-linux", "libgcc_s", "libpthread", "ld-musl"];

/// Decided by the innermost frame below the allocation machinery (the
/// unwinder, mayfail, the global allocator shims, std, alloc, core): the
/// program's own code (or a dependency's) makes it a site.
pub(crate) fn classify(frames: &[usize]) -> Class {
    let mut below_machinery = false;
    let mut any_named = false;
    for &ip in frames {
        let (module, _) = locate(ip);
        if below_machinery
            && let Some(m) = module
            && RUNTIME_MODULES
                .iter()
                .any(|r| m.name().starts_with(r.as_bytes()))
        {
            return Class::Runtime;
        }
        let mut verdict = None;
        resolve(ip, |frame| {
            if verdict.is_some() || !frame.named {
                return;
            }
            any_named = true;
            let name = frame.name;
            if is_machinery(name) {
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
            let runtime = runtime_file
                || RUNTIME_PREFIXES.iter().any(|p| name.starts_with(p))
                || RUNTIME_NAMES.contains(&name);
            verdict = Some(if runtime { Class::Runtime } else { Class::User });
        });
        if let Some(verdict) = verdict {
            return verdict;
        }
    }
    // No symbols at all (a stripped program): cannot tell, count it.
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
            "__rdl_alloc",
            "std::alloc::System::alloc",
            "hashbrown::raw::RawTable<T,A>::reserve_rehash",
            "<<alloc::boxed::Box<str> as core::convert::From<&str>>::from as core::ops::FnOnce>::call_once",
            "<T as alloc::slice::<impl [T]>::to_vec_in::ConvertVec>::to_vec",
            "<gimli[9d272e8433f81454]::read::abbrev::Attributes>::push",
        ] {
            assert!(is_machinery(name), "{name}");
        }
        for name in [
            "my_app::cache::insert",
            "inject::vec_push_aborts",
            "<my_app::X as Y>::f",
        ] {
            assert!(!is_machinery(name), "{name}");
        }
    }
}
