//! Where `sluice report` and `sluice ab-report` read their numbers: a running sluice's
//! `/metrics` (one scrape, or two a window apart) or a Prometheus that scrapes it (instant
//! queries). Shared so both commands fetch, time out and name a failing URL the same way.

use crate::config::secret::redact_url;
use serde::Deserialize;
use sluice_plugins::ab::exposition::{self, parse_value, ExpositionError, Sample, Scrape};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Every request to sluice or Prometheus gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Source {
    /// A sluice `/metrics` URL: totals since start, or the difference over `window`.
    Metrics {
        url: String,
        window: Option<Duration>,
    },
    /// A Prometheus base URL: `increase()` over the last `range`.
    Prometheus { url: String, range: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("GET {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{from}: {source}")]
    Data {
        from: String,
        source: ExpositionError,
    },
    #[error("cannot start: {0}")]
    Setup(String),
}

impl Source {
    /// Where the numbers come from, for the report's first line and for errors (a password
    /// in the URL, which reqwest sends as basic auth, is redacted).
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Source::Metrics { url, window: None } => {
                format!("{}, totals since start", redact_url(url))
            }
            Source::Metrics {
                url,
                window: Some(w),
            } => format!("{}, over {}", redact_url(url), human(*w)),
            Source::Prometheus { url, range } => format!(
                "Prometheus {}, increase over {}",
                redact_url(url),
                human(*range)
            ),
        }
    }
}

/// A runtime for one command's requests.
pub fn runtime() -> Result<tokio::runtime::Runtime, SourceError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SourceError::Setup(e.to_string()))
}

/// An HTTP client whose requests give up after [`REQUEST_TIMEOUT`].
pub fn client() -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| SourceError::Setup(reason(&e)))
}

/// One scrape of a sluice `/metrics`.
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<Scrape, SourceError> {
    let body = get(client, url, &[]).await?;
    exposition::parse(&body).map_err(|source| SourceError::Data {
        from: format!("{} is not a Prometheus exposition", redact_url(url)),
        source,
    })
}

/// Two scrapes `window` apart, and the time between them.
pub async fn scrape_twice(
    client: &reqwest::Client,
    url: &str,
    window: Duration,
) -> Result<(Scrape, Scrape, Duration), SourceError> {
    let started = Instant::now();
    let earlier = scrape(client, url).await?;
    tokio::time::sleep_until((started + window).into()).await;
    let between = started.elapsed();
    let later = scrape(client, url).await?;
    Ok((earlier, later, between))
}

/// GETs `url` and returns the body of a 2xx answer.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, &str)],
) -> Result<String, SourceError> {
    let fail = |reason: String| SourceError::Fetch {
        url: redact_url(url),
        reason,
    };
    let answer = client
        .get(url)
        .query(query)
        .send()
        .await
        .map_err(|e| fail(reason(&e)))?;
    let status = answer.status();
    let body = answer.text().await.map_err(|e| fail(reason(&e)))?;
    if !status.is_success() {
        // What the server said, if anything: the first line, shortened.
        let said: String = body
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        return Err(fail(if said.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {said}")
        }));
    }
    Ok(body)
}

/// A reqwest error in a few words, down to its root cause (e.g. `Connection refused`); the
/// caller names the URL.
fn reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", human(REQUEST_TIMEOUT));
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(cause) = root.source() {
        root = cause;
    }
    match (e.is_connect(), e.is_body() || e.is_decode()) {
        (true, _) => format!("cannot connect: {root}"),
        (_, true) => format!("cannot read the answer: {root}"),
        _ => root.to_string(),
    }
}

/// A duration as the shortest of `1h`, `5m`, `30s`, `250ms` that is exact (PromQL reads it too).
#[must_use]
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A `--window`/`--range` value: a gateway duration (`30s`, `5m`, `1h`) of at least 1 ms.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = crate::config::units::parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!("`{s}` is too short: give at least 1ms"));
    }
    Ok(d)
}

// === Prometheus ===

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

/// Runs instant queries against the Prometheus at `base`; each `(name, query)` gives samples
/// named `name`, all put in the shape of one scrape.
pub async fn query_all(
    client: &reqwest::Client,
    base: &str,
    queries: &[(String, String)],
) -> Result<Scrape, SourceError> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let mut samples = Vec::new();
    for (name, query) in queries {
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
) -> Result<Vec<Sample>, SourceError> {
    let fail = |reason: String| SourceError::Fetch {
        url: redact_url(url),
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
            // A BTreeMap's order: labels sorted by name, as a scrape's are.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_their_largest_exact_unit() {
        let cases = [
            ("1h", "1h"),
            ("90m", "90m"),
            ("120s", "2m"),
            ("1.5s", "1500ms"),
            ("250ms", "250ms"),
        ];
        for (given, shown) in cases {
            assert_eq!(human(positive_duration(given).unwrap()), shown);
        }
        assert!(positive_duration("0s").unwrap_err().contains("too short"));
        assert!(positive_duration("5 parsecs").is_err());
    }

    #[test]
    fn a_password_in_a_source_url_is_not_printed() {
        let source = Source::Prometheus {
            url: "http://me:pw9@prom:9090".into(),
            range: Duration::from_secs(60),
        };
        assert_eq!(
            source.describe(),
            "Prometheus http://me:<redacted>@prom:9090, increase over 1m"
        );
    }
}
