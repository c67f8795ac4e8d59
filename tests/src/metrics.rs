//! Reading a `/metrics` text in tests, with the Prometheus exposition parser sluice itself uses.

use sluice_plugins::ab::exposition::{self, Scrape};

/// Every sample of a `/metrics` text, read by the parser `sluice ab-report` uses; a text that
/// is not a Prometheus exposition fails the test.
#[must_use]
pub fn scrape(text: &str) -> Scrape {
    exposition::parse(text).unwrap_or_else(|e| panic!("not a Prometheus exposition ({e}):\n{text}"))
}

/// The value of `series`, written `name` or `name{label="value",...}` with every label of the
/// sample (in any order); 0 when absent.
#[must_use]
pub fn metric_value(text: &str, series: &str) -> f64 {
    let want = scrape(&format!("{series} 0")).samples.remove(0);
    scrape(text)
        .samples
        .into_iter()
        .find(|s| s.name == want.name && s.labels == want.labels)
        .map_or(0.0, |s| s.value)
}

/// The sum of the samples of metric `name` carrying all of `labels` (in any order).
#[must_use]
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(text).sum(name, labels)
}
