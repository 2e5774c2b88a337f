//! Real crates swept, asserted with what they really do: hashbrown, smallvec,
//! bumpalo, fallible_collections and compact_str. They live in this package so that the library's own build
//! (and its demo) never compiles them.

use std::alloc::System;
use std::time::Duration;

use mayfail::{MayFail, Outcome, Sweep};

#[global_allocator]
static GLOBAL: MayFail<System> = MayFail::system();

fn quick() -> Sweep {
    Sweep::new().timeout(Duration::from_secs(5))
}

#[test]
fn hashbrown_try_reserve_then_inserts_within_capacity_is_handled() {
    let report = quick().run(|| -> Result<usize, hashbrown::TryReserveError> {
        let mut map: hashbrown::HashMap<u64, u64> = hashbrown::HashMap::new();
        map.try_reserve(100)?;
        for i in 0..100 {
            map.insert(i, i * i);
        }
        Ok(map.len())
    });
    report.assert_handled();
    assert_eq!(report.allocations(), 1, "one table allocation\n{report}");
}

#[test]
fn hashbrown_inserts_beyond_capacity_abort() {
    let report = quick().run(|| {
        let mut map: hashbrown::HashMap<u64, u64> = hashbrown::HashMap::new();
        for i in 0..100 {
            map.insert(i, i);
        }
        map.len()
    });
    assert!(
        report.count(Outcome::Aborted) >= 3,
        "each growth is infallible\n{report}"
    );
    assert_eq!(report.count(Outcome::Handled), 0, "{report}");
}

#[test]
fn smallvec_try_reserve_is_handled() {
    let report = quick().run(|| -> Result<usize, smallvec::CollectionAllocErr> {
        let mut v: smallvec::SmallVec<[u32; 4]> = smallvec::SmallVec::new();
        v.try_reserve(64)?;
        v.extend(0..64);
        Ok(v.len())
    });
    report.assert_handled();
    assert_eq!(report.allocations(), 1, "{report}");
}

#[test]
fn bumpalo_try_alloc_is_handled() {
    let report = quick().run(|| -> Result<u64, bumpalo::AllocErr> {
        let bump = bumpalo::Bump::new();
        let mut sum = 0;
        for i in 0..1000u64 {
            sum += *bump.try_alloc(i)?;
        }
        Ok(sum)
    });
    report.assert_handled();
    assert!(report.allocations() >= 1, "{report}");
}

/// The line of this file holding `marker`.
fn line_of(marker: &str) -> usize {
    include_str!("real_crates.rs")
        .lines()
        .position(|l| l.contains(marker) && !l.contains("line_of("))
        .expect("marker in this file")
        + 1
}

#[test]
fn hashbrown_sites_are_the_callers_line_not_the_allocator_plumbing() {
    let report = quick().run(|| {
        let mut map: hashbrown::HashMap<u64, u64> = hashbrown::HashMap::new();
        map.insert(1, 1); // MARK: hashbrown insert
        map.len()
    });
    let line = format!(
        "(tests/real_crates.rs:{})",
        line_of("MARK: hashbrown insert")
    );
    let site = &report.points()[0].site;
    assert!(!site.contains("allocator_api2::"), "{report}");
    assert!(site.contains(&line), "{line}\n{report}");
}

#[test]
fn fallible_collections_try_read_up_to_aborts_on_its_own_error_message() {
    use fallible_collections::TryVec;
    use fallible_collections::vec::std_io::try_read_up_to;
    // Persistent: the reserve fails (handled), then so does everything after
    // it, and the error path builds `io::Error::new(kind, "...")`, which
    // allocates its message infallibly.
    let report = quick().persistent(true).run(|| {
        let mut buf = TryVec::new();
        try_read_up_to(&mut &b"hello, world"[..], 64, &mut buf).map(|n| n + buf.len())
    });
    println!("{report}");
    let point = &report.points()[0];
    assert_eq!(point.outcome, Outcome::Aborted, "{report}");
    assert!(
        point
            .site
            .starts_with("fallible_collections::vec::std_io::try_read_up_to::{{closure}} (fallible_collections-0.5.2/src/vec.rs:261)"),
        "{report}"
    );
    assert!(point.detail.contains("failed first, at "), "{report}");
    assert!(!point.site.contains(".cargo/registry"), "{report}");
}

/// `FallibleRc` is deprecated by its crate (its `try_new` can abort, which
/// is what makes it a good site to name).
#[test]
#[allow(deprecated)]
fn a_third_party_trait_on_a_std_type_stays_in_the_site() {
    use fallible_collections::FallibleRc;
    let report = quick().run(|| {
        let rc = <std::rc::Rc<[u8; 32]> as FallibleRc<[u8; 32]>>::try_new([1; 32]); // MARK: rc
        rc.map(|rc| rc.len()).unwrap_or(0)
    });
    let site = &report.points()[1].site;
    assert!(
        site.starts_with("<alloc::rc::Rc<T> as fallible_collections::rc::FallibleRc<T>>::try_new"),
        "{report}"
    );
    assert!(
        site.contains(&format!("(tests/real_crates.rs:{})", line_of("MARK: rc"))),
        "{report}"
    );
}

/// A `Display` type whose text does not fit inline in a `CompactString`
/// (24 bytes on 64-bit targets), so formatting it allocates.
struct LongName;

impl std::fmt::Display for LongName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a name longer than the inline capacity")
    }
}

#[test]
fn compact_str_try_to_compact_string_panics_on_its_own_allocation_failure() {
    use compact_str::ToCompactString;
    // Documented "won't panic if the system is out-of-memory, but return a
    // ReserveError"; for a `Display` type it formats with `write!`, whose
    // `push_str` unwraps the failed reserve (repr/mod.rs:361).
    let report = quick().run(|| LongName.try_to_compact_string().map(|s| s.len()));
    assert_eq!(report.allocations(), 1, "{report}");
    assert_eq!(report.count(Outcome::Panicked), 1, "{report}");
    assert_eq!(report.count(Outcome::Handled), 0, "{report}");
}
