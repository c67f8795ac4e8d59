//! The same per-variant series, read from a Prometheus that scrapes sluice: one instant query
//! per series family, `increase()` over the range summed down to the labels the report reads
//! (so several sluice instances add up), put in the shape of a scrape.

use super::{get, human, AbReportError};
use serde::Deserialize;
use sluice_plugins::ab::exposition::{parse_value, Sample, Scrape};
use std::collections::BTreeMap;
use std::time::Duration;

/// A query's answer (`/api/v1/query`), success or error.
#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: String,
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    /// `[unix time, "value"]`.
    value: (f64, String),
}

/// The route's series as increases over the last `range`, each named like the sluice series
/// it sums; every route's requests and split weights too, so an unknown route lists the others.
pub(super) async fn increases(
    client: &reqwest::Client,
    base: &str,
    route: &str,
    range: Duration,
) -> Result<Scrape, AbReportError> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
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
    let mut samples = Vec::new();
    for (name, query) in &queries {
        samples.extend(instant(client, &url, name, query).await?);
    }
    Ok(Scrape { samples })
}

/// Runs one instant query; its result vector as samples named `name`.
async fn instant(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    query: &str,
) -> Result<Vec<Sample>, AbReportError> {
    let fail = |reason: String| AbReportError::Fetch {
        url: url.to_string(),
        reason,
    };
    let body = get(client, url, &[("query", query)]).await?;
    let answer: Answer = serde_json::from_str(&body)
        .map_err(|e| fail(format!("not a Prometheus API answer ({e})")))?;
    let data = match answer.data {
        Some(data) if answer.status == "success" => data,
        _ => return Err(fail(format!("query `{query}` failed: {}", answer.error))),
    };
    if data.result_type != "vector" {
        return Err(fail(format!(
            "query `{query}` gave a {} instead of a vector",
            data.result_type
        )));
    }
    data.result
        .into_iter()
        .map(|series| {
            let value =
                parse_value(&series.value.1).map_err(|e| fail(format!("query `{query}`: {e}")))?;
            Ok(Sample {
                name: name.to_string(),
                labels: series
                    .metric
                    .into_iter()
                    .filter(|(k, _)| k != "__name__")
                    .collect(),
                value,
            })
        })
        .collect()
}
