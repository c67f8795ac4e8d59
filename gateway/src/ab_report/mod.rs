//! `sluice ab-report`: reads what each variant of a route's split did, from a running sluice's
//! `/metrics` (since start, or over a window between two scrapes) or from a Prometheus that
//! scrapes it (over a range), and prints the analysis of `sluice_plugins::ab::report`.
//! All the arithmetic is in the plugins crate; this module only fetches and prints.

mod prometheus;

use crate::report::source::{self, SourceError};
pub use crate::report::source::{positive_duration, Source};
use sluice_plugins::ab::exposition::{self, RouteTotals};
use sluice_plugins::ab::report::{analyze, ReportError};

/// What to report on and where the numbers come from.
pub struct Args {
    pub route: String,
    /// Default: the route's first configured variant.
    pub baseline: Option<String>,
    pub json: bool,
    pub source: Source,
}

/// What to print: the report on stdout, notes on stderr.
pub struct Output {
    pub stdout: String,
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AbReportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{from}: {source}")]
    Report { from: String, source: ReportError },
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Fetches the numbers and analyzes them.
pub fn run(args: &Args) -> Result<Output, AbReportError> {
    let runtime = source::runtime()?;
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
async fn fetch_totals(route: &str, source: &Source) -> Result<RouteTotals, SourceError> {
    let client = source::client()?;
    let totals = match source {
        Source::Metrics { url, window: None } => {
            exposition::totals(route, &source::scrape(&client, url).await?)
        }
        Source::Metrics {
            url,
            window: Some(window),
        } => {
            let (earlier, later, _) = source::scrape_twice(&client, url, *window).await?;
            exposition::totals_between(route, &earlier, &later)
        }
        Source::Prometheus { url, range } => {
            let increases = prometheus::increases(&client, url, route, *range).await?;
            exposition::totals(route, &increases)
        }
    };
    totals.map_err(|e| SourceError::Data {
        from: source.describe(),
        source: e,
    })
}
