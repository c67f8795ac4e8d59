//! Which variant of an experiment a request gets.
//!
//! Sticky assignment is weighted rendezvous hashing: every variant scores the key with its own
//! seeded hash (route, salt and variant name), scaled by its weight, and the best score wins.
//! The hash is fixed (xxh3), so every instance and every restart agrees. Raising a variant's
//! weight only improves its own scores, so its users stay and only the users that must move
//! do: a reload from 80/20 to 70/30 keeps all of the old 20% where they were.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One variant's share: its weight and the hash seed derived from route, salt and name.
#[derive(Debug, Clone)]
struct Arm {
    weight: u32,
    seed: u64,
}

/// The variants of one route's experiment, in config order.
#[derive(Debug, Clone)]
pub struct Split {
    arms: Vec<Arm>,
    total: u64,
}

impl Split {
    /// `variants` are (name, weight) in config order; `None` when no weight is positive.
    #[must_use]
    pub fn new(route: &str, salt: &str, variants: &[(&str, u32)]) -> Option<Split> {
        let total: u64 = variants.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let arms = variants
            .iter()
            .map(|(name, weight)| Arm {
                weight: *weight,
                seed: seed(route, salt, name),
            })
            .collect();
        Some(Split { arms, total })
    }

    /// The variant (index in config order) for a sticky key, the same for that key everywhere.
    #[must_use]
    pub fn assign(&self, key: &[u8]) -> usize {
        let mut best = (0, f64::INFINITY);
        for (i, arm) in self.arms.iter().enumerate() {
            if arm.weight == 0 {
                continue;
            }
            // -ln(u)/w is an exponential draw with rate w: the smallest wins with chance w/total.
            let score = -unit(xxh3_64_with_seed(key, arm.seed)).ln() / f64::from(arm.weight);
            if score < best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    /// The variant for a request without a sticky key, from a uniform random `r`.
    #[must_use]
    pub fn draw(&self, r: u64) -> usize {
        let mut point = r % self.total;
        for (i, arm) in self.arms.iter().enumerate() {
            let w = u64::from(arm.weight);
            if point < w {
                return i;
            }
            point -= w;
        }
        0
    }
}

/// A variant's seed: route, salt and name, length-prefixed so ("ab", "c") and ("a", "bc") differ.
fn seed(route: &str, salt: &str, name: &str) -> u64 {
    let mut material = Vec::with_capacity(route.len() + salt.len() + name.len() + 24);
    for part in [route, salt, name] {
        material.extend_from_slice(&(part.len() as u64).to_le_bytes());
        material.extend_from_slice(part.as_bytes());
    }
    xxh3_64(&material)
}

/// A hash as a uniform number strictly inside (0, 1): 52 bits plus a half, exact in an f64, so
/// its logarithm is finite and never 0.
fn unit(h: u64) -> f64 {
    ((h >> 12) as f64 + 0.5) / (1u64 << 52) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize) -> impl Iterator<Item = String> {
        (0..n).map(|i| format!("user-{i}"))
    }

    fn share(split: &Split, variant: usize, n: usize) -> f64 {
        let hits = users(n)
            .filter(|u| split.assign(u.as_bytes()) == variant)
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn shares_follow_the_weights() {
        let split = Split::new("chat", "", &[("control", 80), ("candidate", 20)]).unwrap();
        let s = share(&split, 1, 20_000);
        assert!((s - 0.20).abs() < 0.01, "candidate share {s}");
        let three = Split::new("chat", "", &[("a", 1), ("b", 1), ("c", 2)]).unwrap();
        for (v, want) in [(0, 0.25), (1, 0.25), (2, 0.5)] {
            let s = share(&three, v, 20_000);
            assert!((s - want).abs() < 0.015, "variant {v} share {s}");
        }
    }

    #[test]
    fn the_same_key_gets_the_same_variant_and_salt_reshuffles() {
        let a = Split::new("chat", "exp-1", &[("control", 50), ("candidate", 50)]).unwrap();
        let b = Split::new("chat", "exp-1", &[("control", 50), ("candidate", 50)]).unwrap();
        let salted = Split::new("chat", "exp-2", &[("control", 50), ("candidate", 50)]).unwrap();
        let moved = users(2000)
            .filter(|u| {
                assert_eq!(a.assign(u.as_bytes()), b.assign(u.as_bytes()));
                a.assign(u.as_bytes()) != salted.assign(u.as_bytes())
            })
            .count();
        // A new salt is a new experiment: about half of the users change sides.
        assert!((800..1200).contains(&moved), "{moved} moved");
    }

    #[test]
    fn a_weight_change_moves_only_the_users_that_must_move() {
        let before = Split::new("chat", "", &[("control", 80), ("candidate", 20)]).unwrap();
        let after = Split::new("chat", "", &[("control", 70), ("candidate", 30)]).unwrap();
        let n = 20_000;
        let mut moved_in = 0;
        for u in users(n) {
            let (b, a) = (before.assign(u.as_bytes()), after.assign(u.as_bytes()));
            assert!(b != 1 || a == 1, "{u} left the candidate");
            moved_in += usize::from(b == 0 && a == 1);
        }
        let moved = moved_in as f64 / n as f64;
        assert!(
            (moved - 0.10).abs() < 0.01,
            "{moved} moved to the candidate"
        );
    }

    #[test]
    fn adding_a_variant_only_takes_users_from_the_others() {
        let before = Split::new("chat", "", &[("a", 50), ("b", 50)]).unwrap();
        let after = Split::new("chat", "", &[("a", 50), ("b", 50), ("c", 50)]).unwrap();
        for u in users(5000) {
            let (b, a) = (before.assign(u.as_bytes()), after.assign(u.as_bytes()));
            assert!(a == b || a == 2, "{u} moved from {b} to {a}");
        }
    }

    #[test]
    fn zero_weights_never_win_and_all_zero_is_refused() {
        let split = Split::new("chat", "", &[("off", 0), ("on", 1)]).unwrap();
        assert!(users(1000).all(|u| split.assign(u.as_bytes()) == 1));
        assert!((0..1000).all(|r| split.draw(r) == 1));
        assert!(Split::new("chat", "", &[("off", 0)]).is_none());
    }

    #[test]
    fn draws_follow_the_weights() {
        let split = Split::new("chat", "", &[("control", 80), ("candidate", 20)]).unwrap();
        let hits = (0..1000u64).filter(|r| split.draw(*r) == 1).count();
        assert_eq!(hits, 200);
    }
}
