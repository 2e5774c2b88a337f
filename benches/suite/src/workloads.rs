//! The workloads in their out-of-line form: compiled once, into the suite's
//! library, so every configuration binary runs the same machine code for them
//! and reaches its global allocator through the same `__rust_alloc` shim.
//! Every configuration binary also compiles the same source into its own
//! crate (the in-crate form); see `workload_code.rs`.

include!("workload_code.rs");
