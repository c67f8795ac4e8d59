//! Failover under load: an endpoint that refuses connections costs no client errors in the
//! seconds before health checks take it out, with the default retry budget. (A binary of its
//! own: its 16 clients would skew the timing of other tests.)

mod resilience_support;

use resilience_support::{dead_url, ep, failures, gateway_yaml, route, served_by, upstream, Load};
use sluice_e2e::{metric_sum, Gateway, Mock, PATIENCE};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_dead_endpoint_costs_no_client_errors_before_health_checks_take_it_out() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let dead = dead_url();
    // The default budget (20% + 1/s); a third of first tries meet the closed port until the
    // probes take it out (two failed probes, 1 s apart).
    let extra = "    retry: { attempts: 2, on: [connect, 502, 503] }\n    health: { interval: 1s, timeout: 500ms }\n";
    let eps = [ep(&a.url), ep(&b.url), ep(&dead)];
    let gw = Gateway::start(&gateway_yaml(
        &[upstream("up", &eps, extra)],
        &route("all", "up"),
    ));
    let load = Load::start(&gw, 16);
    let start = Instant::now();
    while load.samples().len() < 2000 || start.elapsed() < Duration::from_secs(3) {
        assert!(start.elapsed() < PATIENCE * 3, "the load is too slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let samples = load.finish().await;
    let m = gw.metrics().await;
    let connect = metric_sum(
        &m,
        "sluice_upstream_errors_total",
        &[("endpoint", &dead), ("kind", "connect")],
    );
    let failed = failures(&samples, usize::MAX);
    eprintln!(
        "3 endpoints, 1 a closed port, 16 clients, {:?}: {} requests, {} failed; served a {} b {}; \
         {connect} connect failures at the dead one; budget refusals {}",
        start.elapsed(),
        samples.len(),
        failed.len(),
        served_by(&samples, &a.url),
        served_by(&samples, &b.url),
        metric_sum(&m, "sluice_upstream_retry_budget_exhausted_total", &[("upstream", "up")]),
    );
    assert!(connect >= 1.0, "the dead endpoint was tried: {connect}");
    assert!(
        failed.is_empty(),
        "client errors: {:?}",
        &failed[..failed.len().min(5)]
    );
}
