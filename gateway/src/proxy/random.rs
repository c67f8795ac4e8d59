//! A random number without a crate, for draws that need no cryptographic quality.

/// std keys each `RandomState` differently (per-thread keys that advance on every call), so
/// hashing nothing with a fresh one gives a new value.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
