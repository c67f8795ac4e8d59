//! Report tests on simulated traffic: latencies drawn from a seeded PRNG into sluice's own
//! latency buckets, as a scrape would see them.

use super::text::p;
use super::*;
use crate::metrics::LATENCY_BUCKETS;

/// splitmix64: a seeded generator small enough to live in the test.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Log-normal with the given median and log-scale sigma (Box–Muller).
    fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

/// A variant's totals, built one simulated request at a time.
fn empty(name: &str) -> VariantTotals {
    let bounds: Vec<f64> = LATENCY_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .collect();
    let histogram = Histogram {
        counts: vec![0; bounds.len()],
        bounds,
        sum: 0.0,
    };
    VariantTotals {
        variant: name.to_owned(),
        duration: histogram.clone(),
        ttfb: histogram,
        ..VariantTotals::default()
    }
}

fn observe(v: &mut VariantTotals, seconds: f64, error: bool) {
    v.requests += 1;
    v.errors += u64::from(error);
    for h in [&mut v.duration, &mut v.ttfb] {
        let bucket = h.bounds.iter().position(|b| seconds <= *b).unwrap();
        h.counts[bucket] += 1;
        h.sum += seconds;
    }
}

/// Traffic shape of one simulated variant.
#[derive(Clone, Copy)]
struct Shape {
    median: f64,
    sigma: f64,
    error_rate: f64,
}

fn simulate(rng: &mut Rng, name: &str, shape: Shape, n: usize) -> VariantTotals {
    let mut v = empty(name);
    for _ in 0..n {
        let latency = rng.log_normal(shape.median, shape.sigma);
        observe(&mut v, latency, rng.uniform() < shape.error_rate);
    }
    v
}

const FAST: Shape = Shape {
    median: 0.005,
    sigma: 0.3,
    error_rate: 0.01,
};
const SLOW: Shape = Shape {
    median: 0.040,
    ..FAST
};

#[test]
fn a_candidate_at_40ms_is_slower_than_a_baseline_at_5ms() {
    let mut rng = Rng(7);
    let variants = [
        simulate(&mut rng, "control", FAST, 750),
        simulate(&mut rng, "candidate", SLOW, 750),
    ];
    let report = analyze("chat", &variants, "control").unwrap();
    let c = &report.comparisons[0];
    let l = c.latency.as_ref().unwrap();
    assert_eq!(c.verdict, Verdict::Slower, "{}", report.to_text());
    assert!(l.p_value < 0.01 && l.always_valid_p < 0.01, "{l:?}");
    assert!(l.auc > 0.95, "{l:?}");
    let p50 = l.p50_diff.unwrap();
    assert!((0.025..0.045).contains(&p50), "{p50}");
    let ci = l.p50_diff_ci95.unwrap();
    assert!(ci.low.unwrap() > 0.0 && ci.low.unwrap() <= p50 && p50 <= ci.high.unwrap());
    assert!(
        c.summary.starts_with("candidate is slower: p50 +") && c.summary.ends_with("p < 0.001"),
        "{}",
        c.summary
    );
    let text = report.to_text();
    assert!(
        text.contains(&format!("verdict     {}", c.summary)),
        "{text}"
    );
    println!("{text}");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

#[test]
fn more_errors_are_reported_in_points_with_both_p_values() {
    let mut rng = Rng(11);
    let mut control = simulate(&mut rng, "control", FAST, 1000);
    let mut candidate = simulate(&mut rng, "candidate", FAST, 1000);
    // 1.0% vs 3.1%: z = 3.31, so the fixed test says p < 0.001 and the always-valid one 0.025
    (control.errors, candidate.errors) = (10, 31);
    let report = analyze("chat", &[control, candidate], "control").unwrap();
    let c = &report.comparisons[0];
    let e = c.error_rate.as_ref().unwrap();
    assert_eq!(c.verdict, Verdict::MoreErrors, "{}", report.to_text());
    assert!(
        e.p_value < e.always_valid_p && e.always_valid_p < 0.05,
        "{e:?}"
    );
    assert_eq!(e.needed, None);
    assert!((e.always_valid_p - 0.025).abs() < 0.001, "{e:?}");
    assert_eq!(
        c.summary,
        "candidate has more errors: +2.1 points, p = 0.025"
    );
    let text = report.to_text();
    assert!(
        text.contains("error rate  +2.1 points (95% CI +0.9 to +3.4 points)   fixed p < 0.001   always-valid p = 0.025"),
        "{text}"
    );
}

#[test]
fn without_a_difference_the_report_says_how_many_more_requests_it_needs() {
    let mut rng = Rng(3);
    let variants = [
        simulate(&mut rng, "control", FAST, 300),
        simulate(&mut rng, "candidate", FAST, 300),
    ];
    let report = analyze("chat", &variants, "control").unwrap();
    let c = &report.comparisons[0];
    assert_eq!(c.verdict, Verdict::NoDifferenceYet);
    assert!(
        c.summary
            .starts_with("no significant difference yet: about "),
        "{}",
        c.summary
    );
    let needed = [
        &c.error_rate.as_ref().unwrap().needed,
        &c.latency.as_ref().unwrap().needed,
    ];
    println!("{}", report.to_text());
    let more = needed
        .iter()
        .filter_map(|n| n.as_ref())
        .map(|n| n.more_requests)
        .min()
        .unwrap();
    assert!(more > 0, "{needed:?}");
    // a 1-point difference over 1% errors takes thousands of requests, not tens
    let e = c.error_rate.as_ref().unwrap().needed.as_ref().unwrap();
    if e.basis == Basis::MinimumDetectableEffect {
        assert!(e.candidate_requests > 1000, "{e:?}");
    }
}

#[test]
fn a_a_tests_rarely_show_a_difference_however_often_they_are_read() {
    // An LLM-like latency (median 300 ms), 1% errors, identical for both variants.
    let shape = Shape {
        median: 0.3,
        sigma: 0.6,
        error_rate: 0.01,
    };
    let (mut sequential, mut naive, mut final_errors, mut final_latency) = (0, 0, 0, 0);
    for seed in 0..100 {
        let mut rng = Rng(1000 + seed);
        let (mut a, mut b) = (empty("a"), empty("b"));
        let (mut verdict_seen, mut fixed_seen) = (false, false);
        for peek in 1..=30 {
            for _ in 0..100 {
                for v in [&mut a, &mut b] {
                    let latency = rng.log_normal(shape.median, shape.sigma);
                    observe(v, latency, rng.uniform() < shape.error_rate);
                }
            }
            let report = analyze("chat", &[a.clone(), b.clone()], "a").unwrap();
            let c = &report.comparisons[0];
            let (e, l) = (c.error_rate.as_ref().unwrap(), c.latency.as_ref().unwrap());
            verdict_seen |= c.verdict != Verdict::NoDifferenceYet;
            fixed_seen |= e.p_value < ALPHA || l.p_value < ALPHA;
            if peek == 30 {
                final_errors += u32::from(e.p_value < ALPHA);
                final_latency += u32::from(l.p_value < ALPHA);
            }
        }
        sequential += u32::from(verdict_seen);
        naive += u32::from(fixed_seen);
    }
    println!(
        "A/A over 100 runs, 30 looks each: a verdict at any look {sequential}; \
         fixed p < 0.05 at any look {naive}; fixed p < 0.05 at the last look: \
         errors {final_errors}, latency {final_latency}"
    );
    assert!(
        sequential <= 10,
        "{sequential} of 100 A/A runs got a verdict"
    );
    assert!(final_errors <= 10, "{final_errors} of 100");
    assert!(final_latency <= 10, "{final_latency} of 100");
    // what the always-valid test protects against: reading fixed p-values at every look
    assert!(
        naive >= 20,
        "fixed p-values at every look flagged only {naive} of 100"
    );
}

#[test]
fn the_sequential_test_detects_real_differences() {
    let base = Shape {
        median: 0.3,
        sigma: 0.6,
        error_rate: 0.01,
    };
    let slower = Shape {
        median: 0.36,
        ..base
    };
    let erring = Shape {
        error_rate: 0.03,
        ..base
    };
    for (shape, verdict) in [(slower, Verdict::Slower), (erring, Verdict::MoreErrors)] {
        let mut detected = 0;
        for seed in 0..20 {
            let mut rng = Rng(5000 + seed);
            let variants = [
                simulate(&mut rng, "a", base, 3000),
                simulate(&mut rng, "b", shape, 3000),
            ];
            let report = analyze("chat", &variants, "a").unwrap();
            detected += u32::from(report.comparisons[0].verdict == verdict);
        }
        assert!(detected >= 18, "{verdict:?} detected in {detected} of 20");
    }
}

#[test]
fn summaries_carry_rates_tokens_and_cost_per_request() {
    let mut rng = Rng(1);
    let mut control = simulate(&mut rng, "control", FAST, 100);
    control.cache_hits = 25;
    control.cache_lookups = 100;
    control.prompt_tokens = 12_000;
    control.completion_tokens = 3_000;
    control.cost_usd = 0.06;
    let idle = empty("candidate");
    let report = analyze("chat", &[control, idle], "control").unwrap();
    let s = &report.variants[0];
    assert_eq!((s.requests, s.share), (100, 1.0));
    assert_eq!(s.cache_hit_rate, Some(0.25));
    assert_eq!(s.tokens_per_request, Some(150.0));
    assert_eq!(s.cost_per_request_usd, Some(0.0006));
    // a variant without traffic is listed but not compared
    assert_eq!(report.variants[1].error_rate, None);
    let c = &report.comparisons[0];
    assert_eq!(
        (c.verdict, c.summary.as_str()),
        (Verdict::NoTrafficYet, "no traffic yet")
    );
    assert!(c.error_rate.is_none() && c.latency.is_none());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["comparisons"][0]["verdict"], "no_traffic_yet");
    assert_eq!(json["variants"][0]["cache_hit_rate"], 0.25);
    assert!(json["variants"][0]["latency"]["p50"].as_f64().unwrap() > 0.0);
    assert!(json["variants"][1]["latency"]["p50"].is_null());
    // nothing counted is not "free": no usage, no pricing → null, "-" in the text
    let mut rng = Rng(1);
    let plain = [
        simulate(&mut rng, "a", FAST, 10),
        simulate(&mut rng, "b", FAST, 10),
    ];
    let report = analyze("chat", &plain, "a").unwrap();
    assert_eq!(report.variants[0].tokens_per_request, None);
    assert_eq!(report.variants[0].cost_per_request_usd, None);
}

#[test]
fn a_difference_that_would_have_shown_by_now_is_said_so() {
    // identical variants, 20,000 requests each: the observed differences are exactly 0
    let mut rng = Rng(4);
    let a = simulate(&mut rng, "a", FAST, 20_000);
    let b = VariantTotals {
        variant: "b".into(),
        ..a.clone()
    };
    let report = analyze("chat", &[a, b], "a").unwrap();
    let c = &report.comparisons[0];
    assert_eq!(c.verdict, Verdict::NoDifferenceYet);
    assert_eq!(
        c.summary,
        "no significant difference: a 1-point error-rate difference would likely have shown by now"
    );
    let e = c.error_rate.as_ref().unwrap().needed.as_ref().unwrap();
    assert_eq!(
        (e.basis, e.more_requests),
        (Basis::MinimumDetectableEffect, 0)
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let mut rng = Rng(2);
    let a = simulate(&mut rng, "a", FAST, 10);
    let b = simulate(&mut rng, "b", FAST, 10);
    let err = analyze("chat", &[a.clone(), b.clone()], "c").unwrap_err();
    assert_eq!(
        err.to_string(),
        "baseline \"c\" is not a variant of route \"chat\"; known variants: a, b"
    );
    let err = analyze("chat", &[], "a").unwrap_err();
    assert_eq!(
        err,
        ReportError::NoTraffic {
            route: "chat".into()
        }
    );
    let err = analyze("chat", &[empty("a"), empty("b")], "a").unwrap_err();
    assert!(err.to_string().contains("has no traffic"), "{err}");
    let err = analyze("chat", &[empty("a"), b.clone()], "a").unwrap_err();
    assert!(
        matches!(err, ReportError::BaselineWithoutTraffic { .. }),
        "{err}"
    );
    let mut odd = b;
    odd.duration.bounds[0] = 0.0001;
    let err = analyze("chat", &[a, odd], "a").unwrap_err();
    assert!(
        err.to_string().starts_with(
            "variant \"b\" of route \"chat\": latency histograms have different bucket bounds"
        ),
        "{err}"
    );
}

#[test]
fn a_shift_the_medians_do_not_show_is_told_by_the_rank_effect() {
    let errors = ErrorRateComparison {
        diff: 0.0,
        ci95: Interval {
            low: Some(-0.01),
            high: Some(0.01),
        },
        p_value: 1.0,
        always_valid_p: 1.0,
        significant: false,
        needed: None,
    };
    let latency = LatencyComparison {
        p50_diff: Some(-0.001),
        p95_diff: Some(0.2),
        p99_diff: Some(0.4),
        p50_diff_ci95: None,
        auc: 0.58,
        p_value: 0.0001,
        always_valid_p: 0.002,
        significant: true,
        needed: None,
    };
    let (verdict, sentence) = super::text::verdict("b", Some(&errors), Some(&latency));
    assert_eq!(verdict, Verdict::Slower);
    assert_eq!(sentence, "b is slower: P(slower) 0.58, p = 0.002");
}

#[test]
fn numbers_read_naturally() {
    assert_eq!(p(0.0004), "p < 0.001");
    assert_eq!(p(0.0031), "p = 0.003");
    assert_eq!(p(0.0252), "p = 0.025");
    assert_eq!(p(0.4249), "p = 0.42");
    assert_eq!(p(1.0), "p = 1");
    assert_eq!(super::text::about(2437), "2,400");
    assert_eq!(super::text::about(87), "87");
    assert_eq!(super::text::about(1_254_000), "1,300,000");
}
