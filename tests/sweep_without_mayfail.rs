//! A sweep in a program whose global allocator is not `MayFail` says so,
//! instead of reporting an operation without allocations as handled.

#[test]
fn a_sweep_without_mayfail_as_global_allocator_refuses_to_pass() {
    let report = mayfail::sweep(|| vec![1u8; 64]);
    let why = report.baseline_failure().expect("a baseline failure");
    assert!(
        why.contains("MayFail is not this program's global allocator"),
        "{why}"
    );
    assert!(!report.is_handled());
    assert!(report.to_string().contains("could not sweep"), "{report}");
}
