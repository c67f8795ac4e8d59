use super::*;
use crate::ab::exposition::parse;

fn scrape(text: &str) -> Scrape {
    parse(text).unwrap()
}

/// `n` requests of 10 ms (bucket 0.01) and `slow` of 1 s on route `chat`, 2 of them 5xx, 1
/// a 429; gateway time 0.5 ms each; cache hits `hits` of `n`.
fn metrics(n: u32, slow: u32, hits: u32) -> Scrape {
    let total = n + slow;
    let (e, l) = if total == 0 { (0, 0) } else { (2, 1) };
    scrape(&format!(
        r#"sluice_requests_total{{code="200",route="chat",upstream="u",variant=""}} {ok}
sluice_requests_total{{code="502",route="chat",upstream="",variant=""}} {e}
sluice_requests_total{{code="429",route="chat",upstream="",variant=""}} {l}
sluice_request_duration_seconds_bucket{{route="chat",variant="",le="0.01"}} {n}
sluice_request_duration_seconds_bucket{{route="chat",variant="",le="1"}} {total}
sluice_request_duration_seconds_bucket{{route="chat",variant="",le="+Inf"}} {total}
sluice_request_duration_seconds_count{{route="chat",variant=""}} {total}
sluice_gateway_seconds_bucket{{route="chat",le="0.0005"}} {total}
sluice_gateway_seconds_bucket{{route="chat",le="+Inf"}} {total}
sluice_cache_requests_total{{result="hit",route="chat",tier="memory",variant=""}} {hits}
sluice_cache_requests_total{{result="miss",route="chat",tier="",variant=""}} {miss}
sluice_upstream_healthy{{endpoint="http://a:1",upstream="u"}} 1
sluice_upstream_healthy{{endpoint="http://b:1",upstream="u"}} 0
sluice_upstream_ewma_seconds{{endpoint="http://a:1",upstream="u"}} 0.25
sluice_upstream_inflight{{endpoint="http://a:1",upstream="u"}} 3
"#,
        ok = total - e - l,
        miss = n - hits,
    ))
}

#[test]
fn a_window_gives_rates_shares_and_percentiles_of_what_happened_in_it() {
    let old = metrics(0, 0, 0);
    let new = metrics(98, 2, 49);
    let stats = between(&old, &new, 4.0);
    assert_eq!(stats.routes.len(), 1);
    let r = &stats.routes[0];
    assert_eq!(r.route, "chat");
    assert_eq!(r.requests, 100.0);
    assert_eq!(r.rps, 25.0);
    assert_eq!(r.error_rate, Some(0.02));
    assert_eq!(r.rate_limited, 0.25);
    assert_eq!(r.cache_hit_rate, Some(0.5));
    let p50 = r.p50_s.unwrap();
    assert!(p50 > 0.0 && p50 <= 0.01, "{p50}");
    let p99 = r.p99_s.unwrap();
    assert!(p99 > 0.01 && p99 <= 1.0, "{p99}");
    assert!(r.gateway_p99_s.unwrap() <= 0.0005);
    assert_eq!(stats.endpoints.len(), 2);
    let a = &stats.endpoints[0];
    assert_eq!((a.healthy, a.ewma_s, a.inflight), (true, 0.25, 3.0));
    assert!(!stats.endpoints[1].healthy);
}

#[test]
fn no_traffic_in_the_window_has_no_percentiles_and_zero_rates() {
    let same = metrics(10, 0, 0);
    let r = &between(&same, &same, 5.0).routes[0];
    assert_eq!((r.requests, r.rps, r.rate_limited), (0.0, 0.0, 0.0));
    assert_eq!((r.p50_s, r.p99_s, r.error_rate), (None, None, None));
}

#[test]
fn variant_shares_come_from_answers_and_weights() {
    let text = |a: u32, b: u32| {
        scrape(&format!(
            r#"sluice_requests_total{{code="200",route="ab",upstream="u",variant="x"}} {a}
sluice_requests_total{{code="200",route="ab",upstream="u",variant="y"}} {b}
sluice_request_duration_seconds_count{{route="ab",variant="x"}} {a}
sluice_split_weight{{position="0",route="ab",variant="x"}} 3
sluice_split_weight{{position="1",route="ab",variant="y"}} 1
"#
        ))
    };
    let stats = between(&text(0, 0), &text(30, 10), 1.0);
    let x = stats.variants.iter().find(|v| v.variant == "x").unwrap();
    assert_eq!((x.share, x.weight_share), (Some(0.75), Some(0.75)));
}

#[test]
fn history_keeps_a_window_and_a_point_per_sample() {
    let mut h = History::default();
    assert!(h.wants_sample(0.0));
    let first = h.add(0.0, metrics(0, 0, 0));
    assert_eq!(first.window_s, 0.0);
    assert!(!h.wants_sample(0.2));
    let s = h.add(1.0, metrics(10, 0, 0));
    assert_eq!(s.routes[0].rps, 10.0);
    let s = h.add(2.0, metrics(30, 0, 0));
    // Over both seconds: 30 requests.
    assert_eq!(s.routes[0].rps, 15.0);
    assert_eq!(s.routes[0].rps_history, vec![0.0, 10.0, 15.0]);
    // Samples older than the window go.
    let s = h.add(10.0, metrics(30, 0, 0));
    assert_eq!(s.window_s, 8.0);
    // The window reaches back to the newest sample at least its length old (here the one at 2 s).
    let s = h.add(11.0, metrics(40, 0, 0));
    assert_eq!((s.window_s, s.routes[0].requests), (9.0, 10.0));
    let s = h.add(16.0, metrics(40, 0, 0));
    assert_eq!((s.window_s, s.routes[0].requests), (5.0, 0.0));
    assert_eq!(h.latest().routes[0].rps_history.len(), 6);
}

#[test]
fn counters_that_went_down_count_nothing_rather_than_guess() {
    let stats = between(&metrics(50, 0, 0), &metrics(10, 0, 0), 1.0);
    assert_eq!((stats.routes[0].requests, stats.routes[0].rps), (0.0, 0.0));
}

#[test]
fn coalesced_requests_count_as_hits() {
    let text = |hits: u32, coalesced: u32, misses: u32| {
        scrape(&format!(
            r#"sluice_request_duration_seconds_count{{route="c",variant=""}} 0
sluice_cache_requests_total{{result="hit",route="c",tier="memory",variant=""}} {hits}
sluice_cache_requests_total{{result="coalesced",route="c",tier="",variant=""}} {coalesced}
sluice_cache_requests_total{{result="miss",route="c",tier="",variant=""}} {misses}
"#
        ))
    };
    let stats = between(&text(0, 0, 0), &text(1, 2, 1), 1.0);
    assert_eq!(stats.routes[0].cache_hit_rate, Some(0.75));
}
