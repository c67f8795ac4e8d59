//! The report's series from a Prometheus that scrapes sluice: counters as `increase()` over
//! the range and gauges as now, each summed (or taken at its worst) over sluice instances down
//! to the labels the report reads, named like the sluice series.

use super::source::{human, query_all, SourceError};
use sluice_plugins::ab::exposition::Scrape;
use std::time::Duration;

/// Counters (and histogram parts) the report reads, with the labels it keeps.
const INCREASES: &[(&str, &str)] = &[
    ("sluice_requests_total", "route, upstream, code"),
    ("sluice_request_duration_seconds_bucket", "route, le"),
    ("sluice_request_duration_seconds_sum", "route"),
    ("sluice_gateway_seconds_bucket", "route, le"),
    ("sluice_gateway_seconds_sum", "route"),
    ("sluice_gateway_phase_seconds_sum", "route, phase"),
    ("sluice_cache_requests_total", "route, result"),
    ("sluice_cache_saved_seconds_total", "route"),
    ("sluice_cache_saved_tokens_total", "route"),
    ("sluice_cache_evictions_total", "tier"),
    ("sluice_ratelimit_decisions_total", "route, limit, result"),
    ("sluice_rejections_total", "route, reason"),
    ("sluice_queue_wait_seconds_bucket", "upstream, le"),
    ("sluice_queue_wait_seconds_sum", "upstream"),
    ("sluice_upstream_requests_total", "upstream, endpoint"),
    ("sluice_upstream_errors_total", "upstream, endpoint, kind"),
    ("sluice_upstream_ejections_total", "upstream, endpoint"),
];

pub(super) async fn window(
    client: &reqwest::Client,
    base: &str,
    range: Duration,
) -> Result<Scrape, SourceError> {
    let range = human(range);
    let mut queries: Vec<(String, String)> = INCREASES
        .iter()
        .map(|(name, by)| {
            let query = format!("sum by ({by}) (increase({name}[{range}]))");
            (name.to_string(), query)
        })
        .collect();
    // The latency estimate decays towards zero while an endpoint is idle, so an average
    // over a range with quiet stretches reads low: the level it held the busiest tenth of the
    // range is what the balancer saw under traffic. Health as now; the worst instance's.
    queries.push((
        "sluice_upstream_ewma_seconds".into(),
        format!(
            "max by (upstream, endpoint) (quantile_over_time(0.9, sluice_upstream_ewma_seconds[{range}]))"
        ),
    ));
    queries.push((
        "sluice_upstream_healthy".into(),
        "min by (upstream, endpoint) (sluice_upstream_healthy)".into(),
    ));
    query_all(client, base, &queries).await
}
