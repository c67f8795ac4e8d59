use super::*;
use crate::ab::exposition::{difference, is_cumulative, parse};

/// A histogram's lines: `counts` per bucket (not cumulative) under `bounds` (+Inf added).
fn histogram(family: &str, labels: &str, bounds: &[f64], counts: &[u64], sum: f64) -> String {
    let mut out = String::new();
    let mut cumulative = 0;
    for (i, count) in counts.iter().enumerate() {
        cumulative += count;
        let le = bounds.get(i).map_or("+Inf".to_string(), f64::to_string);
        out += &format!("{family}_bucket{{{labels},le=\"{le}\"}} {cumulative}\n");
    }
    out += &format!("{family}_sum{{{labels}}} {sum}\n{family}_count{{{labels}}} {cumulative}\n");
    out
}

fn report(text: &str) -> Report {
    analyze(&parse(text).unwrap(), Some(10.0))
}

fn kinds(r: &Report) -> Vec<(Kind, Severity)> {
    r.findings.iter().map(|f| (f.kind, f.severity)).collect()
}

fn only(r: &Report, kind: Kind) -> &Finding {
    let found: Vec<&Finding> = r.findings.iter().filter(|f| f.kind == kind).collect();
    assert_eq!(found.len(), 1, "{:#?}", r.findings);
    found[0]
}

/// Upstream `up` with endpoints a and b: tries and latency estimates.
fn endpoints(a: (u64, f64), b: (u64, f64)) -> String {
    let mut out = String::new();
    for (name, (tries, ewma)) in [("a", a), ("b", b)] {
        out += &format!(
            "sluice_upstream_requests_total{{upstream=\"up\",endpoint=\"{name}\"}} {tries}\n\
             sluice_upstream_ewma_seconds{{upstream=\"up\",endpoint=\"{name}\"}} {ewma}\n\
             sluice_upstream_healthy{{upstream=\"up\",endpoint=\"{name}\"}} 1\n\
             sluice_upstream_ejections_total{{upstream=\"up\",endpoint=\"{name}\"}} 0\n"
        );
    }
    out
}

#[test]
fn a_route_is_summed_over_its_series() {
    let text = String::from(
        "sluice_requests_total{route=\"chat\",upstream=\"up\",variant=\"\",code=\"200\"} 95\n\
         sluice_requests_total{route=\"chat\",upstream=\"up\",variant=\"\",code=\"502\"} 5\n\
         sluice_cache_requests_total{route=\"chat\",variant=\"\",result=\"hit\",tier=\"memory\"} 30\n\
         sluice_cache_requests_total{route=\"chat\",variant=\"\",result=\"miss\",tier=\"\"} 70\n\
         sluice_cache_saved_seconds_total{route=\"chat\"} 6.5\n\
         sluice_cache_saved_tokens_total{route=\"chat\"} 1200\n",
    ) + &histogram(
        "sluice_request_duration_seconds",
        "route=\"chat\",variant=\"\"",
        &[0.1, 1.0],
        &[50, 50, 0],
        40.0,
    ) + &histogram("sluice_gateway_seconds", "route=\"chat\"", &[0.001, 0.01], &[90, 10, 0], 4.0)
        + &histogram(
            "sluice_gateway_phase_seconds",
            "route=\"chat\",phase=\"queue_wait\"",
            &[0.001],
            &[100, 0],
            2.0,
        );
    let r = report(&text);
    let chat = &r.routes[0];
    assert_eq!(chat.route, "chat");
    assert_eq!((chat.requests, chat.errors_5xx), (100, 5));
    assert_eq!(chat.rps, Some(10.0));
    assert!((chat.p50_s.unwrap() - 0.1).abs() < 1e-9);
    assert!((chat.p99_s.unwrap() - 0.982).abs() < 1e-9);
    assert!((chat.gateway_share.unwrap() - 0.1).abs() < 1e-9);
    assert!((chat.upstream_share.unwrap() - 0.9).abs() < 1e-9);
    assert!((chat.queue_share.unwrap() - 0.05).abs() < 1e-9);
    assert!((chat.gateway_p99_s.unwrap() - 0.0091).abs() < 1e-9);
    assert_eq!(chat.cache_hit_rate, Some(0.3));
    assert_eq!((chat.cache_saved_s, chat.cache_saved_tokens), (6.5, 1200));
    assert_eq!(chat.rate_limited, 0);
}

#[test]
fn without_the_gateway_families_the_shares_are_unknown() {
    let text = String::from(
        "sluice_requests_total{route=\"chat\",upstream=\"up\",variant=\"\",code=\"200\"} 10\n",
    ) + &histogram(
        "sluice_request_duration_seconds",
        "route=\"chat\",variant=\"\"",
        &[0.1],
        &[10, 0],
        0.5,
    );
    let r = analyze(&parse(&text).unwrap(), None);
    let chat = &r.routes[0];
    assert_eq!((chat.upstream_share, chat.gateway_share), (None, None));
    assert_eq!((chat.queue_share, chat.gateway_p99_s), (None, None));
    assert_eq!((chat.rps, chat.cache_hit_rate), (None, None));
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
}

#[test]
fn an_endpoint_150ms_slower_than_its_peer_is_slow() {
    let r = report(&endpoints((200, 0.004), (20, 0.154)));
    let f = only(&r, Kind::SlowEndpoint);
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(
        (f.upstream.as_deref(), f.endpoint.as_deref()),
        (Some("up"), Some("b"))
    );
    assert_eq!(f.route, None);
    assert!(f.message.contains("150 ms slower"), "{}", f.message);
    // Far slower: critical.
    let r = report(&endpoints((200, 0.2), (20, 2.5)));
    assert_eq!(only(&r, Kind::SlowEndpoint).severity, Severity::Critical);
}

#[test]
fn noise_and_idle_endpoints_are_not_slow() {
    for (a, b) in [
        ((200, 0.004), (20, 0.06)), // 56 ms apart
        ((200, 2.0), (200, 2.15)),  // 150 ms on 2 s: noise
        ((200, 0.004), (4, 0.154)), // too few tries to trust the estimate
    ] {
        let r = report(&endpoints(a, b));
        assert!(r.findings.is_empty(), "{a:?} {b:?}: {:#?}", r.findings);
    }
}

#[test]
fn failing_tries_are_upstream_errors_once_there_are_enough() {
    let errors = |n: u64| {
        format!("sluice_upstream_errors_total{{upstream=\"up\",endpoint=\"a\",kind=\"status_5xx\"}} {n}\n")
    };
    let r = report(&(endpoints((100, 0.01), (100, 0.01)) + &errors(5)));
    let f = only(&r, Kind::UpstreamErrors);
    assert_eq!(
        (f.severity, f.endpoint.as_deref()),
        (Severity::Warning, Some("a"))
    );
    let r = report(&(endpoints((100, 0.01), (100, 0.01)) + &errors(15)));
    assert_eq!(only(&r, Kind::UpstreamErrors).severity, Severity::Critical);
    // 5 of 10: too few tries to judge.
    let r = report(&(endpoints((10, 0.01), (100, 0.01)) + &errors(5)));
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    // A route answering 5xx.
    let r = report(
        "sluice_requests_total{route=\"chat\",upstream=\"up\",variant=\"\",code=\"200\"} 90\n\
         sluice_requests_total{route=\"chat\",upstream=\"up\",variant=\"\",code=\"503\"} 10\n",
    );
    let f = only(&r, Kind::UpstreamErrors);
    assert_eq!(
        (f.route.as_deref(), f.severity),
        (Some("chat"), Severity::Critical)
    );
}

fn cache(hits: u64, misses: u64, bypasses: u64) -> String {
    format!(
        "sluice_requests_total{{route=\"c\",upstream=\"up\",variant=\"\",code=\"200\"}} {}\n\
         sluice_cache_requests_total{{route=\"c\",variant=\"\",result=\"hit\",tier=\"memory\"}} {hits}\n\
         sluice_cache_requests_total{{route=\"c\",variant=\"\",result=\"miss\",tier=\"\"}} {misses}\n\
         sluice_cache_requests_total{{route=\"c\",variant=\"\",result=\"bypass\",tier=\"\"}} {bypasses}\n",
        hits + misses + bypasses
    )
}

#[test]
fn a_low_hit_rate_says_why() {
    let r = report(&cache(0, 50, 0));
    let f = only(&r, Kind::LowCacheHitRate);
    assert_eq!(
        (f.route.as_deref(), f.severity),
        (Some("c"), Severity::Warning)
    );
    assert!(
        f.message.contains("every lookup was a miss"),
        "{}",
        f.message
    );
    let f = report(&cache(1, 10, 40)).findings.remove(0);
    assert!(
        f.message.contains("40 of the 51 lookups bypassed"),
        "{}",
        f.message
    );
    let evicting = cache(2, 48, 0) + "sluice_cache_evictions_total{tier=\"memory\"} 30\n";
    let f = report(&evicting).findings.remove(0);
    assert!(f.message.contains("evicted 30"), "{}", f.message);
    // A good hit rate, and too few lookups to judge.
    for text in [cache(40, 10, 0), cache(0, 10, 0)] {
        assert!(report(&text).findings.is_empty());
    }
}

fn limited(requests: u64, limited: u64) -> String {
    format!(
        "sluice_requests_total{{route=\"r\",upstream=\"\",variant=\"\",code=\"429\"}} {limited}\n\
         sluice_requests_total{{route=\"r\",upstream=\"up\",variant=\"\",code=\"200\"}} {}\n\
         sluice_ratelimit_decisions_total{{route=\"r\",limit=\"per-key\",result=\"limited\"}} {limited}\n\
         sluice_ratelimit_decisions_total{{route=\"r\",limit=\"per-key\",result=\"allowed\"}} {}\n\
         sluice_rejections_total{{route=\"r\",reason=\"rate_limit\"}} {limited}\n\
         sluice_rejections_total{{route=\"r\",reason=\"queue_full\"}} 0\n",
        requests - limited,
        requests - limited
    )
}

#[test]
fn refused_requests_are_rate_limited_by_their_limit() {
    let r = report(&limited(100, 30));
    let f = only(&r, Kind::RateLimited);
    assert_eq!(
        (f.route.as_deref(), f.severity),
        (Some("r"), Severity::Critical)
    );
    assert!(
        f.message.contains("30 of 100") && f.message.contains("per-key (30)"),
        "{}",
        f.message
    );
    assert_eq!(r.routes[0].rate_limited, 30);
    assert_eq!(
        report(&limited(100, 5)).findings[0].severity,
        Severity::Warning
    );
    // One 429 in a few requests is worth knowing, not a warning.
    assert_eq!(report(&limited(5, 1)).findings[0].severity, Severity::Info);
    assert!(report(&limited(100, 0)).findings.is_empty());
}

#[test]
fn long_queue_waits_and_queue_rejections_are_queueing() {
    let waits = |p: &[u64]| {
        histogram(
            "sluice_queue_wait_seconds",
            "upstream=\"up\"",
            &[0.01, 0.5],
            p,
            1.0,
        )
    };
    let r = report(&waits(&[20, 10, 0]));
    let f = only(&r, Kind::Queueing);
    assert_eq!(
        (f.upstream.as_deref(), f.severity),
        (Some("up"), Severity::Warning)
    );
    assert!(report(&waits(&[30, 0, 0])).findings.is_empty());
    assert!(
        report(&waits(&[5, 5, 0])).findings.is_empty(),
        "too few to judge"
    );
    let full = "sluice_requests_total{route=\"r\",upstream=\"\",variant=\"\",code=\"503\"} 5\n\
                sluice_requests_total{route=\"r\",upstream=\"up\",variant=\"\",code=\"200\"} 45\n\
                sluice_rejections_total{route=\"r\",reason=\"queue_full\"} 5\n";
    let r = report(full);
    // The queue's 503s are not upstream errors too.
    assert_eq!(kinds(&r), [(Kind::Queueing, Severity::Warning)]);
    assert_eq!(only(&r, Kind::Queueing).route.as_deref(), Some("r"));
}

fn gateway(counts: &[u64], gateway_sum: f64, duration_sum: f64) -> String {
    String::from(
        "sluice_requests_total{route=\"g\",upstream=\"up\",variant=\"\",code=\"200\"} 100\n",
    ) + &histogram(
        "sluice_request_duration_seconds",
        "route=\"g\",variant=\"\"",
        &[1.0],
        &[100, 0],
        duration_sum,
    ) + &histogram(
        "sluice_gateway_seconds",
        "route=\"g\"",
        &[0.005, 0.25],
        counts,
        gateway_sum,
    )
}

#[test]
fn a_slow_or_heavy_gateway_is_overhead() {
    let slow_tail = gateway(&[90, 10, 0], 2.0, 20.0);
    let f = only(&report(&slow_tail), Kind::GatewayOverhead).clone();
    assert_eq!(f.route.as_deref(), Some("g"));
    // Mean 20 ms of 30 ms in sluice.
    let heavy = gateway(&[0, 100, 0], 2.0, 3.0);
    assert_eq!(
        kinds(&report(&heavy)),
        [(Kind::GatewayOverhead, Severity::Warning)]
    );
    // Most of a fast request's time, but only 2 ms of it: fine.
    assert!(report(&gateway(&[100, 0, 0], 0.2, 0.3)).findings.is_empty());
}

#[test]
fn ejections_are_reported_and_critical_while_the_endpoint_is_out() {
    let ejected =
        endpoints((100, 0.01), (100, 0.01)).replace("endpoint=\"b\"} 0", "endpoint=\"b\"} 2");
    let f = only(&report(&ejected), Kind::Ejections).clone();
    assert_eq!(
        (f.endpoint.as_deref(), f.severity),
        (Some("b"), Severity::Warning)
    );
    let out = ejected.replace(
        "sluice_upstream_healthy{upstream=\"up\",endpoint=\"b\"} 1",
        "sluice_upstream_healthy{upstream=\"up\",endpoint=\"b\"} 0",
    );
    assert_eq!(
        only(&report(&out), Kind::Ejections).severity,
        Severity::Critical
    );
}

#[test]
fn findings_come_most_severe_first_and_print_with_what_to_do() {
    let r = report(
        &(limited(100, 5) + &cache(0, 50, 0) + &limited(100, 30).replace("\"r\"", "\"r2\"")),
    );
    let severities: Vec<Severity> = r.findings.iter().map(|f| f.severity).collect();
    assert_eq!(
        severities,
        [Severity::Critical, Severity::Warning, Severity::Warning]
    );
    let text = r.to_text();
    assert!(
        text.contains("critical rate_limited: 30 of 100 requests on route r2"),
        "{text}"
    );
    assert!(text.contains("what to do:"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["findings"][0]["kind"], "rate_limited");
    assert_eq!(json["findings"][0]["endpoint"], serde_json::Value::Null);
}

#[test]
fn a_window_is_the_difference_of_two_scrapes() {
    let earlier = parse(&limited(100, 10)).unwrap();
    let later = parse(
        &(limited(300, 40) + "sluice_upstream_ewma_seconds{upstream=\"up\",endpoint=\"a\"} 0.2\n"),
    )
    .unwrap();
    let window = difference(&earlier, &later, is_cumulative).unwrap();
    let r = analyze(&window, Some(2.0));
    assert_eq!((r.routes[0].requests, r.routes[0].rate_limited), (200, 30));
    assert_eq!(r.routes[0].rps, Some(100.0));
    assert_eq!(
        r.upstreams[0].endpoints[0].ewma_s,
        Some(0.2),
        "gauges as last scraped"
    );
    let restarted = difference(&later, &earlier, is_cumulative).unwrap_err();
    assert!(restarted.to_string().contains("restarted"), "{restarted}");
}
