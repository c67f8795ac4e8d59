//! The fixed-horizon statistics behind `sluice ab-report`, computed from what Prometheus can
//! give: bucket counts and counters, never raw samples. Quantiles are interpolated inside
//! buckets like `histogram_quantile`, error rates are compared with a two-proportion test, and
//! latencies with a Mann–Whitney test on the binned histograms. The peeking-safe sequential
//! test that decides verdicts is in [`msprt`].

pub mod msprt;

use statrs::distribution::{ContinuousCDF, Normal};
use thiserror::Error;

use super::Histogram;

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Two histograms can only be ranked against each other when they share one bucket layout.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("latency histograms have different bucket bounds (baseline {baseline:?}, candidate {candidate:?}); compare variants recorded by the same sluice version")]
pub struct BoundsMismatch {
    pub baseline: Vec<f64>,
    pub candidate: Vec<f64>,
}

/// Two-sided p-value of a standard normal statistic.
#[must_use]
pub fn two_sided_p(z: f64) -> f64 {
    (2.0 * Normal::standard().sf(z.abs())).min(1.0)
}

// === impl Histogram ===

impl Histogram {
    /// Samples in the histogram.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Mean in seconds (`sum / count`), `None` when empty.
    #[must_use]
    pub fn mean(&self) -> Option<f64> {
        let n = self.total();
        (n > 0).then(|| self.sum / n as f64)
    }

    /// The q-quantile with Prometheus' `histogram_quantile` semantics: the rank `q·n` is found
    /// in the first bucket whose cumulative count reaches it and interpolated linearly between
    /// that bucket's bounds (the first bucket starts at 0); a rank in the +Inf bucket gives the
    /// highest finite bound. `None` when empty, without a finite bound, or q outside [0, 1].
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.total();
        if n == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * n as f64;
        let mut below = 0.0;
        let mut start = 0.0;
        let mut highest = None;
        for (&bound, &count) in self.bounds.iter().zip(&self.counts) {
            if !bound.is_finite() {
                break;
            }
            let count = count as f64;
            // count > 0: a rank of 0 lands in the first bucket that holds a sample.
            if count > 0.0 && below + count >= rank {
                return Some(start + (bound - start) * (rank - below) / count);
            }
            below += count;
            start = bound;
            highest = Some(bound);
        }
        highest
    }

    /// Lower and upper edge of the bucket that holds the sample of 1-based `rank`.
    fn bucket_of_rank(&self, rank: u64) -> Option<(f64, f64)> {
        let mut below = 0;
        let mut start = 0.0;
        for (&bound, &count) in self.bounds.iter().zip(&self.counts) {
            if count > 0 && rank <= below + count {
                return Some((start, bound));
            }
            below += count;
            start = bound;
        }
        None
    }

    /// Distribution-free interval for the median at two-sided normal quantile `z`: the order
    /// statistics of ranks `n/2 ∓ z·√n/2 (+1)` (normal approximation to the binomial), widened
    /// to the outer edges of their buckets because the histogram only knows the bucket.
    fn median_interval(&self, z: f64) -> Option<(f64, f64)> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let half = z * (n as f64).sqrt() / 2.0;
        let low_rank = ((n as f64 / 2.0 - half).floor() as u64).clamp(1, n);
        let high_rank = ((n as f64 / 2.0 + half + 1.0).ceil() as u64).clamp(1, n);
        Some((
            self.bucket_of_rank(low_rank)?.0,
            self.bucket_of_rank(high_rank)?.1,
        ))
    }
}

// === two proportions ===

/// Candidate minus baseline for a rate such as the 5xx share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProportionDiff {
    pub baseline_rate: f64,
    pub candidate_rate: f64,
    /// Both variants together, the rate under "no difference".
    pub pooled_rate: f64,
    pub diff: f64,
    /// Newcombe's hybrid score interval (method 10) at 95%, from the two Wilson intervals.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Variance of `diff` under "no difference": `pooled·(1−pooled)·(1/n₁ + 1/n₂)`.
    pub variance: f64,
    /// `diff / √variance` (0 when the variance is 0: no errors at all, or only errors).
    pub z: f64,
    /// Two-sided p-value of the pooled z test.
    pub p_value: f64,
}

/// Wilson score interval at 95% for `x` of `n`.
fn wilson(x: u64, n: u64) -> (f64, f64) {
    let (n, p) = (n as f64, x as f64 / n as f64);
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Compares `candidate_x` of `candidate_n` with `baseline_x` of `baseline_n` (x ≤ n).
/// `None` when either n is 0. Newcombe's interval rather than Wald's because error counts are
/// often 0 or a handful, where Wald's interval collapses to a point.
#[must_use]
pub fn compare_proportions(
    baseline_x: u64,
    baseline_n: u64,
    candidate_x: u64,
    candidate_n: u64,
) -> Option<ProportionDiff> {
    if baseline_n == 0 || candidate_n == 0 {
        return None;
    }
    let (bx, cx) = (baseline_x.min(baseline_n), candidate_x.min(candidate_n));
    let baseline_rate = bx as f64 / baseline_n as f64;
    let candidate_rate = cx as f64 / candidate_n as f64;
    let pooled_rate = (bx + cx) as f64 / (baseline_n + candidate_n) as f64;
    let diff = candidate_rate - baseline_rate;
    let variance =
        pooled_rate * (1.0 - pooled_rate) * (1.0 / baseline_n as f64 + 1.0 / candidate_n as f64);
    let z = if variance > 0.0 {
        diff / variance.sqrt()
    } else {
        0.0
    };
    let (bl, bh) = wilson(bx, baseline_n);
    let (cl, ch) = wilson(cx, candidate_n);
    Some(ProportionDiff {
        baseline_rate,
        candidate_rate,
        pooled_rate,
        diff,
        ci_low: diff - ((candidate_rate - cl).powi(2) + (bh - baseline_rate).powi(2)).sqrt(),
        ci_high: diff + ((ch - candidate_rate).powi(2) + (baseline_rate - bl).powi(2)).sqrt(),
        variance,
        z,
        p_value: two_sided_p(z),
    })
}

// === latency: Mann–Whitney on binned samples ===

/// How the candidate's latencies rank against the baseline's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankComparison {
    pub baseline_n: u64,
    pub candidate_n: u64,
    /// Mann–Whitney U of the candidate: pairs where it is slower, plus half the ties.
    pub u: f64,
    /// `U / (n₁·n₂)` = P(candidate slower) + ½·P(tie); 0.5 means no shift.
    pub auc: f64,
    /// Variance of `auc` under "no difference", with the tie correction.
    pub auc_variance: f64,
    pub z: f64,
    /// Two-sided p-value, normal approximation without continuity correction.
    pub p_value: f64,
}

/// Mann–Whitney U from two histograms of one bucket layout. Every sample in a bucket ties
/// with every other sample of that bucket (the histogram cannot order them), which the tie
/// correction of the variance accounts for. `Ok(None)` when either histogram is empty.
pub fn mann_whitney(
    baseline: &Histogram,
    candidate: &Histogram,
) -> Result<Option<RankComparison>, BoundsMismatch> {
    if baseline.bounds != candidate.bounds {
        return Err(BoundsMismatch {
            baseline: baseline.bounds.clone(),
            candidate: candidate.bounds.clone(),
        });
    }
    let (n1, n2) = (baseline.total(), candidate.total());
    if n1 == 0 || n2 == 0 {
        return Ok(None);
    }
    let (mut u, mut baseline_below, mut ties) = (0.0, 0.0, 0.0);
    for (&b, &c) in baseline.counts.iter().zip(&candidate.counts) {
        let (b, c) = (b as f64, c as f64);
        u += c * baseline_below + 0.5 * c * b;
        baseline_below += b;
        let t = b + c;
        ties += t * t * t - t;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let big_n = f1 + f2;
    let u_variance = f1 * f2 / 12.0 * ((big_n + 1.0) - ties / (big_n * (big_n - 1.0)));
    let pairs = f1 * f2;
    let z = if u_variance > 0.0 {
        (u - pairs / 2.0) / u_variance.sqrt()
    } else {
        0.0
    };
    Ok(Some(RankComparison {
        baseline_n: n1,
        candidate_n: n2,
        u,
        auc: u / pairs,
        auc_variance: u_variance.max(0.0) / (pairs * pairs),
        z,
        p_value: two_sided_p(z),
    }))
}

/// A 95% interval for `median(candidate) − median(baseline)`: each median gets a 97.5%
/// order-statistic interval widened to bucket edges, and the difference interval spans
/// their extremes, so it covers with at least 95% (Bonferroni; independent samples). A bound
/// in the +Inf bucket makes that side infinite.
#[must_use]
pub fn median_diff_interval(baseline: &Histogram, candidate: &Histogram) -> Option<(f64, f64)> {
    let z = Normal::standard().inverse_cdf(1.0 - 0.05 / 4.0);
    let (bl, bh) = baseline.median_interval(z)?;
    let (cl, ch) = candidate.median_interval(z)?;
    Some((cl - bh, ch - bl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(bounds: &[f64], counts: &[u64]) -> Histogram {
        let mut bounds = bounds.to_vec();
        bounds.push(f64::INFINITY);
        Histogram {
            bounds,
            counts: counts.to_vec(),
            sum: 0.0,
        }
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} is not within {tol} of {b}");
    }

    #[test]
    fn quantiles_interpolate_inside_buckets_like_prometheus() {
        // 10 samples in (0, 0.1], 30 in (0.1, 0.2], 60 in (0.2, 0.4]
        let h = hist(&[0.1, 0.2, 0.4], &[10, 30, 60, 0]);
        assert_eq!(h.total(), 100);
        close(h.quantile(0.05).unwrap(), 0.05, 1e-12); // rank 5 of 10 in the first bucket
        close(h.quantile(0.25).unwrap(), 0.15, 1e-12); // rank 25: 15 of 30 into (0.1, 0.2]
        close(h.quantile(0.5).unwrap(), 0.2 + 0.2 * 10.0 / 60.0, 1e-12);
        close(h.quantile(1.0).unwrap(), 0.4, 1e-12);
        assert_eq!(h.quantile(1.5), None);
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_is_the_highest_finite_bound() {
        let h = hist(&[0.1, 0.2], &[50, 0, 50]);
        close(h.quantile(0.5).unwrap(), 0.1, 1e-12);
        close(h.quantile(0.99).unwrap(), 0.2, 1e-12);
        // empty buckets before the first sample are skipped, so q = 0 is its bucket's start
        close(
            hist(&[0.1, 0.2], &[0, 4, 0]).quantile(0.0).unwrap(),
            0.1,
            1e-12,
        );
        assert_eq!(hist(&[0.1], &[0, 0]).quantile(0.5), None);
    }

    #[test]
    fn mean_is_sum_over_count() {
        let mut h = hist(&[0.1, 1.0], &[3, 1, 0]);
        h.sum = 0.6;
        close(h.mean().unwrap(), 0.15, 1e-12);
        assert_eq!(hist(&[0.1], &[0, 0]).mean(), None);
    }

    #[test]
    fn two_proportions_match_hand_computed_z_and_newcombe() {
        // 10/1000 vs 31/1000: pooled 0.0205, z = 0.021 / √(0.0205·0.9795·0.002)
        let t = compare_proportions(10, 1000, 31, 1000).unwrap();
        close(t.diff, 0.021, 1e-12);
        close(t.z, 3.313_791_245, 1e-8);
        close(t.p_value, 0.000_920_402, 1e-8);
        close(t.ci_low, 0.008_694_677, 1e-8);
        close(t.ci_high, 0.034_461_111, 1e-8);
        // Newcombe (1998), Table II: 56/70 vs 48/80, method 10 gives 0.0524 to 0.3339
        let t = compare_proportions(48, 80, 56, 70).unwrap();
        close(t.ci_low, 0.0524, 5e-5);
        close(t.ci_high, 0.3339, 5e-5);
        // no errors anywhere: nothing to test, p = 1, and the interval still has width
        let t = compare_proportions(0, 200, 0, 200).unwrap();
        assert_eq!((t.z, t.p_value), (0.0, 1.0));
        assert!(t.ci_low < 0.0 && t.ci_high > 0.0);
        assert_eq!(compare_proportions(0, 0, 1, 10), None);
    }

    #[test]
    fn mann_whitney_on_a_hand_computed_case() {
        // baseline {1, 1, 2}, candidate {2, 3, 3} as buckets 1..3:
        // U = 1·2 + ½·1·1 + 2·3 = 8.5; ties t = (2, 2, 2): Σ(t³−t) = 18;
        // var U = 9/12 · (7 − 18/30) = 4.8; z = (8.5 − 4.5)/√4.8
        let b = hist(&[1.0, 2.0, 3.0], &[2, 1, 0, 0]);
        let c = hist(&[1.0, 2.0, 3.0], &[0, 1, 2, 0]);
        let r = mann_whitney(&b, &c).unwrap().unwrap();
        close(r.u, 8.5, 1e-12);
        close(r.auc, 8.5 / 9.0, 1e-12);
        close(r.z, 1.825_741_858, 1e-8);
        close(r.p_value, 0.067_889_155, 1e-8);
        close(r.auc_variance, 4.8 / 81.0, 1e-12);
        // swapping the roles mirrors the statistic
        let back = mann_whitney(&c, &b).unwrap().unwrap();
        close(back.auc, 1.0 - r.auc, 1e-12);
        close(back.p_value, r.p_value, 1e-12);
    }

    #[test]
    fn mann_whitney_refuses_different_bounds_and_skips_empty_sides() {
        let b = hist(&[1.0, 2.0], &[1, 1, 0]);
        let err = mann_whitney(&b, &hist(&[1.0, 5.0], &[1, 1, 0])).unwrap_err();
        assert!(err.to_string().contains("different bucket bounds"), "{err}");
        assert_eq!(mann_whitney(&b, &hist(&[1.0, 2.0], &[0, 0, 0])), Ok(None));
        // everything in one bucket: no information, not an error
        let one = hist(&[1.0, 2.0], &[0, 5, 0]);
        assert_eq!(mann_whitney(&one, &one).unwrap().unwrap().p_value, 1.0);
    }

    #[test]
    fn median_difference_interval_spans_bucket_edges() {
        // baseline medians sit in (0.005, 0.01], candidate's in (0.025, 0.05]
        let b = hist(&[0.005, 0.01, 0.025, 0.05], &[0, 100, 0, 0, 0]);
        let c = hist(&[0.005, 0.01, 0.025, 0.05], &[0, 0, 0, 100, 0]);
        let (low, high) = median_diff_interval(&b, &c).unwrap();
        close(low, 0.025 - 0.01, 1e-12);
        close(high, 0.05 - 0.005, 1e-12);
        // a median that may lie in the +Inf bucket leaves that side unbounded
        let slow = hist(&[0.005], &[1, 99]);
        let (_, high) = median_diff_interval(&b, &slow).unwrap();
        assert_eq!(high, f64::INFINITY);
    }
}
