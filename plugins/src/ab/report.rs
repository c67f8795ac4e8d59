//! `sluice ab-report`'s analysis: each variant's summary and each candidate compared with the
//! baseline on error rate and latency. Verdicts are decided on always-valid p-values (see
//! [`msprt`]) so a report read every hour does not cry wolf; fixed-horizon p-values are shown
//! beside them. [`Report`] is the `--json` output (seconds and ratios); [`Report::to_text`]
//! is the human one.

mod text;

use serde::Serialize;
use thiserror::Error;

use super::stats::{self, msprt, BoundsMismatch};
use super::{Histogram, VariantTotals};

/// Significance level of the verdicts, applied to the always-valid p-values.
pub const ALPHA: f64 = 0.05;
/// The error-rate difference quoted when the observed one is indistinguishable from noise.
pub const ERROR_RATE_MDE: f64 = 0.01;
/// The latency shift quoted likewise, as AUC − 0.5: candidate slower in 55% of request pairs.
pub const LATENCY_AUC_MDE: f64 = 0.05;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum ReportError {
    #[error("route {route:?} has no traffic in this window: no variant answered a request")]
    NoTraffic { route: String },
    #[error("baseline {baseline:?} is not a variant of route {route:?}; known variants: {known}")]
    UnknownBaseline {
        route: String,
        baseline: String,
        known: String,
    },
    #[error("baseline {baseline:?} of route {route:?} has no requests in this window, so there is nothing to compare against; wait for traffic or pick a baseline that has some")]
    BaselineWithoutTraffic { route: String, baseline: String },
    #[error("variant {variant:?} of route {route:?}: {source}")]
    Buckets {
        route: String,
        variant: String,
        source: BoundsMismatch,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub route: String,
    pub baseline: String,
    /// Significance level of the verdicts (always-valid p-values).
    pub alpha: f64,
    /// Requests over all variants.
    pub requests: u64,
    pub variants: Vec<VariantSummary>,
    /// One per variant other than the baseline, in input order.
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantSummary {
    pub variant: String,
    pub requests: u64,
    /// Of all the route's requests (0..1).
    pub share: f64,
    /// 5xx answers.
    pub errors: u64,
    pub error_rate: Option<f64>,
    /// Request start to last byte, seconds.
    pub latency: Quantiles,
    /// Upstream time to first byte, seconds.
    pub ttfb: Quantiles,
    /// Hits (and coalesced) of all cache lookups; null when the route does not cache.
    pub cache_hit_rate: Option<f64>,
    /// Token and cost figures are null when the variant counted none (no usage, no pricing).
    pub prompt_tokens_per_request: Option<f64>,
    pub completion_tokens_per_request: Option<f64>,
    pub tokens_per_request: Option<f64>,
    pub cost_per_request_usd: Option<f64>,
}

/// Histogram summary in seconds; null where the histogram is empty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub mean: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    MoreErrors,
    FewerErrors,
    Slower,
    Faster,
    NoDifferenceYet,
    NoTrafficYet,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub candidate: String,
    /// The error-rate finding if there is one (errors matter more), else the latency one.
    pub verdict: Verdict,
    /// The verdict in plain words, naming every significant finding.
    pub summary: String,
    /// Null when the candidate has no traffic yet.
    pub error_rate: Option<ErrorRateComparison>,
    /// Null when either side has no latency samples.
    pub latency: Option<LatencyComparison>,
}

/// A 95% interval; a null side is unbounded (a bucket reaching +Inf).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub low: Option<f64>,
    pub high: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorRateComparison {
    /// Candidate minus baseline error rate (0.021 = 2.1 points).
    pub diff: f64,
    /// Newcombe's hybrid score interval.
    pub ci95: Interval,
    /// Fixed-horizon pooled z test: valid only if read once.
    pub p_value: f64,
    /// mSPRT: valid however often the report is read. Decides `significant`.
    pub always_valid_p: f64,
    pub significant: bool,
    /// How much more traffic it may take; null once significant or when unknown.
    pub needed: Option<SampleEstimate>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyComparison {
    /// Candidate minus baseline quantiles, seconds (interpolated inside buckets).
    pub p50_diff: Option<f64>,
    pub p95_diff: Option<f64>,
    pub p99_diff: Option<f64>,
    /// Order-statistic interval for the p50 difference, at bucket resolution.
    pub p50_diff_ci95: Option<Interval>,
    /// P(candidate slower) + ½·P(tie) over request pairs; 0.5 = no shift.
    pub auc: f64,
    /// Fixed-horizon Mann–Whitney test.
    pub p_value: f64,
    /// mSPRT on AUC − 0.5. Decides `significant`.
    pub always_valid_p: f64,
    pub significant: bool,
    pub needed: Option<SampleEstimate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The difference seen so far, assumed to hold (used when |z| ≥ 1).
    ObservedEffect,
    /// The observed difference is within noise: a difference of the MDE is assumed instead.
    MinimumDetectableEffect,
}

/// Requests per variant at which the sequential test would cross [`ALPHA`], at this split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleEstimate {
    pub basis: Basis,
    /// The effect assumed, in the statistic's units (rate difference, or AUC − 0.5).
    pub effect: f64,
    pub baseline_requests: u64,
    pub candidate_requests: u64,
    /// Beyond what both variants have now; 0 when such an effect would already show.
    pub more_requests: u64,
}

/// Summarizes every variant and compares each one with `baseline`.
pub fn analyze(
    route: &str,
    variants: &[VariantTotals],
    baseline: &str,
) -> Result<Report, ReportError> {
    let requests: u64 = variants.iter().map(|v| v.requests).sum();
    if requests == 0 {
        return Err(ReportError::NoTraffic {
            route: route.to_owned(),
        });
    }
    let Some(base) = variants.iter().find(|v| v.variant == baseline) else {
        let known: Vec<&str> = variants.iter().map(|v| v.variant.as_str()).collect();
        return Err(ReportError::UnknownBaseline {
            route: route.to_owned(),
            baseline: baseline.to_owned(),
            known: known.join(", "),
        });
    };
    if base.requests == 0 {
        return Err(ReportError::BaselineWithoutTraffic {
            route: route.to_owned(),
            baseline: baseline.to_owned(),
        });
    }
    let comparisons = variants
        .iter()
        .filter(|v| v.variant != baseline)
        .map(|c| compare(base, c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(variant, source)| ReportError::Buckets {
            route: route.to_owned(),
            variant,
            source,
        })?;
    Ok(Report {
        route: route.to_owned(),
        baseline: baseline.to_owned(),
        alpha: ALPHA,
        requests,
        variants: variants.iter().map(|v| summarize(v, requests)).collect(),
        comparisons,
    })
}

fn ratio(part: f64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part / whole as f64)
}

fn quantiles(h: &Histogram) -> Quantiles {
    Quantiles {
        p50: h.quantile(0.5),
        p95: h.quantile(0.95),
        p99: h.quantile(0.99),
        mean: h.mean(),
    }
}

fn summarize(v: &VariantTotals, route_requests: u64) -> VariantSummary {
    let n = v.requests;
    let tokens = v.prompt_tokens + v.completion_tokens;
    // 0 means "not counted" (no usage reported, no pricing) far more often than "free".
    let counted = |x: f64, total: f64| if total > 0.0 { ratio(x, n) } else { None };
    VariantSummary {
        variant: v.variant.clone(),
        requests: n,
        share: n as f64 / route_requests as f64,
        errors: v.errors,
        error_rate: ratio(v.errors.min(n) as f64, n),
        latency: quantiles(&v.duration),
        ttfb: quantiles(&v.ttfb),
        cache_hit_rate: ratio(v.cache_hits as f64, v.cache_lookups),
        prompt_tokens_per_request: counted(v.prompt_tokens as f64, tokens as f64),
        completion_tokens_per_request: counted(v.completion_tokens as f64, tokens as f64),
        tokens_per_request: counted(tokens as f64, tokens as f64),
        cost_per_request_usd: counted(v.cost_usd, v.cost_usd),
    }
}

fn compare(
    base: &VariantTotals,
    cand: &VariantTotals,
) -> Result<Comparison, (String, BoundsMismatch)> {
    let error_rate = compare_errors(base, cand);
    let latency = compare_latency(base, cand).map_err(|e| (cand.variant.clone(), e))?;
    let (verdict, summary) = text::verdict(&cand.variant, error_rate.as_ref(), latency.as_ref());
    Ok(Comparison {
        candidate: cand.variant.clone(),
        verdict,
        summary,
        error_rate,
        latency,
    })
}

/// Picks the basis of the "more requests" estimate: the observed effect unless it is within
/// one standard error of 0, where projecting it forward would be projecting noise.
fn estimate(
    z: f64,
    observed: (f64, f64),
    mde: (f64, f64),
    base_n: u64,
    cand_n: u64,
) -> Option<SampleEstimate> {
    let (basis, (effect, sigma2)) = if z.abs() >= 1.0 {
        (Basis::ObservedEffect, observed)
    } else {
        (Basis::MinimumDetectableEffect, mde)
    };
    let (b, c) = msprt::requests_to_significance(effect, sigma2, base_n, cand_n, ALPHA)?;
    Some(SampleEstimate {
        basis,
        effect,
        baseline_requests: b,
        candidate_requests: c,
        more_requests: b.saturating_sub(base_n) + c.saturating_sub(cand_n),
    })
}

fn compare_errors(base: &VariantTotals, cand: &VariantTotals) -> Option<ErrorRateComparison> {
    let (bn, cn) = (base.requests, cand.requests);
    let t = stats::compare_proportions(base.errors, bn, cand.errors, cn)?;
    let n_eff = msprt::effective_n(bn, cn);
    let always_valid_p = msprt::always_valid_p(t.diff, t.variance, n_eff);
    let significant = always_valid_p < ALPHA;
    // Under the MDE both rates sit around the pooled one, at least MDE/2 apart from 0.
    let mde_rate = t.pooled_rate.max(ERROR_RATE_MDE / 2.0);
    let needed = (!significant)
        .then(|| {
            estimate(
                t.z,
                (t.diff, t.pooled_rate * (1.0 - t.pooled_rate)),
                (ERROR_RATE_MDE, mde_rate * (1.0 - mde_rate)),
                bn,
                cn,
            )
        })
        .flatten();
    Some(ErrorRateComparison {
        diff: t.diff,
        ci95: Interval {
            low: Some(t.ci_low),
            high: Some(t.ci_high),
        },
        p_value: t.p_value,
        always_valid_p,
        significant,
        needed,
    })
}

fn compare_latency(
    base: &VariantTotals,
    cand: &VariantTotals,
) -> Result<Option<LatencyComparison>, BoundsMismatch> {
    let (b, c) = (&base.duration, &cand.duration);
    let Some(r) = stats::mann_whitney(b, c)? else {
        return Ok(None);
    };
    let n_eff = msprt::effective_n(r.baseline_n, r.candidate_n);
    let effect = r.auc - 0.5;
    let always_valid_p = msprt::always_valid_p(effect, r.auc_variance, n_eff);
    let significant = always_valid_p < ALPHA;
    let sigma2 = r.auc_variance * n_eff;
    let needed = (!significant)
        .then(|| {
            estimate(
                r.z,
                (effect, sigma2),
                (LATENCY_AUC_MDE, sigma2),
                r.baseline_n,
                r.candidate_n,
            )
        })
        .flatten();
    let diff = |q: f64| Some(c.quantile(q)? - b.quantile(q)?);
    let finite = |x: f64| x.is_finite().then_some(x);
    Ok(Some(LatencyComparison {
        p50_diff: diff(0.5),
        p95_diff: diff(0.95),
        p99_diff: diff(0.99),
        p50_diff_ci95: stats::median_diff_interval(b, c).map(|(low, high)| Interval {
            low: finite(low),
            high: finite(high),
        }),
        auc: r.auc,
        p_value: r.p_value,
        always_valid_p,
        significant,
        needed,
    }))
}

#[cfg(test)]
mod tests;
