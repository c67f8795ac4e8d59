//! The exposition parser and per-variant totals, on literal `/metrics` text.

use super::*;

/// Two variants of `chat` (candidate listed first, control configured first) and a route
/// without a split, as sluice prints them.
const SCRAPE: &str = r#"# HELP sluice_requests_total Requests answered, by route, upstream, variant and status code
# TYPE sluice_requests_total counter
sluice_requests_total{code="200",route="chat",upstream="cand-up",variant="candidate"} 90
sluice_requests_total{code="502",route="chat",upstream="",variant="candidate"} 4
sluice_requests_total{code="503",route="chat",upstream="cand-up",variant="candidate"} 6
sluice_requests_total{code="200",route="chat",upstream="control-up",variant="control"} 50
sluice_requests_total{code="429",route="chat",upstream="",variant="control"} 3
sluice_requests_total{code="200",route="plain",upstream="up",variant=""} 7
# TYPE sluice_request_duration_seconds histogram
sluice_request_duration_seconds_bucket{route="chat",variant="candidate",le="0.01"} 10
sluice_request_duration_seconds_bucket{route="chat",variant="candidate",le="0.05"} 60
sluice_request_duration_seconds_bucket{route="chat",variant="candidate",le="+Inf"} 100
sluice_request_duration_seconds_sum{route="chat",variant="candidate"} 4.5
sluice_request_duration_seconds_count{route="chat",variant="candidate"} 100
sluice_request_duration_seconds_bucket{route="chat",variant="control",le="0.01"} 40
sluice_request_duration_seconds_bucket{route="chat",variant="control",le="0.05"} 52
sluice_request_duration_seconds_bucket{route="chat",variant="control",le="+Inf"} 53
sluice_request_duration_seconds_sum{route="chat",variant="control"} 0.75
sluice_request_duration_seconds_count{route="chat",variant="control"} 53
sluice_upstream_ttfb_seconds_bucket{route="chat",upstream="a",variant="candidate",le="0.05"} 30
sluice_upstream_ttfb_seconds_bucket{route="chat",upstream="a",variant="candidate",le="+Inf"} 40
sluice_upstream_ttfb_seconds_bucket{route="chat",upstream="b",variant="candidate",le="0.05"} 20
sluice_upstream_ttfb_seconds_bucket{route="chat",upstream="b",variant="candidate",le="+Inf"} 56
sluice_upstream_ttfb_seconds_sum{route="chat",upstream="a",variant="candidate"} 1.5
sluice_upstream_ttfb_seconds_sum{route="chat",upstream="b",variant="candidate"} 2
sluice_cache_requests_total{result="hit",route="chat",tier="memory",variant="control"} 5
sluice_cache_requests_total{result="coalesced",route="chat",tier="",variant="control"} 2
sluice_cache_requests_total{result="miss",route="chat",tier="",variant="control"} 46
sluice_tokens_total{kind="prompt",route="chat",variant="candidate"} 1200
sluice_tokens_total{kind="completion",route="chat",variant="candidate"} 800
sluice_cost_usd_total{route="chat",variant="candidate"} 0.0125
# HELP sluice_split_weight A variant's configured weight; position 0 is the first (the baseline)
# TYPE sluice_split_weight gauge
sluice_split_weight{position="1",route="chat",variant="candidate"} 20
sluice_split_weight{position="0",route="chat",variant="control"} 80
"#;

fn chat(text: &str) -> Result<RouteTotals, ExpositionError> {
    totals("chat", &parse(text).unwrap())
}

#[test]
fn parses_names_escaped_labels_special_values_and_timestamps() {
    let text = "# HELP x a \"help\"\n# TYPE x counter\nup 1\n\
        x{a=\"q\\\"uote\",b=\"back\\\\slash\",c=\"new\\nline\",} -Inf 1700000000000\n\
        y{le=\"+Inf\"} +Inf\nz { a = \"1\" , b=\"{,}\" } NaN\nw 1.5e-3\n";
    let s = parse(text).unwrap().samples;
    assert_eq!(s.len(), 5);
    assert_eq!((s[0].name.as_str(), s[0].value), ("up", 1.0));
    assert!(s[0].labels.is_empty());
    assert_eq!(s[1].label("a"), Some("q\"uote"));
    assert_eq!(s[1].label("b"), Some("back\\slash"));
    assert_eq!(s[1].label("c"), Some("new\nline"));
    assert_eq!(s[1].value, f64::NEG_INFINITY);
    assert_eq!(
        (s[2].label("le"), s[2].value),
        (Some("+Inf"), f64::INFINITY)
    );
    assert_eq!(s[3].label("b"), Some("{,}"));
    assert!(s[3].value.is_nan());
    assert_eq!(s[4].value, 0.0015);
}

#[test]
fn a_bad_line_is_named_by_its_number() {
    for (text, says) in [
        (
            "ok 1\nbad{a=\"1\" 2\n",
            "line 2: expected `,` or `}` after label `a`",
        ),
        ("x{a=\"open} 1\n", "line 1: label `a`: unterminated value"),
        ("x{a=1} 1\n", "line 1: label `a`: value must be quoted"),
        ("<html>\n", "line 1: expected a metric name at `<html>`"),
        ("x one\n", "line 1: invalid value `one`"),
        ("x\n", "line 1: missing value"),
        ("x 1 2 3\n", "line 1: unexpected `3` after the value"),
    ] {
        assert_eq!(parse(text).unwrap_err().to_string(), says, "{text}");
    }
}

#[test]
fn samples_are_found_by_name_and_any_subset_of_their_labels() {
    let scrape = parse(SCRAPE).unwrap();
    assert_eq!(scrape.sum("sluice_requests_total", &[]), 160.0);
    let candidate = [("variant", "candidate"), ("route", "chat")];
    assert_eq!(scrape.sum("sluice_requests_total", &candidate), 100.0);
    let ok = [
        ("code", "200"),
        ("route", "plain"),
        ("upstream", "up"),
        ("variant", ""),
    ];
    let found: Vec<f64> = scrape
        .matching("sluice_requests_total", &ok)
        .map(|s| s.value)
        .collect();
    assert_eq!(found, [7.0]);
    assert_eq!(scrape.sum("sluice_requests_total", &[("code", "404")]), 0.0);
    assert_eq!(scrape.sum("sluice_requests", &[]), 0.0, "a name is whole");
}

#[test]
fn totals_per_variant_in_configured_order() {
    let t = chat(SCRAPE).unwrap();
    assert_eq!(
        (t.baseline.as_str(), t.baseline_configured),
        ("control", true)
    );
    let names: Vec<&str> = t.variants.iter().map(|v| v.variant.as_str()).collect();
    assert_eq!(names, ["control", "candidate"]);
    let (control, cand) = (&t.variants[0], &t.variants[1]);
    assert_eq!((control.requests, control.errors), (53, 0));
    assert_eq!((cand.requests, cand.errors), (100, 10));
    assert_eq!(cand.duration.bounds, [0.01, 0.05, f64::INFINITY]);
    assert_eq!(cand.duration.counts, [10, 50, 40]);
    assert_eq!(cand.duration.sum, 4.5);
    assert_eq!(control.duration.counts, [40, 12, 1]);
    // TTFB adds up both upstreams' buckets.
    assert_eq!(cand.ttfb.bounds, [0.05, f64::INFINITY]);
    assert_eq!(
        (cand.ttfb.counts.clone(), cand.ttfb.sum),
        (vec![50, 46], 3.5)
    );
    assert_eq!((control.cache_hits, control.cache_lookups), (7, 53));
    assert_eq!((cand.cache_hits, cand.cache_lookups), (0, 0));
    assert_eq!((cand.prompt_tokens, cand.completion_tokens), (1200, 800));
    assert_eq!((cand.cost_usd, control.cost_usd), (0.0125, 0.0));
}

#[test]
fn without_weights_the_baseline_is_the_first_name() {
    let text: String = SCRAPE
        .lines()
        .filter(|l| !l.contains("split_weight"))
        .collect::<Vec<_>>()
        .join("\n");
    let t = chat(&text).unwrap();
    assert_eq!(
        (t.baseline.as_str(), t.baseline_configured),
        ("candidate", false)
    );
    assert_eq!(t.variants[0].variant, "candidate");
}

#[test]
fn unknown_route_no_split_and_no_traffic_are_errors() {
    let scrape = parse(SCRAPE).unwrap();
    assert_eq!(
        totals("chta", &scrape).unwrap_err().to_string(),
        "unknown route `chta`; routes in the metrics: chat, plain"
    );
    assert_eq!(
        totals("x", &Scrape::default()).unwrap_err().to_string(),
        "unknown route `x`; routes in the metrics: none"
    );
    assert_eq!(
        totals("plain", &scrape).unwrap_err(),
        ExpositionError::NoSplit("plain".into())
    );
    // Just configured: weights and empty histograms, no request counted yet.
    let idle = "sluice_split_weight{position=\"0\",route=\"chat\",variant=\"a\"} 1\n\
        sluice_request_duration_seconds_bucket{route=\"chat\",variant=\"a\",le=\"+Inf\"} 0\n";
    assert_eq!(
        chat(idle).unwrap_err(),
        ExpositionError::NoTraffic("chat".into())
    );
}

#[test]
fn a_window_is_the_difference_of_two_scrapes() {
    let earlier = parse(SCRAPE).unwrap();
    let later = parse(
        &SCRAPE
            .replace("variant=\"control\"} 50", "variant=\"control\"} 80")
            .replace(
                "variant=\"control\",le=\"0.01\"} 40",
                "variant=\"control\",le=\"0.01\"} 65",
            )
            .replace(
                "variant=\"control\",le=\"0.05\"} 52",
                "variant=\"control\",le=\"0.05\"} 82",
            )
            .replace(
                "variant=\"control\",le=\"+Inf\"} 53",
                "variant=\"control\",le=\"+Inf\"} 83",
            )
            .replace("variant=\"control\"} 0.75", "variant=\"control\"} 1.0"),
    )
    .unwrap();
    let t = totals_between("chat", &earlier, &later).unwrap();
    let (control, cand) = (&t.variants[0], &t.variants[1]);
    assert_eq!((control.requests, cand.requests), (30, 0));
    assert_eq!(
        (control.duration.counts.clone(), control.duration.sum),
        (vec![25, 5, 0], 0.25)
    );
    assert_eq!((control.cache_lookups, cand.prompt_tokens), (0, 0));
    assert_eq!(t.baseline, "control");
    assert_eq!(
        totals_between("chat", &earlier, &earlier).unwrap_err(),
        ExpositionError::NoTraffic("chat".into())
    );
}

#[test]
fn a_counter_that_went_down_or_vanished_means_a_restart() {
    let earlier = parse(SCRAPE).unwrap();
    let down = parse(&SCRAPE.replace("variant=\"control\"} 50", "variant=\"control\"} 2")).unwrap();
    assert_eq!(
        totals_between("chat", &earlier, &down)
            .unwrap_err()
            .to_string(),
        "sluice restarted between the two scrapes: sluice_requests_total{code=\"200\",\
         route=\"chat\",upstream=\"control-up\",variant=\"control\"} went down from 50 to 2"
    );
    let gone: String = SCRAPE
        .lines()
        .filter(|l| !l.contains("tokens_total{kind=\"prompt\""))
        .collect::<Vec<_>>()
        .join("\n");
    let err = totals_between("chat", &earlier, &parse(&gone).unwrap()).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "sluice_tokens_total{kind=\"prompt\",route=\"chat\",variant=\"candidate\"} is gone"
        ),
        "{err}"
    );
    // A weight a reload changed is a gauge, not a restart.
    let reweighted =
        parse(&SCRAPE.replace("variant=\"control\"} 80", "variant=\"control\"} 70")).unwrap();
    assert!(totals_between("chat", &earlier, &reweighted)
        .is_err_and(|e| e == ExpositionError::NoTraffic("chat".into())));
}

#[test]
fn a_variant_without_a_weight_was_removed_and_is_left_out() {
    let text = format!(
        "{SCRAPE}sluice_requests_total{{code=\"200\",route=\"chat\",upstream=\"x\",variant=\"old\"}} 9\n"
    );
    let t = chat(&text).unwrap();
    let names: Vec<&str> = t.variants.iter().map(|v| v.variant.as_str()).collect();
    assert_eq!(names, ["control", "candidate"]);
}
