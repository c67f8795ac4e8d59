//! Failing endpoints, end to end: an endpoint killed under load is retried around, ejected,
//! marked unhealthy and readmitted once back; a dead upstream is served by its fallback (and,
//! with health checks, no longer even tried); a 5 MiB prompt survives a retry and a fallback
//! intact; a stream cut mid-way is counted and logged; a failing `/health` takes an endpoint
//! out; a reload starts and stops probes.

mod resilience_support;

use futures_util::StreamExt;
use resilience_support::*;
use sluice_e2e::{
    chat_body, config, free_port, metric_value, scrape, sha256, Gateway, Mock, UpstreamCalls,
    PATIENCE,
};
use std::time::{Duration, Instant};

const HEALTH: &str = "    health: { interval: 200ms, timeout: 150ms }\n";

/// `sluice_upstream_healthy` of one endpoint: 1 when in the balancer, 0 when not, -1 unknown.
fn healthy(text: &str, upstream: &str, endpoint: &str) -> f64 {
    let labels = [("upstream", upstream), ("endpoint", endpoint)];
    let scrape = scrape(text);
    let found = scrape.matching("sluice_upstream_healthy", &labels).next();
    found.map_or(-1.0, |s| s.value)
}

#[tokio::test]
async fn a_killed_endpoint_costs_no_client_errors_and_is_readmitted_when_back() {
    let slow5 = ["--latency-ms", "5"];
    let (a, b) = (Mock::start("a", &slow5), Mock::start("b", &slow5));
    let c_port = free_port();
    let mut c = Mock::start_on("c", c_port, &slow5);
    let extra = format!(
        "    retry: {{ attempts: 2, on: [connect, 502, 503] }}\n    outlier: {{ consecutive_failures: 2, base_ejection: 1s }}\n{HEALTH}"
    );
    let eps = [ep(&a.url), ep(&b.url), ep(&c.url)];
    let gw = Gateway::start(&gateway_yaml(
        &[upstream("up", &eps, &extra)],
        &route("all", "up"),
    ));
    let load = Load::start(&gw, 8);
    let deadline = Instant::now() + PATIENCE;
    while served_by(&load.samples(), &c.url) < 20 {
        assert!(Instant::now() < deadline, "c never served 20 requests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let killed = Instant::now();
    c.stop();
    let (m, out_after) = metrics_until(&gw, |m| healthy(m, "up", &c.url) == 0.0).await;
    assert_eq!(
        healthy(&m, "up", &c.url),
        0.0,
        "the killed endpoint is still in the balancer after {out_after:?}"
    );
    // Let the health checks settle its verdict, then see that it is left alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = gw.metrics().await;
    let errors_out = ep_metric(&m, "sluice_upstream_errors_total", "up", &c.url);
    let ejections = ep_metric(&m, "sluice_upstream_ejections_total", "up", &c.url);
    let retries = ep_metric(&m, "sluice_upstream_retries_total", "up", &c.url);
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let m = gw.metrics().await;
    let errors_later = ep_metric(&m, "sluice_upstream_errors_total", "up", &c.url);
    let out_window = load.since(quiet_from);
    let quiet = out_window.len();

    let c = Mock::start_on("c-again", c_port, &slow5);
    let restarted = Instant::now();
    let (m, back_after) = metrics_until(&gw, |m| healthy(m, "up", &c.url) == 1.0).await;
    assert_eq!(
        healthy(&m, "up", &c.url),
        1.0,
        "not readmitted {back_after:?} after the restart"
    );
    let deadline = Instant::now() + PATIENCE;
    while served_by(&load.since(restarted), &c.url) < 20 {
        assert!(
            Instant::now() < deadline,
            "c gets no traffic after readmission"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let traffic_after = restarted.elapsed();
    let since_kill = killed.elapsed();
    let samples = load.finish().await;
    let failed = failures(&samples, usize::MAX);
    eprintln!(
        "killed 1 of 3 under 8 clients: {} requests, {} failed; served a {} b {} c {}; \
         c out of the balancer {out_after:?} after the kill (ejections {ejections}, failed tries \
         at c {errors_out}, retried {retries}); over the next {} requests its failed tries went \
         {errors_out} -> {errors_later} (split a {} b {}); restarted: healthy again after {back_after:?}, 20 \
         requests served by it {traffic_after:?} after the restart ({:?} after the kill)",
        samples.len(),
        failed.len(),
        served_by(&samples, &a.url),
        served_by(&samples, &b.url),
        served_by(&samples, &c.url),
        quiet,
        served_by(&out_window, &a.url),
        served_by(&out_window, &b.url),
        since_kill,
    );
    assert!(
        failed.is_empty(),
        "client errors: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        errors_out >= 1.0,
        "the kill was noticed: {errors_out} failed tries at c"
    );
    assert_eq!(
        errors_later, errors_out,
        "an unhealthy endpoint is not tried ({quiet} requests meanwhile)"
    );
    assert!(quiet > 0, "the load kept running while c was out");
    let (to_a, to_b) = (
        served_by(&out_window, &a.url) as f64,
        served_by(&out_window, &b.url) as f64,
    );
    assert!(
        (0.35..=0.65).contains(&(to_a / (to_a + to_b))),
        "c's share spreads over a and b, not onto one neighbour: a {to_a} b {to_b}"
    );
}

/// A route to `up` (dead endpoints, `up_extra`) falling back to `spare`.
fn fallback_gateway(dead: &[String], up_extra: &str, spare: &Mock) -> Gateway {
    let eps: Vec<String> = dead.iter().map(|u| ep(u)).collect();
    Gateway::start(&gateway_yaml(
        &[
            upstream("up", &eps, up_extra),
            upstream("spare", &[ep(&spare.url)], ""),
        ],
        "  - name: all\n    match: { path_prefix: /v1 }\n    upstream: up\n    fallback: [spare]\n",
    ))
}

/// `n` requests, GETs and POSTs in turn: each must be the fallback's 200.
async fn all_from_spare(gw: &Gateway, n: usize) {
    let c = client();
    for i in 0..n {
        let resp = if i % 2 == 0 {
            c.get(format!("{}/v1/models", gw.url)).send().await
        } else {
            c.post(format!("{}/v1/chat/completions", gw.url))
                .body(chat_body("m", 1000, false))
                .send()
                .await
        }
        .expect("answer");
        let h = |name: &str| header(&resp, name);
        assert_eq!(resp.status(), 200, "request {i}: {}", gw.log_text());
        assert_eq!(h("x-sluice-fallback"), "spare", "request {i}");
        assert_eq!(h("x-mock-instance"), "spare", "request {i}");
    }
}

#[tokio::test]
async fn a_dead_upstream_is_served_by_its_fallback() {
    let spare = Mock::start("spare", &[]);
    let dead = [dead_url(), dead_url()];
    let gw = fallback_gateway(&dead, "", &spare);
    all_from_spare(&gw, 10).await;
    let m = gw
        .metrics_until(|m| metric_sum_up(m, "sluice_upstream_requests_total", &dead) >= 10.0)
        .await;
    let tries = metric_sum_up(&m, "sluice_upstream_requests_total", &dead);
    let connect = metric_sum_up(&m, "sluice_upstream_errors_total", &dead);
    eprintln!("no health: 10 requests, all from the fallback; {tries} tries at the dead primary, {connect} connect errors");
    assert_eq!(
        tries, 10.0,
        "without health checks every request tries the primary once"
    );
    assert_eq!(connect, 10.0);
}

/// The sum of per-endpoint metric `name` over upstream `up`'s `endpoints`.
fn metric_sum_up(text: &str, name: &str, endpoints: &[String]) -> f64 {
    endpoints
        .iter()
        .map(|e| ep_metric(text, name, "up", e))
        .sum()
}

#[tokio::test]
async fn a_dead_upstream_marked_unhealthy_is_not_even_tried() {
    let spare = Mock::start("spare", &[]);
    let dead = [dead_url(), dead_url()];
    let gw = fallback_gateway(&dead, HEALTH, &spare);
    all_from_spare(&gw, 4).await;
    let (m, after) = metrics_until(&gw, |m| dead.iter().all(|e| healthy(m, "up", e) == 0.0)).await;
    assert!(
        dead.iter().all(|e| healthy(&m, "up", e) == 0.0),
        "the probes never marked the primary down ({after:?})"
    );
    let before = metric_sum_up(&m, "sluice_upstream_requests_total", &dead);
    all_from_spare(&gw, 20).await;
    let m = gw.metrics().await;
    let spare_tries = ep_metric(&m, "sluice_upstream_requests_total", "spare", &spare.url);
    let later = metric_sum_up(&m, "sluice_upstream_requests_total", &dead);
    eprintln!(
        "with health: primary marked down {after:?} after the first 4 requests; its tries {before} -> {later} over 20 more requests (the fallback served {spare_tries} in all)"
    );
    assert_eq!(later, before, "an unhealthy primary is not tried");
    assert_eq!(spare_tries, 24.0);
}

#[tokio::test]
async fn a_5_mib_prompt_survives_a_retry_and_a_fallback_intact() {
    let (live, spare) = (Mock::start("live", &[]), Mock::start("spare", &[]));
    let (dead1, dead2, dead3) = (dead_url(), dead_url(), dead_url());
    let retry = "    balance: round_robin\n    retry: { attempts: 1, on: [connect] }\n";
    let upstreams = [
        upstream("up", &[ep(&dead1), ep(&live.url)], retry),
        upstream("up_fb", &[ep(&dead2), ep(&live.url)], retry),
        upstream("gone", &[ep(&dead3)], ""),
        upstream("spare", &[ep(&spare.url)], ""),
    ];
    let on = |header: &str, name: &str, up: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: /v1, headers: {{ x-route: {header} }} }}\n    upstream: {up}\n    fallback: [spare]\n")
    };
    let routes = [
        on("fb", "retry-then-fallback", "up_fb"),
        on("gone", "fallback-only", "gone"),
        route("plain", "up"),
    ]
    .concat();
    let gw = Gateway::start(&gateway_yaml(&upstreams, &routes));
    let c = client();
    let mut took = Vec::new();
    for (which, want_instance, want_fallback) in [
        ("plain", "live", ""),
        ("fb", "live", ""),
        ("gone", "spare", "spare"),
    ] {
        let body = chat_body(&format!("m-{which}"), 5 * 1024 * 1024, false);
        let want_sha = sha256(&body);
        for i in 0..3 {
            let started = Instant::now();
            let resp = c
                .post(format!("{}/v1/chat/completions", gw.url))
                .header("x-route", which)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .expect("answer");
            let h = |name: &str| header(&resp, name);
            let what = format!(
                "{which} #{i} ({} bytes, {:?})",
                body.len(),
                started.elapsed()
            );
            assert_eq!(resp.status(), 200, "{what}: {}", gw.log_text());
            assert_eq!(h("x-mock-instance"), want_instance, "{what}");
            assert_eq!(h("x-sluice-fallback"), want_fallback, "{what}");
            assert_eq!(h("x-mock-body-sha256"), want_sha, "{what}: body changed");
            assert_eq!(h("x-mock-body-bytes"), body.len().to_string(), "{what}");
            took.push(started.elapsed().as_millis());
        }
    }
    let m = gw.metrics().await;
    let connect = |up: &str, e: &str| {
        sluice_e2e::metric_sum(
            &m,
            "sluice_upstream_errors_total",
            &[("upstream", up), ("endpoint", e), ("kind", "connect")],
        )
    };
    let (plain, fb, gone) = (
        connect("up", &dead1),
        connect("up_fb", &dead2),
        connect("gone", &dead3),
    );
    eprintln!(
        "3 × 5 MiB per route, all 200 with the sent SHA-256 (ms each: {took:?}); connect failures first: plain {plain}, retry+fallback route {fb}, fallback-only {gone}"
    );
    assert!(
        plain >= 1.0 && fb >= 1.0,
        "some prompts hit the dead endpoint first: {plain}, {fb}"
    );
    assert_eq!(gone, 3.0);
}

#[tokio::test]
async fn a_stream_cut_mid_way_is_counted_and_logged() {
    let mock = Mock::start("abort", &["--token-delay-ms", "20"]);
    let gw = Gateway::start(&config(&[&mock.url], "", &route("chat", "up")));
    let resp = client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .header("x-mock-abort-after", "3")
        .body(chat_body("mock-gpt-4o", 64, true))
        .send()
        .await
        .expect("response head");
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
    }
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("event: error") && !body.contains("[DONE]"),
        "{body}"
    );

    let aborted = |m: &str| {
        sluice_e2e::metric_sum(
            m,
            "sluice_upstream_errors_total",
            &[
                ("upstream", "up"),
                ("endpoint", &mock.url),
                ("kind", "aborted"),
            ],
        )
    };
    let m = gw.metrics_until(|m| aborted(m) >= 1.0).await;
    let log = gw.log_until(|l| {
        l.lines()
            .any(|x| x.contains("access") && x.contains("failed mid-response"))
    });
    let line = log
        .lines()
        .find(|x| x.contains("access") && x.contains("failed mid-response"))
        .unwrap_or_else(|| panic!("no access line with the error:\n{log}"));
    eprintln!(
        "aborted after 3 chunks: sluice_upstream_errors_total{{kind=aborted}} {}, other kinds {}; access line: {line}",
        aborted(&m),
        ep_metric(&m, "sluice_upstream_errors_total", "up", &mock.url) - aborted(&m)
    );
    assert_eq!(aborted(&m), 1.0);
    assert_eq!(
        ep_metric(&m, "sluice_upstream_errors_total", "up", &mock.url),
        1.0
    );
    assert!(
        line.contains("error=") && line.contains("status=200"),
        "{line}"
    );
}

#[tokio::test]
async fn an_endpoint_failing_its_health_check_is_taken_out_though_its_api_works() {
    let sick = Mock::start("sick", &["--health-status", "503"]);
    let well = Mock::start("well", &[]);
    let direct = client()
        .post(format!("{}/v1/chat/completions", sick.url))
        .body(chat_body("m", 10, false))
        .send()
        .await
        .expect("answer");
    assert_eq!(direct.status(), 200, "its chat answers work");
    let health = "    health: { interval: 200ms, timeout: 150ms, unhealthy_after: 2 }\n";
    let gw = Gateway::start(&config(
        &[&sick.url, &well.url],
        health,
        &route("all", "up"),
    ));
    let (m, after) = metrics_until(&gw, |m| healthy(m, "up", &sick.url) == 0.0).await;
    assert_eq!(
        healthy(&m, "up", &sick.url),
        0.0,
        "still in after {after:?}"
    );
    assert_eq!(healthy(&m, "up", &well.url), 1.0);
    let c = client();
    let mut instances = Vec::new();
    for _ in 0..30 {
        let resp = gw.chat(&c, chat_body("m", 10, false)).await;
        assert_eq!(resp.status(), 200);
        instances.push(
            resp.headers()["x-mock-instance"]
                .to_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    let from_well = instances.iter().filter(|i| *i == "well").count();
    eprintln!("/health 503: out of the balancer {after:?} after start; then {from_well} of 30 chats from the healthy endpoint");
    assert_eq!(from_well, 30, "{instances:?}");
}

#[tokio::test]
async fn a_reload_starts_and_stops_probes() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let (mut calls_a, mut calls_b) = (UpstreamCalls::of(&a), UpstreamCalls::of(&b));
    let routes = route("all", "up");
    let gw = Gateway::start(&config(&[&a.url, &b.url], "", &routes));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let unprobed = (calls_a.calls().await, calls_b.calls().await);
    assert_eq!(unprobed, (0, 0), "no probes without health:");

    let reloaded = Instant::now();
    gw.write_config(&config(&[&a.url, &b.url], HEALTH, &routes));
    let deadline = Instant::now() + PATIENCE;
    while calls_a.calls().await < 2 || calls_b.calls().await < 2 {
        assert!(
            Instant::now() < deadline,
            "no probes after the reload:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probing_after = reloaded.elapsed();

    gw.write_config(&config(&[&a.url], HEALTH, &routes));
    let ok = "sluice_config_reloads_total{result=\"ok\"}";
    let m = gw.metrics_when(ok, 2.0).await;
    assert_eq!(
        metric_value(&m, ok),
        2.0,
        "second reload not applied:\n{}",
        gw.log_text()
    );
    // A probe already under way may still land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a0, b0) = (calls_a.calls().await, calls_b.calls().await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (a1, b1) = (calls_a.calls().await, calls_b.calls().await);
    eprintln!(
        "reload adding health: both probed (2 each) {probing_after:?} after the write; after removing b: over 1 s a {a0} -> {a1}, b {b0} -> {b1}"
    );
    assert_eq!(b1, b0, "the removed endpoint is still probed");
    assert!(
        a1 >= a0 + 3,
        "the kept endpoint is still probed every 200 ms: {a0} -> {a1}"
    );
}

#[tokio::test]
async fn a_dead_endpoint_reads_unhealthy_without_health_checks() {
    // No `health:` and no `outlier:`: only the failed requests can tell.
    let live = Mock::start("live", &[]);
    let dead = dead_url();
    let gw = Gateway::start(&gateway_yaml(
        &[upstream("up", &[ep(&dead), ep(&live.url)], "")],
        &route("all", "up"),
    ));
    let m = gw.metrics().await;
    assert_eq!(
        healthy(&m, "up", &dead),
        1.0,
        "endpoints start healthy:\n{m}"
    );
    let client = client();
    let mut failed = 0;
    for _ in 0..20 {
        let resp = client
            .get(format!("{}/v1/models", gw.url))
            .send()
            .await
            .unwrap();
        failed += usize::from(resp.status() == 502);
    }
    // Round robin: every other request went to the dead endpoint.
    assert!(failed >= 5, "only {failed} requests failed");
    let m = gw.metrics().await;
    assert_eq!(healthy(&m, "up", &dead), 0.0, "{m}");
    assert_eq!(healthy(&m, "up", &live.url), 1.0, "{m}");
}
