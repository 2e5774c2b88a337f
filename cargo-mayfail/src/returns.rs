//! Which functions of a binary promise, by their signature, to report an
//! allocation failure: read from the binary's debug information.
//!
//! The rule: a function is fallible when it returns a `Result` whose error
//! type names an allocation failure: `TryReserveError`, `AllocError`,
//! `ReserveError`, `CollectionAllocErr`, or any type whose name holds
//! `Alloc`, `Reserve` or `Memory` (`OutOfMemory`, `MemoryError`). A
//! `Result` with another error (`Utf8Error`, `io::Error`) promises nothing
//! about memory, and neither does an `Option`: aborting there is std's
//! infallible allocation, not a broken promise. A `try_*` name is the other
//! half of the rule, told without debug information (see `findings`).
//!
//! Each subprogram with a linkage name and a return type is looked at; its
//! name is demangled as the walk's frames name functions (`a::B<T>::f`,
//! without the hash), so that the names match. Debug information that is
//! missing, compressed or unreadable tells nothing: no function is added.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

/// Whether a `Result`'s type name (`Result<T, E>`, as the debug
/// information writes it) has an allocation error for `E`.
pub fn reports_allocation_failure(type_name: &str) -> bool {
    let Some(args) = type_name
        .strip_prefix("Result<")
        .and_then(|rest| rest.strip_suffix('>'))
    else {
        return false;
    };
    let error = last_argument(args);
    let last = error.rsplit("::").next().unwrap_or(error);
    let last = last.split('<').next().unwrap_or(last);
    ["Alloc", "Reserve", "Memory"]
        .iter()
        .any(|word| last.contains(word))
}

/// The last of a generic argument list's top-level arguments.
fn last_argument(args: &str) -> &str {
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in args.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => start = i + 1,
            _ => {}
        }
    }
    args[start..].trim()
}

/// The functions of `binary` that return a `Result` reporting an
/// allocation failure, by the name the walk's frames give them.
pub fn fallible_functions(binary: &Path) -> HashSet<String> {
    read(binary).unwrap_or_default()
}

fn read(binary: &Path) -> Option<HashSet<String>> {
    let data = std::fs::read(binary).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, gimli::Error> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|section| section.data().ok())
            .map_or(Cow::Borrowed(&[][..]), Cow::Borrowed))
    };
    let sections = gimli::DwarfSections::load(load).ok()?;
    let dwarf = sections.borrow(|section| EndianSlice::new(section, endian));
    let mut found = HashSet::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let mut entries = unit.entries();
        while let Ok(Some(entry)) = entries.next_dfs() {
            if entry.tag() != gimli::DW_TAG_subprogram {
                continue;
            }
            let (Some(linkage), Some(AttributeValue::UnitRef(returned))) = (
                entry.attr_value(gimli::DW_AT_linkage_name),
                entry.attr_value(gimli::DW_AT_type),
            ) else {
                continue;
            };
            let type_name = unit
                .entry(returned)
                .ok()
                .and_then(|ty| ty.attr_value(gimli::DW_AT_name))
                .and_then(|name| dwarf.attr_string(&unit, name).ok());
            let Some(type_name) = type_name else {
                continue;
            };
            if !reports_allocation_failure(&type_name.to_string_lossy()) {
                continue;
            }
            if let Ok(linkage) = dwarf.attr_string(&unit, linkage) {
                let mangled = linkage.to_string_lossy();
                found.insert(format!("{:#}", rustc_demangle::demangle(&mangled)));
            }
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_result_with_an_allocation_error_promises_to_report_one() {
        for name in [
            "Result<alloc::vec::Vec<u8, alloc::alloc::Global>, alloc::collections::TryReserveError>",
            "Result<(), core::alloc::AllocError>",
            "Result<compact_str::CompactString, compact_str::ReserveError>",
            "Result<alloc::vec::Vec<u8, alloc::alloc::Global>, fallible_collections::TryReserveError>",
            "Result<T, my::OutOfMemory>",
            "Result<a::B<c::D, e::F>, g::CollectionAllocErr>",
        ] {
            assert!(reports_allocation_failure(name), "{name}");
        }
        for name in [
            "Result<alloc::string::String, core::str::error::Utf8Error>",
            "Result<(), std::io::error::Error>",
            "Result<a::Alloc<T>, ()>",
            "Option<alloc::vec::Vec<u8, alloc::alloc::Global>>",
            "Vec<u8>",
            "Result<",
        ] {
            assert!(!reports_allocation_failure(name), "{name}");
        }
    }
}
