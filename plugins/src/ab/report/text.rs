//! The report in words: verdict sentences and the text table `sluice ab-report` prints.

use std::fmt;

use super::{
    Basis, Comparison, ErrorRateComparison, Interval, LatencyComparison, Quantiles, Report,
    SampleEstimate, VariantSummary, Verdict, ERROR_RATE_MDE, LATENCY_AUC_MDE,
};

impl Report {
    /// The human-readable report.
    #[must_use]
    pub fn to_text(&self) -> String {
        self.to_string()
    }
}

/// The verdict and its sentence; error-rate findings come first because errors matter more.
pub(super) fn verdict(
    candidate: &str,
    errors: Option<&ErrorRateComparison>,
    latency: Option<&LatencyComparison>,
) -> (Verdict, String) {
    let Some(errors) = errors else {
        return (Verdict::NoTrafficYet, "no traffic yet".to_owned());
    };
    let mut findings = Vec::new();
    if errors.significant {
        let (verdict, words) = if errors.diff > 0.0 {
            (Verdict::MoreErrors, "has more errors")
        } else {
            (Verdict::FewerErrors, "has fewer errors")
        };
        let detail = format!("{}, {}", points(errors.diff), p(errors.always_valid_p));
        findings.push((verdict, words, detail));
    }
    if let Some(l) = latency.filter(|l| l.significant) {
        let (verdict, words) = if l.auc > 0.5 {
            (Verdict::Slower, "is slower")
        } else {
            (Verdict::Faster, "is faster")
        };
        // A shift the medians do not show (it sits in the tails) is told by the rank effect.
        let shift = match l.p50_diff {
            Some(d) if d != 0.0 && (d > 0.0) == (l.auc > 0.5) => format!("p50 {}", signed_secs(d)),
            _ => format!("P(slower) {:.2}", l.auc),
        };
        findings.push((verdict, words, format!("{shift}, {}", p(l.always_valid_p))));
    }
    let Some((verdict, ..)) = findings.first() else {
        let estimates = [
            errors.needed.as_ref(),
            latency.and_then(|l| l.needed.as_ref()),
        ];
        return (Verdict::NoDifferenceYet, not_yet(estimates));
    };
    let clauses: Vec<String> = findings
        .iter()
        .map(|(_, words, detail)| format!("{words}: {detail}"))
        .collect();
    (*verdict, format!("{candidate} {}", clauses.join("; and ")))
}

/// "No difference yet", with the estimate built on an observed effect when there is one
/// (the nearer of them), else on the minimum detectable effects.
fn not_yet(estimates: [Option<&SampleEstimate>; 2]) -> String {
    let what = |i: usize, basis| match (i, basis) {
        (0, Basis::ObservedEffect) => "the error-rate difference seen so far".to_owned(),
        (_, Basis::ObservedEffect) => "the latency difference seen so far".to_owned(),
        (0, _) => format!(
            "a {:.0}-point error-rate difference",
            ERROR_RATE_MDE * 100.0
        ),
        _ => format!("a latency shift of P(slower) {:.2}", 0.5 + LATENCY_AUC_MDE),
    };
    let pick = |basis| {
        (0..2)
            .filter_map(|i| estimates[i].filter(|e| e.basis == basis).map(|e| (i, e)))
            .min_by_key(|(_, e)| e.more_requests)
    };
    match pick(Basis::ObservedEffect).or_else(|| pick(Basis::MinimumDetectableEffect)) {
        Some((i, e)) if e.basis == Basis::ObservedEffect => format!(
            "no significant difference yet: about {} more requests needed if {} holds",
            about(e.more_requests),
            what(i, e.basis)
        ),
        Some((i, e)) if e.more_requests == 0 => format!(
            "no significant difference: {} would likely have shown by now",
            what(i, e.basis)
        ),
        Some((i, e)) => format!(
            "no significant difference yet: about {} more requests needed to detect {}",
            about(e.more_requests),
            what(i, e.basis)
        ),
        None => "no significant difference yet".to_owned(),
    }
}

/// "p < 0.001" below 0.001, three decimals below 0.1 ("p = 0.025"), else two.
pub(super) fn p(value: f64) -> String {
    if value < 0.001 {
        "p < 0.001".to_owned()
    } else if value >= 0.995 {
        "p = 1".to_owned()
    } else if value < 0.1 {
        format!("p = {value:.3}")
    } else {
        format!("p = {value:.2}")
    }
}

fn points(diff: f64) -> String {
    format!("{:+.1} points", diff * 100.0)
}

/// Seconds as "1.25 s", "36 ms", "4.9 ms" or "0.36 ms", chosen on the rounded value.
fn secs(s: f64) -> String {
    let ms = s * 1000.0;
    if ms >= 999.5 {
        format!("{s:.2} s")
    } else if ms >= 9.95 {
        format!("{ms:.0} ms")
    } else if ms >= 0.995 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn signed_secs(d: f64) -> String {
    let sign = if d < 0.0 { '-' } else { '+' };
    format!("{sign}{}", secs(d.abs()))
}

/// Rounded to two significant digits from 100 up ("about 2,400").
pub(super) fn about(n: u64) -> String {
    let mut scale = 1;
    while n / scale >= 100 {
        scale *= 10;
    }
    thousands((n + scale / 2) / scale * scale)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn or_dash<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), show)
}

fn cost(usd: f64) -> String {
    if usd >= 1.0 {
        format!("${usd:.2}")
    } else if usd >= 0.01 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.6}")
    }
}

fn interval(i: Interval, show: impl Fn(f64) -> String) -> String {
    let side = |x: Option<f64>, inf: &str| x.map_or_else(|| inf.to_owned(), &show);
    format!("95% CI {} to {}", side(i.low, "-inf"), side(i.high, "+inf"))
}

// === impl Display ===

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "route {}, baseline {}: {} requests; verdicts at alpha {} on always-valid p-values",
            self.route,
            self.baseline,
            thousands(self.requests),
            self.alpha
        )?;
        let width = self
            .variants
            .iter()
            .map(|v| v.variant.len())
            .chain(["variant".len()])
            .max()
            .unwrap_or_default();
        writeln!(
            f,
            "\n{:<width$}  {:>8}  {:>6}  {:>7}  {:>8}  {:>8}  {:>8}  {:>9}  {:>9}  {:>10}  {:>9}",
            "variant",
            "requests",
            "share",
            "errors",
            "p50",
            "p95",
            "p99",
            "ttfb p50",
            "cache hit",
            "tokens/req",
            "cost/req"
        )?;
        for v in &self.variants {
            write_variant(f, v, width)?;
        }
        for c in &self.comparisons {
            write_comparison(f, c, &self.baseline)?;
        }
        Ok(())
    }
}

fn write_variant(f: &mut fmt::Formatter<'_>, v: &VariantSummary, width: usize) -> fmt::Result {
    let pct = |r: f64| format!("{:.1}%", r * 100.0);
    let Quantiles { p50, p95, p99, .. } = v.latency;
    let tokens = |t: f64| {
        if t >= 100.0 {
            format!("{t:.0}")
        } else {
            format!("{t:.1}")
        }
    };
    writeln!(
        f,
        "{:<width$}  {:>8}  {:>6}  {:>7}  {:>8}  {:>8}  {:>8}  {:>9}  {:>9}  {:>10}  {:>9}",
        v.variant,
        v.requests,
        pct(v.share),
        or_dash(v.error_rate, |r| format!("{:.2}%", r * 100.0)),
        or_dash(p50, secs),
        or_dash(p95, secs),
        or_dash(p99, secs),
        or_dash(v.ttfb.p50, secs),
        or_dash(v.cache_hit_rate, pct),
        or_dash(v.tokens_per_request, tokens),
        or_dash(v.cost_per_request_usd, cost),
    )
}

fn write_comparison(f: &mut fmt::Formatter<'_>, c: &Comparison, baseline: &str) -> fmt::Result {
    writeln!(f, "\n{} vs {}", c.candidate, baseline)?;
    writeln!(f, "  verdict     {}", c.summary)?;
    if let Some(e) = &c.error_rate {
        writeln!(
            f,
            "  error rate  {} ({} points)   fixed {}   always-valid {}",
            points(e.diff),
            interval(e.ci95, |x| format!("{:+.1}", x * 100.0)),
            p(e.p_value),
            p(e.always_valid_p)
        )?;
    }
    if let Some(l) = &c.latency {
        let ci = l
            .p50_diff_ci95
            .map(|i| format!(" ({})", interval(i, signed_secs)))
            .unwrap_or_default();
        writeln!(
            f,
            "  latency     p50 {}{ci}, p95 {}, p99 {}, P(slower) {:.2}",
            or_dash(l.p50_diff, signed_secs),
            or_dash(l.p95_diff, signed_secs),
            or_dash(l.p99_diff, signed_secs),
            l.auc
        )?;
        writeln!(
            f,
            "              fixed {}   always-valid {}",
            p(l.p_value),
            p(l.always_valid_p)
        )?;
    }
    Ok(())
}
