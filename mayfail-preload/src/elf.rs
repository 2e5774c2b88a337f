//! Finding the next definition of a symbol after this library, in the
//! order the dynamic loader binds calls, by reading the loaded objects'
//! dynamic symbol tables directly.
//!
//! `dlsym(RTLD_NEXT, ...)` would say the same, but it may allocate (which
//! would recurse into this library's `malloc` before it knows where to send
//! the call) and reports errors through a buffer it allocates. This walks
//! the objects with `dl_iterate_phdr` in load order (the program, the
//! preloaded libraries, then their dependencies: the order of the global
//! scope), skips every object up to and including this library, and looks
//! the name up in each later one's GNU hash table (or its SysV one):
//! a defined function, of the default version.
//!
//! A leaf: never allocates or panics; the only lock is the one
//! `dl_iterate_phdr` takes (the loader's, recursive) for the walk.

use core::ffi::{CStr, c_char, c_int, c_void};

#[cfg(target_pointer_width = "64")]
type Sym = libc::Elf64_Sym;
#[cfg(target_pointer_width = "32")]
type Sym = libc::Elf32_Sym;

/// A dynamic section entry (`ElfN_Dyn`): a tag and a word.
#[repr(C)]
struct Dyn {
    tag: isize,
    value: usize,
}

const DT_NULL: isize = 0;
const DT_HASH: isize = 4;
const DT_STRTAB: isize = 5;
const DT_SYMTAB: isize = 6;
const DT_SONAME: isize = 14;
const DT_GNU_HASH: isize = 0x6fff_fef5;
const DT_VERSYM: isize = 0x6fff_fff0;
const STT_FUNC: u8 = 2;
const SHN_UNDEF: u16 = 0;
/// A `versym` entry's bit for a hidden (non-default) version.
const VERSYM_HIDDEN: u16 = 0x8000;

/// A symbol's definition in a loaded object.
#[derive(Clone, Copy, Debug)]
pub struct Definition {
    /// Its address.
    pub address: *mut c_void,
    /// The object's load address (`dlpi_addr`): equal for two definitions
    /// from the same object.
    pub object: usize,
    /// The object's `DT_SONAME` (or its file name), NUL-terminated and
    /// mapped for as long as the object is loaded; empty if it has neither.
    pub object_name: *const c_char,
    /// Whether the object holds the address the search was given.
    pub in_this: bool,
}

/// The first definition of the function `name` in an object loaded after
/// the one that holds `this` (an address inside this library), or `None`.
pub fn next_definition(name: &CStr, this: *const c_void) -> Option<Definition> {
    search(name, this, false)
}

/// The first definition of the function `name` in any object, in the order
/// calls are bound: the one every call of `name` goes to. Its `in_this`
/// says whether it is in the object that holds `this`.
pub fn first_definition(name: &CStr, this: *const c_void) -> Option<Definition> {
    search(name, this, true)
}

fn search(name: &CStr, this: *const c_void, from_first: bool) -> Option<Definition> {
    let mut search = Search {
        name: name.to_bytes(),
        this: this as usize,
        passed_this: from_first,
        found: None,
    };
    // SAFETY: `visit` matches dl_iterate_phdr's callback type and reads
    // only what glibc hands it; `search` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut search).cast()) };
    search.found
}

struct Search<'a> {
    name: &'a [u8],
    this: usize,
    passed_this: bool,
    found: Option<Definition>,
}

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info` for the duration of the
    // call; `data` is the `Search` of `next_definition`.
    let (info, search) = unsafe { (&*info, &mut *data.cast::<Search<'_>>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
    let headers = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    let base = info.dlpi_addr as usize;
    let in_this = headers.iter().any(|h| {
        let from = base.wrapping_add(h.p_vaddr as usize);
        h.p_type == libc::PT_LOAD
            && search.this >= from
            && search.this < from.wrapping_add(h.p_memsz as usize)
    });
    if !search.passed_this {
        search.passed_this = in_this;
        return 0;
    }
    let Some(dynamic) = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC) else {
        return 0;
    };
    // SAFETY: the object's dynamic section, mapped while it is loaded and
    // ended by DT_NULL, as the loader itself reads it.
    let tables = unsafe { Tables::read(base, base.wrapping_add(dynamic.p_vaddr as usize)) };
    let Some(tables) = tables else {
        return 0;
    };
    // SAFETY: the tables were read from this object's dynamic section.
    let Some(address) = (unsafe { tables.lookup(search.name) }) else {
        return 0;
    };
    let object_name = match tables.soname {
        Some(soname) => soname,
        None if info.dlpi_name.is_null() => c"".as_ptr(),
        None => info.dlpi_name,
    };
    search.found = Some(Definition {
        address,
        object: base,
        object_name,
        in_this,
    });
    1
}

/// What a lookup needs of one object's dynamic section.
struct Tables {
    base: usize,
    symbols: *const Sym,
    strings: *const u8,
    gnu_hash: Option<*const u32>,
    hash: Option<*const u32>,
    versions: Option<*const u16>,
    soname: Option<*const c_char>,
}

impl Tables {
    /// Reads the dynamic section at `dynamic` of the object loaded at
    /// `base`.
    ///
    /// # Safety
    ///
    /// `dynamic` is a loaded object's dynamic section, ended by `DT_NULL`.
    unsafe fn read(base: usize, dynamic: usize) -> Option<Tables> {
        // glibc relocates these entries in place when it loads an object,
        // except where the section is read-only (some targets, the vDSO):
        // an address below the base is still relative.
        let address = |value: usize| {
            if value < base {
                base.wrapping_add(value)
            } else {
                value
            }
        };
        let (mut symbols, mut strings, mut soname) = (0, 0, None);
        let (mut gnu_hash, mut hash, mut versions) = (None, None, None);
        let mut entry = dynamic as *const Dyn;
        loop {
            // SAFETY: the caller's contract: entries up to DT_NULL.
            let Dyn { tag, value } = unsafe { entry.read() };
            match tag {
                DT_NULL => break,
                DT_SYMTAB => symbols = address(value),
                DT_STRTAB => strings = address(value),
                DT_GNU_HASH => gnu_hash = Some(address(value) as *const u32),
                DT_HASH => hash = Some(address(value) as *const u32),
                DT_VERSYM => versions = Some(address(value) as *const u16),
                DT_SONAME => soname = Some(value),
                _ => {}
            }
            // SAFETY: not past DT_NULL (see above).
            entry = unsafe { entry.add(1) };
        }
        if symbols == 0 || strings == 0 {
            return None;
        }
        Some(Tables {
            base,
            symbols: symbols as *const Sym,
            strings: strings as *const u8,
            gnu_hash,
            hash,
            versions,
            soname: soname.map(|offset| strings.wrapping_add(offset) as *const c_char),
        })
    }

    /// The address of the defined function `name`, of its default version.
    ///
    /// # Safety
    ///
    /// The tables are a loaded object's.
    unsafe fn lookup(&self, name: &[u8]) -> Option<*mut c_void> {
        if let Some(table) = self.gnu_hash {
            // SAFETY: the caller's contract.
            return unsafe { self.lookup_gnu(table, name) };
        }
        // SAFETY: the caller's contract.
        self.hash
            .and_then(|table| unsafe { self.lookup_sysv(table, name) })
    }

    /// The GNU hash table: buckets of symbol indices whose chains of
    /// hashes end at an odd value.
    ///
    /// # Safety
    ///
    /// `table` is this object's `DT_GNU_HASH`.
    unsafe fn lookup_gnu(&self, table: *const u32, name: &[u8]) -> Option<*mut c_void> {
        let hash = name
            .iter()
            .fold(5381u32, |h, &b| h.wrapping_mul(33).wrapping_add(b.into()));
        // SAFETY: the header's four words, then the bloom filter's words
        // (pointer-sized), the buckets and the chains, as the format lays
        // them out.
        unsafe {
            let buckets_len = table.read();
            let first = table.add(1).read();
            let bloom_words = table.add(2).read() as usize;
            if buckets_len == 0 {
                return None;
            }
            let buckets = table.add(4).cast::<usize>().add(bloom_words).cast::<u32>();
            let chains = buckets.add(buckets_len as usize);
            let mut index = buckets.add((hash % buckets_len) as usize).read();
            if index < first {
                return None;
            }
            loop {
                let chained = chains.add((index - first) as usize).read();
                if chained | 1 == hash | 1
                    && let Some(address) = self.matches(index as usize, name)
                {
                    return Some(address);
                }
                if chained & 1 != 0 {
                    return None;
                }
                index += 1;
            }
        }
    }

    /// The SysV hash table: buckets and chains of symbol indices.
    ///
    /// # Safety
    ///
    /// `table` is this object's `DT_HASH`.
    unsafe fn lookup_sysv(&self, table: *const u32, name: &[u8]) -> Option<*mut c_void> {
        let hash = name.iter().fold(0u32, |h, &b| {
            let h = (h << 4).wrapping_add(b.into());
            (h ^ ((h & 0xf000_0000) >> 24)) & 0x0fff_ffff
        });
        // SAFETY: the header's two words, the buckets, then the chains, as
        // the format lays them out; index 0 ends a chain.
        unsafe {
            let buckets_len = table.read();
            let chains_len = table.add(1).read();
            if buckets_len == 0 {
                return None;
            }
            let buckets = table.add(2);
            let chains = buckets.add(buckets_len as usize);
            let mut index = buckets.add((hash % buckets_len) as usize).read();
            let mut steps = 0;
            while index != 0 && index < chains_len && steps < chains_len {
                if let Some(address) = self.matches(index as usize, name) {
                    return Some(address);
                }
                index = chains.add(index as usize).read();
                steps += 1;
            }
        }
        None
    }

    /// Symbol `index`'s address if it is a defined function named `name`,
    /// of its default version.
    ///
    /// # Safety
    ///
    /// `index` is a symbol of this object's table.
    unsafe fn matches(&self, index: usize, name: &[u8]) -> Option<*mut c_void> {
        // SAFETY: the caller's contract.
        let symbol = unsafe { &*self.symbols.add(index) };
        if symbol.st_shndx == SHN_UNDEF || symbol.st_info & 0xf != STT_FUNC {
            return None;
        }
        if let Some(versions) = self.versions {
            // SAFETY: one entry per symbol.
            if unsafe { versions.add(index).read() } & VERSYM_HIDDEN != 0 {
                return None;
            }
        }
        // SAFETY: a symbol's name is a NUL-terminated string of the table.
        let found = unsafe { CStr::from_ptr(self.strings.add(symbol.st_name as usize).cast()) };
        (found.to_bytes() == name)
            .then(|| self.base.wrapping_add(symbol.st_value as usize) as *mut c_void)
    }
}
