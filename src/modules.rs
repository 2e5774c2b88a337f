//! The loaded modules (the executable and its shared libraries): where each
//! return address lives, relative to its file, so that a stack can be named
//! the same way in every run despite address-space randomisation.
//!
//! The executable segments are listed once with `dl_iterate_phdr` into a
//! fixed table; an address outside them (a library loaded later) falls back
//! to `dladdr`. Listing and looking up never allocate, lock (beyond the
//! loader's own) or panic.

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_int, c_void};
use core::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

const MAX_MODULES: usize = 128;
const MODULE_NAME: usize = 96;

#[derive(Clone, Copy)]
pub(crate) struct Module {
    start: usize,
    end: usize,
    bias: usize,
    pub(crate) hash: u64,
    main: bool,
    name: [u8; MODULE_NAME],
    name_len: usize,
}

impl Module {
    const EMPTY: Module = Module {
        start: 0,
        end: 0,
        bias: 0,
        hash: 0,
        main: false,
        name: [0; MODULE_NAME],
        name_len: 0,
    };

    /// The file name (no directory).
    pub(crate) fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    fn named(path: &[u8]) -> Module {
        let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        let mut m = Module::EMPTY;
        let len = base.len().min(MODULE_NAME);
        m.name[..len].copy_from_slice(&base[..len]);
        m.name_len = len;
        m.hash = crate::hash::fnv1a(base);
        m
    }
}

struct Modules {
    count: UnsafeCell<usize>,
    list: UnsafeCell<[Module; MAX_MODULES]>,
}

// SAFETY: written only by the thread that wins `MODULES_STATE` (to
// building, by its process), read only after it stored `BUILT`.
unsafe impl Sync for Modules {}

static MODULES: Modules = Modules {
    count: UnsafeCell::new(0),
    list: UnsafeCell::new([Module::EMPTY; MAX_MODULES]),
};
/// `NOT_BUILT`, `BUILT`, or the pid of the process whose thread is
/// building the table (shifted left by one bit, the low bit set). A child
/// forked while a thread of its parent was building inherits that state
/// with nobody to finish it: the parent's pid tells it so, and the child
/// builds the table again, never waiting for it.
static MODULES_STATE: AtomicU64 = AtomicU64::new(NOT_BUILT);
const NOT_BUILT: u64 = 0;
const BUILT: u64 = 2;

/// The state of a table being built by a thread of process `pid`.
fn building_by(pid: c_int) -> u64 {
    (u64::from(pid as u32) << 1) | 1
}

pub(crate) fn modules() -> &'static [Module] {
    if MODULES_STATE.load(Acquire) != BUILT {
        return &[];
    }
    // SAFETY: complete and never written again once the state is `BUILT`.
    unsafe { &(&*MODULES.list.get())[..*MODULES.count.get()] }
}

/// Lists the loaded modules' executable segments, once per process (and
/// again in a child forked while its parent was listing them). A thread
/// that finds another one of its process listing does not wait: until the
/// table is complete, addresses are located with `dladdr`.
pub(crate) fn build_modules() {
    let mine = building_by(crate::sys::getpid());
    let state = MODULES_STATE.load(Relaxed);
    let ours_to_build = match state {
        BUILT => false,
        NOT_BUILT => true,
        // Left by a parent that was building when this process forked.
        building => building != mine,
    };
    if !ours_to_build
        || MODULES_STATE
            .compare_exchange(state, mine, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    // SAFETY: only the thread that won the state above writes the table,
    // and no one reads it before the state becomes `BUILT`.
    unsafe {
        *MODULES.count.get() = 0;
        libc::dl_iterate_phdr(Some(add_module), core::ptr::null_mut());
    }
    MODULES_STATE.store(BUILT, Release);
}

unsafe extern "C" fn add_module(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut c_void,
) -> c_int {
    // SAFETY: only the thread building the table gets here (see `build_modules`).
    let (count, list) = unsafe { (&mut *MODULES.count.get(), &mut *MODULES.list.get()) };
    if *count == MAX_MODULES {
        return 1;
    }
    // SAFETY: the loader passes a valid info for the duration of the call.
    let info = unsafe { &*info };
    let main = *count == 0;
    let mut exe = [0u8; 512];
    let path: &[u8] = if info.dlpi_name.is_null() {
        b""
    } else {
        // SAFETY: a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    let path = if path.is_empty() && main {
        // SAFETY: writes at most `exe.len()` bytes into `exe`.
        let n = unsafe {
            libc::readlink(
                c"/proc/self/exe".as_ptr(),
                exe.as_mut_ptr().cast(),
                exe.len(),
            )
        };
        &exe[..n.max(0) as usize]
    } else {
        path
    };
    let mut module = Module::named(path);
    module.main = main;
    module.bias = info.dlpi_addr as usize;
    let (mut start, mut end) = (usize::MAX, 0);
    for i in 0..info.dlpi_phnum as usize {
        // SAFETY: the loader's array holds `dlpi_phnum` headers.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
            let from = module.bias.wrapping_add(ph.p_vaddr as usize);
            start = start.min(from);
            end = end.max(from.wrapping_add(ph.p_memsz as usize));
        }
    }
    if start < end {
        module.start = start;
        module.end = end;
        list[*count] = module;
        *count += 1;
    }
    0
}

/// The module holding `ip` and the offset of `ip` in it.
pub(crate) fn locate(ip: usize) -> (Option<Module>, usize) {
    for m in modules() {
        if (m.start..m.end).contains(&ip) {
            return (Some(*m), ip.wrapping_sub(m.bias));
        }
    }
    // SAFETY: an all-zero Dl_info is valid; dladdr fills it or fails.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: any address may be asked about; `info` is writable.
    if unsafe { libc::dladdr(ip as *const c_void, &mut info) } != 0 && !info.dli_fname.is_null() {
        // SAFETY: a NUL-terminated string owned by the loader.
        let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
        let m = Module::named(path);
        return (Some(m), ip.wrapping_sub(info.dli_fbase as usize));
    }
    (None, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child forked while a thread of its parent was listing the modules
    /// lists them itself, rather than going without for ever.
    #[test]
    #[cfg_attr(miri, ignore = "Miri models no fork")]
    fn a_child_forked_while_the_modules_were_being_listed_lists_them_again() {
        if crate::sys::under_valgrind() {
            eprintln!("skipped under valgrind: its forked child reports the parent's blocks");
            return;
        }
        // SAFETY: the child only touches atomics, lists the modules (the
        // loader's lock, which fork leaves usable) and ends with `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // As the parent's state was when it forked: its pid, building.
            MODULES_STATE.store(building_by(crate::sys::getpid() - 1), Relaxed);
            build_modules();
            let listed = modules().iter().any(|m| m.main);
            // SAFETY: ends the child.
            unsafe { libc::_exit(i32::from(!listed)) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: `pid` is our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }

    #[test]
    fn module_names_drop_the_directory() {
        let m = Module::named(b"/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(m.name(), b"libc.so.6");
        assert_eq!(m.hash, Module::named(b"/elsewhere/libc.so.6").hash);
    }
}
