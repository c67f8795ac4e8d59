//! `sluice ab-report`: reads what each variant of a route's split did, from a running sluice's
//! `/metrics` (since start, or over a window between two scrapes) or from a Prometheus that
//! scrapes it (over a range), and prints the analysis of `sluice_plugins::ab::report`.
//! All the arithmetic is in the plugins crate; this module only fetches and prints.

mod prometheus;

use crate::config::secret::redact_url;
use sluice_plugins::ab::exposition::{self, ExpositionError, RouteTotals, Scrape};
use sluice_plugins::ab::report::{analyze, ReportError};
use std::time::Duration;

/// Every request to sluice or Prometheus gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What to report on and where the numbers come from.
pub struct Args {
    pub route: String,
    /// Default: the route's first configured variant.
    pub baseline: Option<String>,
    pub json: bool,
    pub source: Source,
}

pub enum Source {
    /// A sluice `/metrics` URL: totals since start, or the difference over `window`.
    Metrics {
        url: String,
        window: Option<Duration>,
    },
    /// A Prometheus base URL: `increase()` over the last `range`.
    Prometheus { url: String, range: Duration },
}

/// What to print: the report on stdout, notes on stderr.
pub struct Output {
    pub stdout: String,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AbReportError {
    #[error("GET {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{from}: {source}")]
    Data {
        from: String,
        source: ExpositionError,
    },
    #[error("{from}: {source}")]
    Report { from: String, source: ReportError },
    #[error("cannot start: {0}")]
    Setup(String),
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Source {
    /// Where the numbers come from, for the report's first line and for errors (a password
    /// in the URL, which reqwest sends as basic auth, is redacted).
    fn describe(&self) -> String {
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

/// Fetches the numbers and analyzes them.
pub fn run(args: &Args) -> Result<Output, AbReportError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AbReportError::Setup(e.to_string()))?;
    let totals = runtime.block_on(fetch_totals(&args.route, &args.source))?;
    let from = args.source.describe();
    let mut notes = Vec::new();
    let baseline = match &args.baseline {
        Some(b) => b.clone(),
        None => {
            if !totals.baseline_configured {
                notes.push(format!(
                    "no sluice_split_weight says which variant of `{}` is first; comparing with `{}`, the first by name (use --baseline to choose)",
                    args.route, totals.baseline
                ));
            }
            totals.baseline.clone()
        }
    };
    let report = analyze(&args.route, &totals.variants, &baseline).map_err(|source| {
        AbReportError::Report {
            from: from.clone(),
            source,
        }
    })?;
    let stdout = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        format!("data: {from}\n{}", report.to_text())
    };
    Ok(Output { stdout, notes })
}

/// What each variant of `route` did, by the numbers `source` has.
async fn fetch_totals(route: &str, source: &Source) -> Result<RouteTotals, AbReportError> {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| AbReportError::Setup(reason(&e)))?;
    let totals = match source {
        Source::Metrics { url, window: None } => {
            exposition::totals(route, &scrape(&client, url).await?)
        }
        Source::Metrics {
            url,
            window: Some(window),
        } => {
            let earlier = scrape(&client, url).await?;
            tokio::time::sleep(*window).await;
            let later = scrape(&client, url).await?;
            exposition::totals_between(route, &earlier, &later)
        }
        Source::Prometheus { url, range } => {
            let increases = prometheus::increases(&client, url, route, *range).await?;
            exposition::totals(route, &increases)
        }
    };
    totals.map_err(|e| AbReportError::Data {
        from: source.describe(),
        source: e,
    })
}

/// One scrape of a sluice `/metrics`.
async fn scrape(client: &reqwest::Client, url: &str) -> Result<Scrape, AbReportError> {
    let body = get(client, url, &[]).await?;
    exposition::parse(&body).map_err(|source| AbReportError::Data {
        from: format!("{} is not a Prometheus exposition", redact_url(url)),
        source,
    })
}

/// GETs `url` and returns the body of a 2xx answer.
async fn get(
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, &str)],
) -> Result<String, AbReportError> {
    let fail = |reason: String| AbReportError::Fetch {
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
fn human(d: Duration) -> String {
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
