//! Random numbers without a crate, for draws that need no cryptographic quality (A/B draws,
//! backoff jitter, trace and span ids): SplitMix64 per thread, seeded from std's per-process
//! random keys, so a draw costs a few instructions instead of a SipHash.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// std keys each `RandomState` differently (random per process, advancing per call), so
/// hashing nothing with a fresh one gives a seed no other thread or process shares.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The next number of this thread's SplitMix64 sequence.
pub fn random_u64() -> u64 {
    STATE.with(|state| {
        let x = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::random_u64;
    use std::collections::HashSet;

    #[test]
    fn draws_differ_and_spread_over_both_halves() {
        let draws: HashSet<u64> = (0..10_000).map(|_| random_u64()).collect();
        assert_eq!(draws.len(), 10_000);
        let high = draws.iter().filter(|d| **d >> 63 == 1).count();
        assert!(
            (4_500..5_500).contains(&high),
            "{high} of 10,000 in the upper half"
        );
        let other = std::thread::spawn(random_u64).join().unwrap();
        assert!(
            !draws.contains(&other),
            "another thread draws its own sequence"
        );
    }
}
