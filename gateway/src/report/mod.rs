//! `sluice report`: what every route and upstream did over a window, and what looks wrong,
//! read from a running sluice's `/metrics` (two scrapes a window apart, or totals since start)
//! or from a Prometheus that scrapes it. The analysis is `sluice_plugins::report`; this module
//! only fetches and prints. [`source`] is the fetching it shares with `sluice ab-report`.

mod prometheus;
pub mod source;

use sluice_plugins::ab::exposition::{difference, is_cumulative, Scrape};
use sluice_plugins::report::analyze;
use source::{Source, SourceError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The process start time sluice exports (from the prometheus crate's process collector).
const START_TIME: &str = "process_start_time_seconds";

pub struct Args {
    pub json: bool,
    pub source: Source,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Fetches the numbers, analyzes them and returns what to print on stdout.
pub fn run(args: &Args) -> Result<String, ReportError> {
    let runtime = source::runtime()?;
    let (window, window_s) = runtime.block_on(fetch(&args.source))?;
    let report = analyze(&window, window_s);
    Ok(if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        format!("data: {}\n\n{}", args.source.describe(), report.to_text())
    })
}

/// The window's series (counters as increases, gauges current) and its length in seconds.
async fn fetch(source: &Source) -> Result<(Scrape, Option<f64>), SourceError> {
    let client = source::client()?;
    match source {
        Source::Metrics { url, window: None } => {
            let totals = source::scrape(&client, url).await?;
            let uptime = since_start(&totals);
            Ok((totals, uptime))
        }
        Source::Metrics {
            url,
            window: Some(window),
        } => {
            let (earlier, later, between) = source::scrape_twice(&client, url, *window).await?;
            let window =
                difference(&earlier, &later, is_cumulative).map_err(|e| SourceError::Data {
                    from: source.describe(),
                    source: e,
                })?;
            Ok((window, Some(between.as_secs_f64())))
        }
        Source::Prometheus { url, range } => {
            let window = prometheus::window(&client, url, *range).await?;
            Ok((window, Some(range.as_secs_f64())))
        }
    }
}

/// Seconds since the scraped process started, when it says when that was.
fn since_start(scrape: &Scrape) -> Option<f64> {
    let started = scrape.matching(START_TIME, &[]).next()?.value;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let up = now.saturating_sub(Duration::try_from_secs_f64(started).ok()?);
    (!up.is_zero()).then_some(up.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugins::ab::exposition::parse;

    #[test]
    fn totals_since_start_cover_the_uptime_when_sluice_says_when_it_started() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let started = now.as_secs_f64() - 100.0;
        let scrape = parse(&format!("{START_TIME} {started}\n")).unwrap();
        let up = since_start(&scrape).unwrap();
        assert!((100.0..101.0).contains(&up), "{up}");
        assert_eq!(since_start(&parse("sluice_build_info 1\n").unwrap()), None);
    }
}
