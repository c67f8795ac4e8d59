//! Reads what a sluice `/metrics` prints (the Prometheus text exposition format) and adds up,
//! per variant of one route, what `sluice ab-report` compares: since start from one scrape, or
//! over a window as the difference of two. Pure: the caller fetches the text (or puts query
//! results in the same shape), so every rule here is tested on literal text.

use super::{Histogram, VariantTotals};
use std::collections::{BTreeSet, HashMap, HashSet};

const REQUESTS: &str = "sluice_requests_total";
const DURATION: &str = "sluice_request_duration_seconds";
const TTFB: &str = "sluice_upstream_ttfb_seconds";
const CACHE: &str = "sluice_cache_requests_total";
const TOKENS: &str = "sluice_tokens_total";
const COST: &str = "sluice_cost_usd_total";
const SPLIT_WEIGHT: &str = "sluice_split_weight";

/// Label names and values.
type Labels = Vec<(String, String)>;

/// One sample: metric name, labels sorted by name, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    #[must_use]
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name{k="v",...}`, for messages.
    fn series(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// Every sample of one scrape (or of query results put in the same shape).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The samples of metric `name` that carry all of `labels` (and maybe others), in order.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// The sum of the [`matching`](Scrape::matching) samples' values (0 when there are none).
    #[must_use]
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        // From +0.0: `Iterator::sum` of no floats is -0.0, which JSON would show as `-0.0`.
        self.matching(name, labels)
            .map(|s| s.value)
            .fold(0.0, |a, b| a + b)
    }

    /// Histogram `family` over the series that carry all of `labels`, summed over the rest.
    #[must_use]
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> Histogram {
        let mine: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name.starts_with(family))
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .collect();
        histogram_under(&mine, family, &bucket_bounds(&mine, family))
    }
}

/// What a route's series say, per variant, and which variant is the baseline by default.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTotals {
    /// In configured order (`position`), then by name.
    pub variants: Vec<VariantTotals>,
    pub baseline: String,
    /// False when no `sluice_split_weight` says which variant is first: the baseline is then
    /// the alphabetically first, which the caller should say.
    pub baseline_configured: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpositionError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("unknown route `{route}`; routes in the metrics: {known}")]
    UnknownRoute { route: String, known: String },
    #[error("route `{0}` has no split: none of its series carries a variant")]
    NoSplit(String),
    #[error("no traffic on route `{0}`: its variants answered no requests")]
    NoTraffic(String),
    #[error("sluice restarted between the two scrapes: {series} {change}")]
    Restarted { series: String, change: String },
}

// === Parsing ===

/// Parses the text exposition format: comments (`# HELP`, `# TYPE`) are skipped, each other
/// line is `name{label="value",...} value [timestamp]`.
pub fn parse(text: &str) -> Result<Scrape, ExpositionError> {
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|message| ExpositionError::Syntax {
            line: i + 1,
            message,
        })?;
        samples.push(sample);
    }
    Ok(Scrape { samples })
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("expected a metric name at `{line}`"));
    }
    let rest = line[name_end..].trim_start();
    let (mut labels, rest) = match rest.strip_prefix('{') {
        Some(after) => parse_labels(after)?,
        None => (Vec::new(), rest),
    };
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("missing value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("invalid timestamp `{ts}`"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the value"));
    }
    labels.sort();
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Labels after the `{`, and what follows the closing `}`.
fn parse_labels(mut rest: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without `=`")?;
        let name = rest[..eq].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid label name `{name}`"));
        }
        let quoted = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("label `{name}`: value must be quoted"))?;
        let (value, after) =
            unescape(quoted).ok_or_else(|| format!("label `{name}`: unterminated value"))?;
        labels.push((name.to_string(), value));
        rest = after.trim_start();
        match rest.strip_prefix(',') {
            Some(after) => rest = after,
            None if rest.starts_with('}') => {}
            None => return Err(format!("expected `,` or `}}` after label `{name}`")),
        }
    }
}

/// A label value up to its closing quote (`\\`, `\"`, `\n` unescaped), and what follows.
fn unescape(s: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// A sample value: a float, `+Inf`, `-Inf` or `NaN`.
pub fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("invalid value `{s}`")),
    }
}

// === Totals ===

/// What each variant of `route` did since sluice started, from one scrape.
pub fn totals(route: &str, scrape: &Scrape) -> Result<RouteTotals, ExpositionError> {
    let on_route: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.label("route") == Some(route))
        .collect();
    if on_route.is_empty() {
        let known: BTreeSet<&str> = scrape
            .samples
            .iter()
            .filter_map(|s| s.label("route"))
            .filter(|r| !r.is_empty())
            .collect();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.into_iter().collect::<Vec<_>>().join(", ")
        };
        return Err(ExpositionError::UnknownRoute {
            route: route.to_string(),
            known,
        });
    }
    let mut names: BTreeSet<&str> = on_route
        .iter()
        .filter_map(|s| s.label("variant"))
        .filter(|v| !v.is_empty())
        .collect();
    // A variant a reload removed keeps its counters but loses its weight: not compared.
    let configured: BTreeSet<&str> = on_route
        .iter()
        .filter(|s| s.name == SPLIT_WEIGHT)
        .filter_map(|s| s.label("variant"))
        .collect();
    if !configured.is_empty() {
        names.retain(|v| configured.contains(v));
    }
    let Some(first_by_name) = names.first() else {
        return Err(ExpositionError::NoSplit(route.to_string()));
    };
    let position = |variant: &str| {
        on_route
            .iter()
            .filter(|s| s.name == SPLIT_WEIGHT && s.label("variant") == Some(variant))
            .find_map(|s| s.label("position")?.parse::<u32>().ok())
    };
    let configured = names.iter().find(|v| position(v) == Some(0));
    let (baseline, baseline_configured) = match configured {
        Some(v) => (v.to_string(), true),
        None => (first_by_name.to_string(), false),
    };
    let mut variants: Vec<VariantTotals> =
        names.iter().map(|v| variant_totals(&on_route, v)).collect();
    variants.sort_by_key(|t| position(&t.variant).unwrap_or(u32::MAX));
    if variants.iter().all(|t| t.requests == 0) {
        return Err(ExpositionError::NoTraffic(route.to_string()));
    }
    Ok(RouteTotals {
        variants,
        baseline,
        baseline_configured,
    })
}

/// What each variant of `route` did between two scrapes of the same sluice: counters are
/// subtracted; one that went down (or vanished) means sluice restarted in between.
pub fn totals_between(
    route: &str,
    earlier: &Scrape,
    later: &Scrape,
) -> Result<RouteTotals, ExpositionError> {
    totals(route, &difference(earlier, later, is_counter)?)
}

/// The later scrape with every series `cumulative` names (by metric name) replaced by its
/// increase since the earlier one; other series (gauges) as the later scrape has them. A
/// cumulative series that went down or vanished means the process restarted in between.
pub fn difference(
    earlier: &Scrape,
    later: &Scrape,
    cumulative: impl Fn(&str) -> bool,
) -> Result<Scrape, ExpositionError> {
    let key = |s: &Sample| (s.name.clone(), s.labels.clone());
    let before: HashMap<(String, Labels), f64> = earlier
        .samples
        .iter()
        .filter(|s| cumulative(&s.name))
        .map(|s| (key(s), s.value))
        .collect();
    let mut samples = Vec::with_capacity(later.samples.len());
    for s in &later.samples {
        let was = match before.get(&key(s)) {
            Some(was) if cumulative(&s.name) => *was,
            _ => {
                samples.push(s.clone());
                continue;
            }
        };
        if s.value < was {
            return Err(ExpositionError::Restarted {
                series: s.series(),
                change: format!("went down from {was} to {}", s.value),
            });
        }
        samples.push(Sample {
            value: s.value - was,
            ..s.clone()
        });
    }
    let now: HashSet<_> = later.samples.iter().map(key).collect();
    if let Some(gone) = earlier
        .samples
        .iter()
        .find(|s| cumulative(&s.name) && !now.contains(&key(s)))
    {
        return Err(ExpositionError::Restarted {
            series: gone.series(),
            change: "is gone".to_string(),
        });
    }
    Ok(Scrape { samples })
}

/// Whether a series is cumulative by the naming conventions: a counter (`_total`) or a
/// histogram's `_bucket`, `_sum` or `_count`.
#[must_use]
pub fn is_cumulative(name: &str) -> bool {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// The cumulative series the report reads (gauges such as the split weights are not).
fn is_counter(name: &str) -> bool {
    [REQUESTS, CACHE, TOKENS, COST].contains(&name)
        || [DURATION, TTFB]
            .iter()
            .any(|h| name.strip_prefix(h).is_some_and(|s| s.starts_with('_')))
}

fn variant_totals(on_route: &[&Sample], variant: &str) -> VariantTotals {
    let sum = |name: &str, keep: &dyn Fn(&Sample) -> bool| -> f64 {
        on_route
            .iter()
            .filter(|s| s.name == name && s.label("variant") == Some(variant) && keep(s))
            .map(|s| s.value)
            .sum()
    };
    let all = |_: &Sample| true;
    let label_in = |label: &'static str, values: &'static [&'static str]| {
        move |s: &Sample| s.label(label).is_some_and(|v| values.contains(&v))
    };
    VariantTotals {
        variant: variant.to_string(),
        requests: count(sum(REQUESTS, &all)),
        errors: count(sum(REQUESTS, &|s| {
            s.label("code").is_some_and(|c| c.starts_with('5'))
        })),
        duration: histogram(on_route, DURATION, variant),
        ttfb: histogram(on_route, TTFB, variant),
        cache_hits: count(sum(CACHE, &label_in("result", &["hit", "coalesced"]))),
        cache_lookups: count(sum(CACHE, &all)),
        prompt_tokens: count(sum(TOKENS, &label_in("kind", &["prompt"]))),
        completion_tokens: count(sum(TOKENS, &label_in("kind", &["completion"]))),
        cost_usd: sum(COST, &all),
    }
}

/// A count from a sample value: Prometheus's `increase()` gives fractions, which are rounded.
#[must_use]
pub fn count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

/// `family`'s buckets for `variant`, summed over other labels (upstreams), as per-bucket
/// counts under the bounds any variant of the route has, so all variants share bounds.
fn histogram(on_route: &[&Sample], family: &str, variant: &str) -> Histogram {
    let mine: Vec<&Sample> = on_route
        .iter()
        .copied()
        .filter(|s| s.label("variant") == Some(variant))
        .collect();
    histogram_under(&mine, family, &bucket_bounds(on_route, family))
}

/// The distinct `le` bounds of `family`'s buckets among `samples`, ascending.
#[must_use]
pub fn bucket_bounds(samples: &[&Sample], family: &str) -> Vec<f64> {
    let bucket = format!("{family}_bucket");
    let mut bounds: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == bucket)
        .filter_map(|s| le(s))
        .collect();
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    bounds
}

/// `family`'s buckets and sum among `samples`, summed over the labels they differ in, as
/// per-bucket counts under `bounds`.
#[must_use]
pub fn histogram_under(samples: &[&Sample], family: &str, bounds: &[f64]) -> Histogram {
    let bucket = format!("{family}_bucket");
    let buckets: Vec<&&Sample> = samples.iter().filter(|s| s.name == bucket).collect();
    // Cumulative, never decreasing (extrapolated increase() results can wobble).
    let mut cumulative = 0.0_f64;
    let mut previous = 0;
    let mut counts = Vec::with_capacity(bounds.len());
    for bound in bounds {
        let at: f64 = buckets
            .iter()
            .filter(|s| le(s) == Some(*bound))
            .map(|s| s.value)
            .sum();
        cumulative = cumulative.max(at);
        let total = count(cumulative);
        counts.push(total.saturating_sub(previous));
        previous = total;
    }
    let sum_name = format!("{family}_sum");
    let sum = samples
        .iter()
        .filter(|s| s.name == sum_name)
        .map(|s| s.value)
        .sum();
    Histogram {
        bounds: bounds.to_vec(),
        counts,
        sum,
    }
}

fn le(s: &Sample) -> Option<f64> {
    s.label("le").and_then(|v| parse_value(v).ok())
}

#[cfg(test)]
mod tests;
