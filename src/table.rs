//! A fixed-capacity hash table from non-zero 64-bit keys to 64-bit values,
//! in an anonymous mapping, lock-free: the sweep's live blocks (address to
//! size) and the site walk's known stacks (stack id, no value) both live in
//! one.
//!
//! ```text
//!  TABLE ──► ┌──────────────┬──────────────┬─────┬──────────────┐
//!            │ header       │ slot 0       │ ... │ slot mask    │
//!            │ mask, bytes, │ key | value  │     │ key | value  │
//!            │ entries      │              │     │              │
//!            └──────────────┴──────────────┴─────┴──────────────┘
//! ```
//!
//! The header and the slots are one mapping reached through one pointer, so
//! a reader never pairs one table's slots with another's size. A key is
//! claimed with compare-and-swap; a removed key leaves a tombstone. A table
//! replaced while the program runs is leaked rather than unmapped (a reader
//! may still hold it), except where the caller knows nobody does.
//!
//! Below the allocator: it never allocates, locks or panics.

use core::ptr;
use core::sync::atomic::{
    AtomicPtr, AtomicU64, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};

use crate::hash::splitmix64;
use crate::sys;

/// An empty slot's key.
const EMPTY: u64 = 0;
/// A removed key's tombstone.
const REMOVED: u64 = u64::MAX;

#[repr(C)]
struct Header {
    /// Slots minus one (a power of two minus one).
    mask: usize,
    /// The mapping's length.
    bytes: usize,
    /// Keys inserted and not removed.
    entries: AtomicUsize,
}

#[repr(C)]
struct Slot {
    key: AtomicU64,
    value: AtomicU64,
}

/// What [`Table::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The key is new and now in the table.
    New,
    /// The key was there already; nothing changed.
    Present,
    /// No room (or no table): nothing changed.
    Full,
}

/// The table: null until [`Table::create`] succeeds.
pub(crate) struct Table {
    header: AtomicPtr<Header>,
}

impl Table {
    /// No table yet.
    pub(crate) const fn new() -> Table {
        Table {
            header: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Maps a new, empty table with room for `capacity` keys (rounded up to
    /// a power of two of slots) and makes it current; `false` if it could
    /// not be mapped (the old table, if any, stays). The old table is
    /// unmapped when `unmap_old` is set, else leaked.
    ///
    /// # Safety
    ///
    /// With `unmap_old`, no other thread may be using the table.
    pub(crate) unsafe fn create(&self, capacity: usize, unmap_old: bool) -> bool {
        let slots = capacity.max(16).next_power_of_two();
        let bytes = size_of::<Header>() + slots * size_of::<Slot>();
        // Zero-filled pages are empty slots.
        let Some(mapping) = sys::map_anonymous(bytes) else {
            return false;
        };
        let header = mapping.cast::<Header>();
        // SAFETY: the mapping is fresh, writable, large enough and aligned
        // to a page, more than `Header` needs.
        unsafe {
            header.write(Header {
                mask: slots - 1,
                bytes,
                entries: AtomicUsize::new(0),
            })
        };
        let old = self.header.swap(header, Release);
        if unmap_old && !old.is_null() {
            // SAFETY: `old` came from an earlier `create` with its length in
            // the header; the caller guarantees nobody uses it.
            unsafe { sys::unmap(old.cast(), (*old).bytes) };
        }
        true
    }

    /// The current table's header and slots.
    fn current(&self) -> Option<(&Header, &[Slot])> {
        let header = self.header.load(Acquire);
        if header.is_null() {
            return None;
        }
        // SAFETY: a non-null header was written completely before it was
        // published with Release, and tables are never unmapped while in use
        // (see `create`). The slots follow the header in the same mapping.
        unsafe {
            let slots = header.add(1).cast::<Slot>();
            Some((
                &*header,
                core::slice::from_raw_parts(slots, (*header).mask + 1),
            ))
        }
    }

    /// The slots to probe for `key`, in order.
    fn probe(slots: &[Slot], mask: usize, key: u64) -> impl Iterator<Item = &Slot> {
        let start = (splitmix64(key) as usize) & mask;
        (0..=mask).map(move |i| &slots[(start + i) & mask])
    }

    /// Inserts `key` (not 0 nor `u64::MAX`) with `value`. A table kept at
    /// most three quarters full answers [`Inserted::Full`] beyond that. With
    /// `reuse_removed`, a tombstone may take the key: only for keys that are
    /// never present twice (live block addresses), since the probe then
    /// stops before looking further for the same key.
    pub(crate) fn insert(&self, key: u64, value: u64, reuse_removed: bool) -> Inserted {
        debug_assert!(key != EMPTY && key != REMOVED);
        let Some((header, slots)) = self.current() else {
            return Inserted::Full;
        };
        if header.entries.load(Relaxed) >= (header.mask + 1) / 4 * 3 {
            return Inserted::Full;
        }
        for slot in Self::probe(slots, header.mask, key) {
            let mut current = slot.key.load(Relaxed);
            loop {
                if current == key {
                    return Inserted::Present;
                }
                let free = current == EMPTY || (reuse_removed && current == REMOVED);
                if !free {
                    break;
                }
                match slot.key.compare_exchange(current, key, Relaxed, Relaxed) {
                    Ok(_) => {
                        slot.value.store(value, Relaxed);
                        header.entries.fetch_add(1, Relaxed);
                        return Inserted::New;
                    }
                    Err(now) => current = now,
                }
            }
        }
        Inserted::Full
    }

    /// Whether `key` is in the table.
    #[cfg(any(feature = "sites", test))]
    pub(crate) fn contains(&self, key: u64) -> bool {
        self.find(key).is_some()
    }

    fn find(&self, key: u64) -> Option<&Slot> {
        let (header, slots) = self.current()?;
        for slot in Self::probe(slots, header.mask, key) {
            match slot.key.load(Relaxed) {
                EMPTY => return None,
                found if found == key => return Some(slot),
                _ => {}
            }
        }
        None
    }

    /// Removes `key`; its value, if it was there.
    pub(crate) fn remove(&self, key: u64) -> Option<u64> {
        let slot = self.find(key)?;
        let value = slot.value.load(Relaxed);
        slot.key
            .compare_exchange(key, REMOVED, Relaxed, Relaxed)
            .ok()?;
        if let Some((header, _)) = self.current() {
            header.entries.fetch_sub(1, Relaxed);
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_go_in_once_come_out_once_and_fill_to_three_quarters() {
        let table = Table::new();
        assert_eq!(table.insert(5, 1, false), Inserted::Full);
        // SAFETY: the table is this test's own.
        assert!(unsafe { table.create(16, true) });
        assert_eq!(table.insert(5, 50, false), Inserted::New);
        assert_eq!(table.insert(5, 51, false), Inserted::Present);
        assert!(table.contains(5));
        assert_eq!(table.remove(5), Some(50));
        assert_eq!(table.remove(5), None);
        assert!(!table.contains(5));
        let new = (100..200u64)
            .filter(|&k| table.insert(k, k, false) == Inserted::New)
            .count();
        assert_eq!(new, 12, "16 slots, at most three quarters used");
        // SAFETY: as above.
        assert!(unsafe { table.create(16, true) });
        assert!(!table.contains(100), "a new table is empty");
    }

    #[test]
    fn tombstones_are_reused_only_when_asked() {
        let table = Table::new();
        // SAFETY: the table is this test's own.
        assert!(unsafe { table.create(1024, true) });
        for k in 1..=500u64 {
            assert_eq!(table.insert(k, 0, true), Inserted::New);
            assert_eq!(table.remove(k), Some(0));
        }
        // Every removal left a tombstone; reusing them keeps finding room.
        for k in 1000..1700u64 {
            assert_eq!(table.insert(k, k * 2, true), Inserted::New, "{k}");
            assert_eq!(table.remove(k), Some(k * 2));
        }
    }
}
