//! Balancing across endpoints: smooth weighted round robin keeps the ratio and interleaves;
//! `peak_ewma` and `least_outstanding` steer away from a slow endpoint and back once it is
//! fast again; h2c multiplexes concurrent requests over one connection unless
//! `pool.max_h2_streams` says otherwise.

mod resilience_support;

use futures_util::future::join_all;
use resilience_support::*;
use sluice_e2e::{free_port, Gateway, Mock};
use std::time::{Duration, Instant};

/// The longest run of consecutive `true` (or `false`) in `picks`.
fn longest_run(picks: &[bool], value: bool) -> usize {
    let (mut best, mut run) = (0, 0);
    for p in picks {
        run = if *p == value { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

#[tokio::test]
async fn weighted_three_to_one_keeps_the_ratio_and_interleaves() {
    let (heavy, light) = (Mock::start("heavy", &[]), Mock::start("light", &[]));
    let eps = [ep_weighted(&heavy.url, 3), ep_weighted(&light.url, 1)];
    let gw = Gateway::start(&gateway_yaml(
        &[upstream("up", &eps, "    balance: weighted\n")],
        &route("all", "up"),
    ));
    let c = client();
    let mut picks = Vec::with_capacity(400);
    for i in 0..400 {
        let s = get_models(&c, &gw.url).await;
        assert!(s.ok(), "request {i}: {s:?}");
        assert!(
            s.endpoint == heavy.url || s.endpoint == light.url,
            "request {i} served by {:?}",
            s.endpoint
        );
        picks.push(s.endpoint == heavy.url);
    }
    let heavy_n = picks.iter().filter(|p| **p).count();
    let share = heavy_n as f64 / picks.len() as f64;
    let (heavy_run, light_run) = (longest_run(&picks, true), longest_run(&picks, false));
    let head: String = picks[..16]
        .iter()
        .map(|p| if *p { 'H' } else { 'L' })
        .collect();
    eprintln!(
        "weighted 3:1 over 400: heavy {heavy_n} ({:.1}%), light {}; longest runs heavy {heavy_run}, light {light_run}; first picks {head}",
        share * 100.0,
        400 - heavy_n
    );
    assert!(
        (0.70..=0.80).contains(&share),
        "heavy share {:.1}% not within 75% ± 5%",
        share * 100.0
    );
    assert_eq!(
        light_run, 1,
        "the light endpoint is never picked twice in a row"
    );
    assert!(heavy_run <= 3, "heavy picked {heavy_run} times in a row");
}

/// The slow endpoint's share per 500 ms window, from `since` until it reaches `want` or
/// `within` passes: (the windows' shares, the time it reached `want`).
async fn until_share(
    load: &Load,
    url: &str,
    want: f64,
    within: Duration,
) -> (Vec<(f64, usize)>, Option<Duration>) {
    let start = Instant::now();
    let mut windows = Vec::new();
    while start.elapsed() < within {
        let from = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let samples = load.since(from);
        let s = share(&samples, url);
        windows.push((s, samples.len()));
        if s >= want && samples.len() >= 10 {
            return (windows, Some(start.elapsed()));
        }
    }
    (windows, None)
}

/// Two endpoints, one 60 ms slower, under 8 concurrent clients with `balance`: the fast one
/// gets at least 80%; the slow one, restarted fast on the same port, gets at least 25% of a
/// 500 ms window within 8 s.
async fn steers_away_from_slow_and_back(balance: &str) {
    let fast = Mock::start("fast", &[]);
    let slow_port = free_port();
    let mut slow = Mock::start_on("slow", slow_port, &["--latency-ms", "60"]);
    let gw = Gateway::start(&gateway_yaml(
        &[upstream(
            "up",
            &[ep(&fast.url), ep(&slow.url)],
            &format!("    balance: {balance}\n"),
        )],
        &route("all", "up"),
    ));

    let load = Load::start(&gw, 8);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = load.finish().await;
    let fast_share = share(&first, &fast.url);
    eprintln!(
        "{balance}: 8 clients for 2 s: {} requests, fast {} ({:.1}%), slow {} ({:.1}%), failed {}",
        first.len(),
        served_by(&first, &fast.url),
        fast_share * 100.0,
        served_by(&first, &slow.url),
        share(&first, &slow.url) * 100.0,
        failures(&first, usize::MAX).len()
    );
    assert!(
        failures(&first, 1).is_empty(),
        "{balance}: {:?}",
        failures(&first, 5)
    );
    assert!(
        fast_share >= 0.8,
        "{balance}: the fast endpoint got only {:.1}% of {}",
        fast_share * 100.0,
        first.len()
    );

    slow.stop();
    let slow = Mock::start_on("slow-now-fast", slow_port, &[]);
    let load = Load::start(&gw, 8);
    let (windows, reached) = until_share(&load, &slow.url, 0.25, Duration::from_secs(8)).await;
    let second = load.finish().await;
    let shown: Vec<String> = windows
        .iter()
        .map(|(s, n)| format!("{:.0}% of {n}", s * 100.0))
        .collect();
    eprintln!(
        "{balance}: restarted fast on the same port: per-500ms share of the old slow one {shown:?}; reached 25% after {reached:?}; {} requests, failed {}",
        second.len(),
        failures(&second, usize::MAX).len()
    );
    assert!(
        reached.is_some(),
        "{balance}: the recovered endpoint never got 25% of a window within 8 s: {shown:?}"
    );
    assert!(
        failures(&second, 1).is_empty(),
        "{balance}: {:?}",
        failures(&second, 5)
    );
}

#[tokio::test]
async fn peak_ewma_avoids_a_slow_endpoint_and_returns_to_it_once_fast() {
    steers_away_from_slow_and_back("peak_ewma").await;
}

#[tokio::test]
async fn least_outstanding_avoids_a_slow_endpoint_and_returns_to_it_once_fast() {
    steers_away_from_slow_and_back("least_outstanding").await;
}

/// 20 concurrent requests (300 ms each at the mock) through an h2c upstream with `pool`:
/// how many connections the gateway opened to the mock, and how long the 20 took.
async fn h2_connections(pool: &str) -> (u64, Duration) {
    let mock = Mock::start("h2", &["--latency-ms", "300"]);
    let gw = Gateway::start(&gateway_yaml(
        &[upstream(
            "up",
            &[ep(&mock.url)],
            &format!("    pool: {pool}\n"),
        )],
        &route("all", "up"),
    ));
    let c = client();
    // One request first, so the 20 find a pooled connection instead of racing to open one.
    let warm = get_models(&c, &gw.url).await;
    assert!(warm.ok(), "{warm:?}\n{}", gw.log_text());
    let start = Instant::now();
    let samples = join_all((0..20).map(|_| get_models(&c, &gw.url))).await;
    let took = start.elapsed();
    assert!(
        samples.iter().all(Sample::ok),
        "{pool}: {:?}",
        failures(&samples, 5)
    );
    // The stats GET's own connection is counted too.
    let (_, connections) = mock_stats(&mock.url).await;
    (connections - 1, took)
}

#[tokio::test]
async fn h2c_multiplexes_concurrent_requests_over_one_connection_unless_capped() {
    let (shared, took) = h2_connections("{ http2: true }").await;
    eprintln!("h2c: 1 + 20 concurrent requests (300 ms each) over {shared} connection(s), the 20 in {took:?}");
    assert_eq!(shared, 1, "20 concurrent h2 requests over one connection");
    assert!(
        took < Duration::from_millis(3000),
        "the 20 overlapped: {took:?} (one at a time would take 6 s)"
    );
    let (capped, took) = h2_connections("{ http2: true, max_h2_streams: 1 }").await;
    eprintln!("h2c with max_h2_streams 1: {capped} connections, the 20 in {took:?}");
    assert!(
        capped > 1,
        "one stream per connection needs more than one connection: {capped}"
    );
}
