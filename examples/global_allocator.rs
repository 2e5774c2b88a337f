//! The smallest program with `MayFail` as its global allocator: the retry
//! knob, a scope, and the collections std builds on it. `ci/miri.sh` runs it
//! under Miri, which checks every allocation, reallocation and free that
//! goes through the wrapper.
//!
//! ```text
//! cargo run --example global_allocator
//! ```

use std::collections::HashMap;

use mayfail::MayFail;

#[global_allocator]
static GLOBAL: MayFail<std::alloc::System> = MayFail::system().with_retries(3);

fn main() {
    let mut words: Vec<String> = Vec::with_capacity(64);
    // The compiled default (registered by the first allocation), until a
    // setter changes it.
    assert_eq!(mayfail::retries(), 3);
    mayfail::set_retries(mayfail::RETRY_FOREVER);

    for i in 0..64 {
        words.push(format!("word {i}"));
    }
    words.shrink_to_fit();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in &words {
        *counts.entry(word.as_str()).or_default() += 1;
    }
    let zeroed = vec![0u64; 256];
    let total = mayfail::nofail(|| {
        let mut v: Vec<u8> = Vec::new();
        v.try_reserve(4096).map(|()| v.capacity())
    });
    assert!(total.is_ok());
    assert_eq!(counts.len(), 64);
    assert!(zeroed.iter().all(|&z| z == 0));
    println!(
        "{} words, {} counted, retries {}",
        words.len(),
        counts.len(),
        mayfail::retries()
    );
}
