//! What the runner reads from a program's ELF file before it runs it: is
//! it loaded by the dynamic loader, does it carry mayfail's note (it
//! declares `MayFail`), which symbol names does it hold.
//!
//! The file is untrusted input: every offset and size read from it is
//! checked against the file's length before anything is read or allocated
//! (so no allocation is larger than the file), and every table's entry size
//! against the size of the fields read from it. A file that does not hold
//! together is [`Unread::Malformed`], never a panic. Only the format of
//! this machine's programs is read (64-bit, little-endian): a 32-bit or a
//! big-endian file is refused as such rather than misread.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// `e_type` of an executable and of a position-independent one.
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const SHT_SYMTAB: u32 = 2;
const SHT_NOTE: u32 = 7;
/// The sizes of `Elf64_Ehdr`, `Elf64_Phdr` and `Elf64_Shdr`.
const HEADER_SIZE: u64 = 64;
const PROGRAM_HEADER_SIZE: u64 = 56;
const SECTION_HEADER_SIZE: u64 = 64;
/// Notes are small: a note segment or section larger than this is read
/// only this far.
const NOTES_READ: u64 = 1 << 16;
/// mayfail's note: owner and type (the library's `startup` module writes it).
const NOTE_OWNER: &[u8] = b"mayfail\0";
const NOTE_TYPE: u32 = 1;

/// What [`Elf::read`] learned from an ELF program.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elf {
    /// Has a `PT_INTERP` segment: loaded by the dynamic loader.
    pub(crate) dynamic: bool,
    /// Carries mayfail's note: declares `MayFail` itself.
    pub(crate) mayfail: bool,
    /// The names in `.symtab` (empty when stripped).
    names: Vec<u8>,
}

/// Why a file was not read as a program.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unread {
    /// Not an ELF file (a script, say), or not one the kernel executes (an
    /// object file, a core dump).
    NotProgram,
    /// A 32-bit ELF file: not this machine's format.
    ThirtyTwoBit,
    /// A big-endian ELF file: not this machine's format.
    BigEndian,
    /// An ELF file whose headers do not hold together.
    Malformed,
}

/// Where the bytes come from: the program's file, or bytes in a test.
pub(crate) trait Source {
    /// The number of bytes.
    fn size(&self) -> u64;
    /// Fills `buffer` from `offset`; false if it cannot.
    fn fill(&self, buffer: &mut [u8], offset: u64) -> bool;
}

impl Source for File {
    fn size(&self) -> u64 {
        self.metadata().map_or(0, |m| m.len())
    }

    fn fill(&self, buffer: &mut [u8], offset: u64) -> bool {
        self.read_exact_at(buffer, offset).is_ok()
    }
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn fill(&self, buffer: &mut [u8], offset: u64) -> bool {
        let Ok(start) = usize::try_from(offset) else {
            return false;
        };
        match self.get(start..start.saturating_add(buffer.len())) {
            Some(bytes) if bytes.len() == buffer.len() => {
                buffer.copy_from_slice(bytes);
                true
            }
            _ => false,
        }
    }
}

/// `len` bytes at `offset`, if the file holds them all; nothing is
/// allocated before that is known.
fn read_at(source: &(impl Source + ?Sized), offset: u64, len: u64) -> Option<Vec<u8>> {
    let end = offset.checked_add(len)?;
    if end > source.size() {
        return None;
    }
    let mut buffer = vec![0; usize::try_from(len).ok()?];
    source.fill(&mut buffer, offset).then_some(buffer)
}

/// Little-endian fields of a buffer whose length was checked.
fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// A table of `count` entries of `entry_size` bytes at `offset`, each at
/// least `needed` bytes; `None` if it does not fit the file or its entries
/// are too small for their fields.
fn table(
    source: &(impl Source + ?Sized),
    offset: u64,
    entry_size: u64,
    count: u64,
    needed: u64,
) -> Option<Vec<Vec<u8>>> {
    if count == 0 {
        return Some(Vec::new());
    }
    if entry_size < needed {
        return None;
    }
    let bytes = read_at(source, offset, entry_size.checked_mul(count)?)?;
    Some(
        bytes
            .chunks_exact(entry_size as usize)
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

impl Elf {
    /// Reads what the runner needs from the program in `source`.
    pub(crate) fn read(source: &(impl Source + ?Sized)) -> Result<Elf, Unread> {
        let Some(header) = read_at(source, 0, HEADER_SIZE) else {
            return Err(match read_at(source, 0, 4) {
                Some(magic) if magic == b"\x7fELF" => Unread::Malformed,
                _ => Unread::NotProgram,
            });
        };
        if &header[..4] != b"\x7fELF" {
            return Err(Unread::NotProgram);
        }
        match (header[4], header[5]) {
            (2, 1) => {}
            (1, _) => return Err(Unread::ThirtyTwoBit),
            (_, 2) => return Err(Unread::BigEndian),
            _ => return Err(Unread::Malformed),
        }
        if !matches!(u16_at(&header, 16), ET_EXEC | ET_DYN) {
            return Err(Unread::NotProgram);
        }
        let programs = table(
            source,
            u64_at(&header, 32),
            u16_at(&header, 54).into(),
            u16_at(&header, 56).into(),
            PROGRAM_HEADER_SIZE,
        )
        .ok_or(Unread::Malformed)?;
        let mut elf = Elf {
            dynamic: false,
            mayfail: false,
            names: Vec::new(),
        };
        for program in &programs {
            let kind = u32_at(program, 0);
            elf.dynamic |= kind == PT_INTERP;
            if kind == PT_NOTE {
                // p_offset, p_filesz, p_align
                elf.mayfail |= notes_have_mayfail(
                    source,
                    u64_at(program, 8),
                    u64_at(program, 32),
                    u64_at(program, 48),
                );
            }
        }
        // Sections are optional to run a program: a table that does not
        // hold together leaves the names empty, as a stripped file does.
        let sections = table(
            source,
            u64_at(&header, 40),
            u16_at(&header, 58).into(),
            u16_at(&header, 60).into(),
            SECTION_HEADER_SIZE,
        )
        .unwrap_or_default();
        for section in &sections {
            // sh_type, sh_offset, sh_size, sh_link, sh_addralign
            let (kind, offset, size) =
                (u32_at(section, 4), u64_at(section, 24), u64_at(section, 32));
            if kind == SHT_NOTE {
                elf.mayfail |= notes_have_mayfail(source, offset, size, u64_at(section, 48));
            }
            if kind == SHT_SYMTAB {
                // Its string table is the section it links to.
                let link = usize::try_from(u32_at(section, 40)).ok();
                if let Some(strings) = link.and_then(|link| sections.get(link)) {
                    elf.names = read_at(source, u64_at(strings, 24), u64_at(strings, 32))
                        .unwrap_or_default();
                }
            }
        }
        Ok(elf)
    }

    /// Whether a symbol name holds `needle` (mangled names hold the plain
    /// one).
    pub(crate) fn has_symbol(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.names.windows(needle.len()).any(|w| w == needle)
    }
}

/// Whether the notes at `offset` (`size` bytes, entries aligned to `align`)
/// include mayfail's.
fn notes_have_mayfail(source: &(impl Source + ?Sized), offset: u64, size: u64, align: u64) -> bool {
    let Some(notes) = read_at(source, offset, size.min(NOTES_READ)) else {
        return false;
    };
    let align = if align == 8 { 8 } else { 4 };
    let padded = |n: usize| n.div_ceil(align) * align;
    let mut rest = &notes[..];
    while rest.len() >= 12 {
        let (name_size, desc_size, kind) = (
            u32_at(rest, 0) as usize,
            u32_at(rest, 4) as usize,
            u32_at(rest, 8),
        );
        let Some(name) = rest.get(12..12 + name_size) else {
            return false;
        };
        if name == NOTE_OWNER && kind == NOTE_TYPE {
            return true;
        }
        let next = padded(12 + padded(name_size)) + padded(desc_size);
        match rest.get(next..) {
            Some(after) if next > 0 => rest = after,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;

    /// Bytes that remember the largest buffer asked of them.
    struct Watched<'a> {
        bytes: &'a [u8],
        largest: Cell<usize>,
    }

    impl Source for Watched<'_> {
        fn size(&self) -> u64 {
            self.bytes.size()
        }

        fn fill(&self, buffer: &mut [u8], offset: u64) -> bool {
            self.largest.set(self.largest.get().max(buffer.len()));
            self.bytes.fill(buffer, offset)
        }
    }

    /// Reads `bytes`, checking that no buffer was larger than the file.
    fn read(bytes: &[u8]) -> Result<Elf, Unread> {
        let watched = Watched {
            bytes,
            largest: Cell::new(0),
        };
        let read = Elf::read(&watched);
        assert!(
            watched.largest.get() <= bytes.len(),
            "asked {} bytes of a file of {}",
            watched.largest.get(),
            bytes.len()
        );
        read
    }

    fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
        bytes[at..at + value.len()].copy_from_slice(value);
    }

    /// Offsets in [`program`]: the ELF header's fields, and the tables.
    const PHOFF: usize = 32;
    const SHOFF: usize = 40;
    const PHENTSIZE: usize = 54;
    const PHNUM: usize = 56;
    const SHENTSIZE: usize = 58;
    const SHNUM: usize = 60;
    const PROGRAMS: usize = 64;
    const NOTE: usize = PROGRAMS + 2 * 56;
    const STRINGS: usize = NOTE + 24;
    const SECTIONS: usize = STRINGS + 32;

    /// A small dynamically linked program with mayfail's note (in a note
    /// segment and a note section) and a symbol table naming `__rust_alloc`.
    fn program() -> Vec<u8> {
        let mut bytes = vec![0u8; SECTIONS + 4 * 64];
        put(&mut bytes, 0, b"\x7fELF\x02\x01\x01");
        put(&mut bytes, 16, &ET_DYN.to_le_bytes());
        put(&mut bytes, PHOFF, &(PROGRAMS as u64).to_le_bytes());
        put(&mut bytes, SHOFF, &(SECTIONS as u64).to_le_bytes());
        put(&mut bytes, PHENTSIZE, &56u16.to_le_bytes());
        put(&mut bytes, PHNUM, &2u16.to_le_bytes());
        put(&mut bytes, SHENTSIZE, &64u16.to_le_bytes());
        put(&mut bytes, SHNUM, &4u16.to_le_bytes());
        // PT_INTERP, then PT_NOTE over the note.
        put(&mut bytes, PROGRAMS, &PT_INTERP.to_le_bytes());
        let note = PROGRAMS + 56;
        put(&mut bytes, note, &PT_NOTE.to_le_bytes());
        put(&mut bytes, note + 8, &(NOTE as u64).to_le_bytes());
        put(&mut bytes, note + 32, &24u64.to_le_bytes());
        put(&mut bytes, note + 48, &4u64.to_le_bytes());
        // The note: name size 8, description size 4, type 1, "mayfail\0", 1.
        put(&mut bytes, NOTE, &8u32.to_le_bytes());
        put(&mut bytes, NOTE + 4, &4u32.to_le_bytes());
        put(&mut bytes, NOTE + 8, &1u32.to_le_bytes());
        put(&mut bytes, NOTE + 12, b"mayfail\0");
        put(&mut bytes, NOTE + 20, &1u32.to_le_bytes());
        put(&mut bytes, STRINGS, b"\0__rust_alloc\0main\0");
        // Sections: null, the note, .symtab linking to 3, .strtab.
        let section = |i: usize| SECTIONS + i * 64;
        put(&mut bytes, section(1) + 4, &SHT_NOTE.to_le_bytes());
        put(&mut bytes, section(1) + 24, &(NOTE as u64).to_le_bytes());
        put(&mut bytes, section(1) + 32, &24u64.to_le_bytes());
        put(&mut bytes, section(2) + 4, &SHT_SYMTAB.to_le_bytes());
        put(&mut bytes, section(2) + 40, &3u32.to_le_bytes());
        put(&mut bytes, section(3) + 4, &3u32.to_le_bytes());
        put(&mut bytes, section(3) + 24, &(STRINGS as u64).to_le_bytes());
        put(&mut bytes, section(3) + 32, &32u64.to_le_bytes());
        bytes
    }

    #[test]
    fn a_whole_program_is_read() {
        let elf = read(&program()).unwrap();
        assert!(elf.dynamic && elf.mayfail);
        assert!(elf.has_symbol(b"__rust_alloc") && !elf.has_symbol(b"__rdl_alloc"));
    }

    #[test]
    fn the_note_is_found_in_its_segment_alone_and_in_its_section_alone() {
        let mut segment_only = program();
        put(&mut segment_only, SECTIONS + 64 + 4, &0u32.to_le_bytes());
        assert!(read(&segment_only).unwrap().mayfail);
        let mut section_only = program();
        put(&mut section_only, PROGRAMS + 56, &0u32.to_le_bytes());
        assert!(read(&section_only).unwrap().mayfail);
        put(&mut section_only, SECTIONS + 64 + 4, &0u32.to_le_bytes());
        assert!(!read(&section_only).unwrap().mayfail);
    }

    #[test]
    fn entry_sizes_too_small_for_their_fields_are_malformed_or_ignored() {
        for size in [0u16, 1, 55] {
            let mut bytes = program();
            put(&mut bytes, PHENTSIZE, &size.to_le_bytes());
            assert_eq!(read(&bytes), Err(Unread::Malformed), "e_phentsize {size}");
        }
        for size in [0u16, 1, 63] {
            let mut bytes = program();
            put(&mut bytes, SHENTSIZE, &size.to_le_bytes());
            let elf = read(&bytes).unwrap();
            assert!(elf.dynamic && !elf.has_symbol(b"__rust_alloc"), "{size}");
        }
        // No program headers at all, with a size of 0: a program without
        // an interpreter.
        let mut bytes = program();
        put(&mut bytes, PHENTSIZE, &0u16.to_le_bytes());
        put(&mut bytes, PHNUM, &0u16.to_le_bytes());
        assert!(!read(&bytes).unwrap().dynamic);
    }

    #[test]
    fn offsets_and_sizes_past_the_end_are_malformed_and_never_allocated() {
        for (at, value) in [(PHOFF, u64::MAX), (PHOFF, u64::MAX - 8), (PHOFF, 1 << 40)] {
            let mut bytes = program();
            put(&mut bytes, at, &value.to_le_bytes());
            assert_eq!(read(&bytes), Err(Unread::Malformed), "{at}: {value:#x}");
        }
        let mut bytes = program();
        put(&mut bytes, PHNUM, &u16::MAX.to_le_bytes());
        put(&mut bytes, PHENTSIZE, &u16::MAX.to_le_bytes());
        assert_eq!(read(&bytes), Err(Unread::Malformed));
        // A string table and a note of huge sizes: not read.
        let mut bytes = program();
        put(&mut bytes, SECTIONS + 3 * 64 + 32, &u64::MAX.to_le_bytes());
        put(
            &mut bytes,
            SECTIONS + 64 + 32,
            &(u64::MAX - 3).to_le_bytes(),
        );
        put(&mut bytes, PROGRAMS + 56 + 32, &(1u64 << 62).to_le_bytes());
        let elf = read(&bytes).unwrap();
        assert!(!elf.mayfail && !elf.has_symbol(b"main"));
    }

    #[test]
    fn other_formats_and_other_files_are_refused_as_such() {
        let mut bytes = program();
        bytes[4] = 1;
        assert_eq!(read(&bytes), Err(Unread::ThirtyTwoBit));
        let mut bytes = program();
        bytes[5] = 2;
        assert_eq!(read(&bytes), Err(Unread::BigEndian));
        let mut bytes = program();
        bytes[4] = 7;
        assert_eq!(read(&bytes), Err(Unread::Malformed));
        // An object file (ET_REL) and a core dump (ET_CORE).
        for kind in [1u16, 4] {
            let mut bytes = program();
            put(&mut bytes, 16, &kind.to_le_bytes());
            assert_eq!(read(&bytes), Err(Unread::NotProgram));
        }
        assert_eq!(read(b"#!/bin/sh\necho hi\n"), Err(Unread::NotProgram));
        assert_eq!(read(b""), Err(Unread::NotProgram));
        assert_eq!(read(b"\x7fELF\x02\x01"), Err(Unread::Malformed));
    }

    /// Header fields whose values steer reads: where to set them.
    const FIELDS: [(usize, usize); 8] = [
        (PHOFF, 8),
        (SHOFF, 8),
        (PHENTSIZE, 2),
        (PHNUM, 2),
        (SHENTSIZE, 2),
        (SHNUM, 2),
        (PROGRAMS + 56 + 32, 8),
        (SECTIONS + 2 * 64 + 40, 4),
    ];

    proptest! {
        #[test]
        fn truncated_programs_never_panic_nor_allocate_past_the_file(cut in 0usize..=600) {
            let bytes = program();
            let _ = read(&bytes[..cut.min(bytes.len())]);
        }

        #[test]
        fn mutated_programs_never_panic_nor_allocate_past_the_file(
            flips in proptest::collection::vec((0usize..600, any::<u8>()), 1..16),
            fields in proptest::collection::vec((0usize..FIELDS.len(), any::<u64>()), 0..4),
            cut in 300usize..=600,
        ) {
            let mut bytes = program();
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            for (field, value) in fields {
                let (at, width) = FIELDS[field];
                put(&mut bytes, at, &value.to_le_bytes()[..width]);
            }
            bytes.truncate(cut);
            let _ = read(&bytes);
        }
    }
}
