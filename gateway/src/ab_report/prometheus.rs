//! The same per-variant series, read from a Prometheus that scrapes sluice: one instant query
//! per series family, `increase()` over the range summed down to the labels the report reads
//! (so several sluice instances add up), put in the shape of a scrape.

use crate::report::source::{human, query_all, SourceError};
use sluice_plugins::ab::exposition::Scrape;
use std::time::Duration;

/// The route's series as increases over the last `range`, each named like the sluice series
/// it sums; every route's requests and split weights too, so an unknown route lists the others.
pub(super) async fn increases(
    client: &reqwest::Client,
    base: &str,
    route: &str,
    range: Duration,
) -> Result<Scrape, SourceError> {
    let on_route = format!(
        "{{route=\"{}\"}}",
        route.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let range = human(range);
    let increase = |name: &str, selector: &str, by: &str| {
        (
            name.to_string(),
            format!("sum by (route, variant{by}) (increase({name}{selector}[{range}]))"),
        )
    };
    let queries = [
        increase("sluice_requests_total", "", ", code"),
        increase("sluice_request_duration_seconds_bucket", &on_route, ", le"),
        increase("sluice_request_duration_seconds_sum", &on_route, ""),
        increase("sluice_upstream_ttfb_seconds_bucket", &on_route, ", le"),
        increase("sluice_upstream_ttfb_seconds_sum", &on_route, ""),
        increase("sluice_cache_requests_total", &on_route, ", result"),
        increase("sluice_tokens_total", &on_route, ", kind"),
        increase("sluice_cost_usd_total", &on_route, ""),
        // The configured weights as last scraped (a gauge: no increase).
        (
            "sluice_split_weight".to_string(),
            "max by (route, variant, position) (sluice_split_weight)".to_string(),
        ),
    ];
    query_all(client, base, &queries).await
}
