//! When the engine runs, and the limits this library detects.
//!
//! The engine serves a call only when all of these hold:
//!
//! - the library's constructor has run. Before it, the dynamic loader and
//!   the start-up of the libraries loaded before this one allocate; those
//!   calls go straight to the wrapped implementation ([`inner`]), so the
//!   engine never starts before the environment is in place;
//! - the process has no mayfail of its own (see below);
//! - the calling thread is not already inside the engine. The engine's own
//!   work can reach `malloc` again: the unwinder and the dynamic loader
//!   while a stack is walked or resolved, the symbol tables read for a
//!   report, thread-local storage set up for a new thread, a logger. Those
//!   calls are served by the wrapped implementation directly, as the
//!   engine would serve them
//!   under its in-reclaim mark (never injected), so nothing recurses.
//!
//! A program that has mayfail linked in (it declares `MayFail` as its global
//! allocator) carries mayfail's ELF note (owner `mayfail`, type 1). When the
//! constructor finds that note in any object loaded with the program, that
//! program's own `MayFail` is the one that injects, counts and reports: this
//! library passes every call to the implementation it wraps and says so in
//! one line when
//! `MAYFAIL_INJECT` is set. (Both engines at work would fail, count and
//! report some allocations twice, and the program's scopes and `fail_nth`
//! would not steer the outer one.)
//!
//! Also said in one line when `MAYFAIL_INJECT` is set: a program whose
//! `malloc` is not this library's (it defines its own, as a program linked
//! statically with mimalloc's override does, or whose `LD_PRELOAD` names
//! another malloc before this library), which nothing here reaches; and an
//! implementation after this library (one the program is linked with) that
//! lacks one of the functions the engine needs from it (see [`inner`]): its
//! calls are then passed to it untouched.
//! A static program, or a setuid one that runs as another user, never loads
//! this library at all: the runner (`cargo mayfail`) checks for those
//! before it runs them, and a walk that no allocation reached says so.
//!
//! Never allocates, locks or panics.

use core::cell::Cell;
use core::ffi::{CStr, c_char, c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::inner;

/// Set by the constructor when the engine may serve calls.
static ENGINE_ON: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while the thread runs inside the engine. `const`, without a
    /// destructor: reading it never allocates and works during thread
    /// teardown.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// The calling thread's pass into the engine; leaving the engine (dropping
/// it) clears the thread's mark.
#[derive(Debug)]
pub struct Inside(());

impl Drop for Inside {
    #[inline]
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|inside| inside.set(false));
    }
}

/// A pass into the engine, or `None` when the call must go straight to
/// glibc (see the module's docs).
#[inline]
pub fn enter() -> Option<Inside> {
    if !ENGINE_ON.load(Relaxed) {
        return None;
    }
    INSIDE
        .try_with(|inside| {
            if inside.get() {
                None
            } else {
                inside.set(true);
                Some(Inside(()))
            }
        })
        .ok()
        .flatten()
}

/// The constructor: runs once, after glibc's own, before the program's.
#[used]
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = start;

extern "C" fn start(_argc: c_int, _argv: *const *const c_char, _env: *const *const c_char) {
    // SAFETY: getenv with a NUL-terminated name; the constructor runs before
    // the program can change its environment from another thread.
    let injecting = !unsafe { libc::getenv(c"MAYFAIL_INJECT".as_ptr()) }.is_null();
    if program_has_mayfail() {
        if injecting {
            say(
                b"mayfail-preload: this program has mayfail linked in: its own MayFail injects; \
                  C allocations are passed to the malloc it is linked with untouched\n",
            );
        }
        return;
    }
    if let Err((object, missing)) = inner::whole() {
        if injecting {
            let mut line = Line::new();
            line.push(b"mayfail-preload: the malloc this program is linked with (");
            line.push(object.to_bytes());
            line.push(b") has no ");
            line.push(missing.to_bytes());
            line.push(
                b" of its own: its calls are passed to it untouched and no failure is injected\n",
            );
            say(line.bytes());
        }
        return;
    }
    if injecting && let Some(other) = malloc_not_ours() {
        let mut line = Line::new();
        line.push(b"mayfail-preload: this program's malloc is ");
        if other.is_empty() {
            line.push(b"its own");
        } else {
            line.push(other.to_bytes());
            line.push(b"'s");
        }
        line.push(
            b", not the preload library's: nothing here is reached and no failure is injected\n",
        );
        say(line.bytes());
    }
    ENGINE_ON.store(true, Relaxed);
}

/// A message assembled on the stack (the engine is off: nothing may
/// allocate through it yet).
struct Line {
    bytes: [u8; 512],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            bytes: [0; 512],
            len: 0,
        }
    }

    /// Appends what fits.
    fn push(&mut self, part: &[u8]) {
        let take = part.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&part[..take]);
        self.len += take;
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Writes one line to stderr.
fn say(line: &[u8]) {
    // SAFETY: a write of a live buffer to fd 2; a short or failed write
    // loses part of a message, nothing else.
    let _ = unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// The object whose `malloc` every call is bound to, if it is not this
/// library. (Not `dlsym`: this library's own reference to its exported
/// `malloc` is bound through the global scope too, so comparing with it
/// would always agree.)
fn malloc_not_ours() -> Option<&'static CStr> {
    let first = crate::elf::first_definition(c"malloc", start as *const c_void)?;
    // SAFETY: a NUL-terminated name mapped as long as its object is loaded
    // (the object that defines the program's malloc stays).
    (!first.in_this).then(|| unsafe { CStr::from_ptr(first.object_name) })
}

/// mayfail's ELF note: owner, type and the format version it describes.
const NOTE_OWNER: &[u8] = b"mayfail\0";
const NOTE_TYPE: u32 = 1;

/// Whether an object loaded in this process, other than this library,
/// carries mayfail's note.
fn program_has_mayfail() -> bool {
    let mut found = false;
    // SAFETY: the callback matches dl_iterate_phdr's type and only reads the
    // program headers glibc hands it; `found` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&raw mut found).cast());
    }
    found
}

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info` for the duration of the
    // call, and `data` is the `found` flag of `program_has_mayfail`.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<bool>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
    let headers = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    let base = info.dlpi_addr as usize;
    let loaded = |start: usize, len: usize| {
        headers.iter().any(|h| {
            let from = base.wrapping_add(h.p_vaddr as usize);
            h.p_type == libc::PT_LOAD
                && start >= from
                && start.saturating_add(len) <= from.saturating_add(h.p_memsz as usize)
        })
    };
    // This library has the note too (it links mayfail): skip it.
    if loaded(start as *const () as usize, 1) {
        return 0;
    }
    for header in headers.iter().filter(|h| h.p_type == libc::PT_NOTE) {
        let start = base.wrapping_add(header.p_vaddr as usize);
        let len = header.p_memsz as usize;
        if !loaded(start, len) {
            continue;
        }
        // SAFETY: the segment lies inside a loaded PT_LOAD segment of this
        // object, mapped readable for as long as the object is loaded.
        let notes = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
        let align = if header.p_align == 8 { 8 } else { 4 };
        if has_mayfail_note(notes, align) {
            *found = true;
            return 1;
        }
    }
    0
}

/// Whether a PT_NOTE segment's notes, each field padded to `align` bytes,
/// include mayfail's.
fn has_mayfail_note(mut notes: &[u8], align: usize) -> bool {
    let word = |bytes: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let padded = |n: u32| (n as usize).div_ceil(align) * align;
    while let (Some(name_size), Some(desc_size), Some(kind)) =
        (word(notes, 0), word(notes, 4), word(notes, 8))
    {
        let name_end = (12 + padded(name_size)).div_ceil(align) * align;
        let Some(name) = notes.get(12..12 + name_size as usize) else {
            return false;
        };
        if name == NOTE_OWNER && kind == NOTE_TYPE {
            return true;
        }
        let Some(rest) = notes.get(name_end + padded(desc_size)..) else {
            return false;
        };
        notes = rest;
    }
    false
}
