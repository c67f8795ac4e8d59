//! Always-valid p-values: the mixture sequential probability ratio test (mSPRT) with a normal
//! mixture, from Johari, Pekelis & Walsh, "Always Valid Inference" (the test Optimizely
//! runs). A fixed-horizon p-value read every hour is many tests, and one of them crosses 0.05
//! far more often than 5% of the time; the mSPRT's p-value stays valid however often it is read.
//!
//! For an asymptotically normal estimate θ̂ with variance v, mixing θ ~ N(0, τ²) gives
//! `Λ = √(v/(v+τ²)) · exp(θ̂²·τ² / (2v(v+τ²)))` and the always-valid p = min(1, 1/Λ).
//! τ is set to [`MIXING_EFFECT_SIZE`] standard deviations of one observation, so with
//! `v = σ²/n_eff` the ratio `τ²/v = 0.01·n_eff` does not depend on the metric's scale.

/// τ in per-observation standard deviations. The mSPRT is most sensitive where
/// `τ²/v ≈ 8`, here at n_eff ≈ 800 (≈1,600 requests per variant on an even split), the size
/// of an hour or a day of a canary; it still detects effects well before and after that.
pub const MIXING_EFFECT_SIZE: f64 = 0.1;

/// `n₁·n₂/(n₁+n₂)`: the sample size for which a two-sample difference has variance `σ²/n_eff`
/// (n/2 on an even split).
#[must_use]
pub fn effective_n(baseline_n: u64, candidate_n: u64) -> f64 {
    let (a, b) = (baseline_n as f64, candidate_n as f64);
    if a + b == 0.0 {
        0.0
    } else {
        a * b / (a + b)
    }
}

/// ln Λ for `estimate` with `variance`, the mixture's τ² being `MIXING_EFFECT_SIZE²·variance·n_eff`.
fn log_ratio(estimate: f64, variance: f64, n_eff: f64) -> f64 {
    let r = MIXING_EFFECT_SIZE * MIXING_EFFECT_SIZE * n_eff; // τ²/v
    let z2 = estimate * estimate / variance;
    -0.5 * (1.0 + r).ln() + z2 * r / (2.0 * (1.0 + r))
}

/// Always-valid p-value `min(1, 1/Λ)` of one look; 1 when the variance is 0 (no information).
#[must_use]
pub fn always_valid_p(estimate: f64, variance: f64, n_eff: f64) -> f64 {
    if !(variance > 0.0 && variance.is_finite() && n_eff > 0.0) {
        return 1.0;
    }
    (-log_ratio(estimate, variance, n_eff)).exp().min(1.0)
}

/// Requests per variant, at the current split, at which an `effect` with per-observation
/// variance `sigma2` would reach an always-valid p below `alpha`: the current counts scaled by
/// the smallest factor that crosses (which may be below 1: it would already have shown).
/// `None` when there is no effect, no variance, or it would take more than 10¹² requests.
#[must_use]
pub fn requests_to_significance(
    effect: f64,
    sigma2: f64,
    baseline_n: u64,
    candidate_n: u64,
    alpha: f64,
) -> Option<(u64, u64)> {
    let n_eff = effective_n(baseline_n, candidate_n);
    if effect == 0.0 || sigma2.is_nan() || sigma2 <= 0.0 || n_eff == 0.0 {
        return None;
    }
    // ln Λ first dips below 0 and then grows without bound, so "crossed" is monotone in k.
    let crosses = |k: f64| always_valid_p(effect, sigma2 / (k * n_eff), k * n_eff) < alpha;
    let mut high = 1.0 / n_eff;
    while !crosses(high) {
        high *= 2.0;
        if high * n_eff > 1e12 {
            return None;
        }
    }
    let mut low = high / 2.0;
    for _ in 0..60 {
        let mid = (low + high) / 2.0;
        if crosses(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    let scale = |n: u64| (n as f64 * high).ceil() as u64;
    Some((scale(baseline_n), scale(candidate_n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Λ straight from the mixture formula, τ² given explicitly.
    fn lambda(estimate: f64, v: f64, tau2: f64) -> f64 {
        (v / (v + tau2)).sqrt() * (estimate * estimate * tau2 / (2.0 * v * (v + tau2))).exp()
    }

    #[test]
    fn matches_the_normal_mixture_formula() {
        // σ² = 0.02 per observation, n_eff = 500: v = 4e-5, τ² = 0.01·0.02 = 2e-4
        let (sigma2, n_eff, estimate) = (0.02, 500.0, 0.02);
        let v = sigma2 / n_eff;
        let expected = 1.0 / lambda(estimate, v, 0.01 * sigma2);
        let p = always_valid_p(estimate, v, n_eff);
        assert!((p - expected).abs() < 1e-12, "{p} vs {expected}");
        // z ≈ 3.16: a fixed test says p ≈ 0.0016, the always-valid one is more cautious
        assert!(p > 0.01 && p < 0.05, "{p}");
        assert_eq!(always_valid_p(0.0, v, n_eff), 1.0);
        assert_eq!(always_valid_p(0.1, 0.0, n_eff), 1.0);
    }

    #[test]
    fn needs_a_larger_z_than_the_fixed_test_and_more_so_early() {
        // the |z| at which p crosses 0.05, at 100 and at 3,000 requests per variant
        let threshold = |n: u64| {
            let n_eff = effective_n(n, n);
            (0..10_000)
                .map(|i| f64::from(i) / 1000.0)
                .find(|z| always_valid_p(*z, 1.0, n_eff) < 0.05)
                .unwrap()
        };
        let (early, late) = (threshold(100), threshold(3000));
        assert!(early > 4.0 && early < 4.6, "{early}");
        assert!(late > 2.9 && late < 3.3, "{late}");
    }

    #[test]
    fn requests_to_significance_lands_on_the_crossing() {
        // error rate 2% vs 3%: σ² ≈ 0.025·0.975, 1,000 per variant so far
        let sigma2 = 0.025 * 0.975;
        let (b, c) = requests_to_significance(0.01, sigma2, 1000, 1000, 0.05).unwrap();
        assert_eq!(b, c);
        let at = |n: u64| always_valid_p(0.01, sigma2 / effective_n(n, n), effective_n(n, n));
        assert!(at(b) < 0.05 && at(b - 20) >= 0.05, "{b}");
        // the split ratio is kept
        let (b, c) = requests_to_significance(0.01, sigma2, 4000, 1000, 0.05).unwrap();
        assert!((b as f64 / c as f64 - 4.0).abs() < 0.01, "{b} {c}");
        assert_eq!(requests_to_significance(0.0, sigma2, 10, 10, 0.05), None);
    }
}
