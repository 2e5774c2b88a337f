//! Real crates swept, asserted with what they really do: hashbrown, smallvec
//! and bumpalo. They live in this package so that the library's own build
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
