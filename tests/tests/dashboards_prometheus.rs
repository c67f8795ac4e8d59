//! The Grafana dashboards against a real Prometheus scraping a real sluice. A sluice with every
//! feature is driven through all of them (dashboards_support/scenario.rs); then every variable
//! query of every `grafana/dashboards/*.json` must offer values, and every panel query, with
//! the variables set to those values, must return data a panel can draw. And every metric
//! family sluice exposes must be read by some dashboard or by an alert or recording rule in
//! `grafana/rules/`, so a new family cannot go unwatched.

mod dashboards_support;

use dashboards_support::scenario::Scenario;
use dashboards_support::{
    dashboards, interpolate, label_values_args, metric_names, panel_queries, rule_exprs,
    variable_query, variables, Query,
};
use sluice_e2e::Prometheus;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

// === Grafana's variables, as Prometheus answers them ===

/// Each variable's value in the form Grafana sends it: the first value of a single-value
/// variable; a regex alternation of every value (Grafana's selection of all of them) for a
/// multi-value one. Built in order, so a variable can use the ones before it.
async fn variable_values(
    prometheus: &Prometheus,
    name: &str,
    dashboard: &serde_json::Value,
    builtins: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut values = builtins.clone();
    for var in variables(dashboard) {
        let var_name = var["name"].as_str().unwrap_or_default().to_string();
        let value = match var["type"].as_str() {
            Some("datasource") => Ok(vec!["sluice-prometheus".to_string()]),
            Some("query") => {
                let place = format!("{name}: variable {var_name}");
                let text = interpolate(variable_query(var), |v| values.get(v).cloned());
                match text
                    .as_deref()
                    .map_err(|e| e.clone())
                    .and_then(label_values_args)
                {
                    Ok((selector, label)) => prometheus
                        .label_values(selector, label)
                        .await
                        .map_err(|e| format!("{place}: {e}")),
                    Err(e) => Err(format!("{place}: {e}")),
                }
                .and_then(|found| match found.is_empty() {
                    true => Err(format!("{place}: no values ({})", variable_query(var))),
                    false => Ok(found),
                })
            }
            other => Err(format!("{name}: variable {var_name} of type {other:?}")),
        };
        let value = match value {
            Ok(found) if var["multi"] == true || var["includeAll"] == true => {
                let escaped: Vec<String> = found.iter().map(|v| regex_escape(v)).collect();
                format!("({})", escaped.join("|"))
            }
            Ok(found) => found[0].clone(),
            Err(problem) => {
                problems.push(problem);
                // A value that matches nothing, so the panels that use it report too.
                "variable-without-values".to_string()
            }
        };
        values.insert(var_name, value);
    }
    values
}

/// `value` escaped as Grafana escapes a multi-value variable for a PromQL regex matcher:
/// regex metacharacters get a backslash, itself escaped for the PromQL string.
fn regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if r"\.*+?^$(){}[]|".contains(c) {
            out.push_str(r"\\");
        }
        out.push(c);
    }
    out
}

// === Panel queries, as Prometheus answers them ===

/// What is wrong with a panel query's answer, if anything: an error, no series, or only
/// NaN (a ratio of nothing, a quantile of no observations), which a panel draws as empty.
async fn check(
    prometheus: &Prometheus,
    query: &Query,
    values: &BTreeMap<String, String>,
) -> Option<String> {
    let promql = match interpolate(&query.text, |v| values.get(v).cloned()) {
        Ok(promql) => promql,
        Err(e) => return Some(format!("{}: {e}", query.place)),
    };
    let result = match prometheus.query(&promql).await {
        Ok(result) => result,
        Err(e) => return Some(format!("{}: {e}\n    {promql}", query.place)),
    };
    if result.is_empty() {
        return Some(format!("{}: no data\n    {promql}", query.place));
    }
    let finite = result.iter().any(|series| {
        (series["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    });
    (!finite).then(|| {
        format!(
            "{}: no finite value in {} series\n    {promql}",
            query.place,
            result.len()
        )
    })
}

// === Coverage ===

/// The metric families of a `/metrics` text, from its `# TYPE name type` lines.
fn exposed_families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// The family a selected metric name belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` series are its own family's.
fn family_of(name: &str, families: &BTreeMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families.get(base).is_some_and(|k| k == "histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

// === The test ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_prometheus_and_every_family_is_watched() {
    let mut scenario = Scenario::start();
    let prometheus = Prometheus::start(&scenario.admin_addrs());
    let started = Instant::now();
    // Prometheus sees the families that exist from the start before any traffic, and every
    // family once more between the two rounds, so each rate has growth to show.
    prometheus.wait_for_scrapes(1).await;
    scenario.drive().await;
    prometheus
        .wait_for_scrapes(prometheus.scrapes().await + 2)
        .await;
    scenario.again().await;
    prometheus
        .wait_for_scrapes(prometheus.scrapes().await + 2)
        .await;

    // Windows that cover everything since Prometheus started (Grafana derives them from
    // the dashboard's time range and the scrape interval).
    let window = format!("{}s", started.elapsed().as_secs() + 2);
    let builtins: BTreeMap<String, String> = [
        ("__rate_interval", window.as_str()),
        ("__interval", "1s"),
        ("__range", window.as_str()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let mut panels = 0;
    for (name, dashboard) in dashboards() {
        let values =
            variable_values(&prometheus, &name, &dashboard, &builtins, &mut problems).await;
        let fill = |text: &str| interpolate(text, |v| values.get(v).cloned());
        for var in variables(&dashboard).filter(|v| v["type"] == "query") {
            if let Ok(text) = fill(variable_query(var)) {
                let selector = label_values_args(&text).map(|(selector, _)| selector);
                used.extend(selector.and_then(metric_names).unwrap_or_default());
            }
        }
        for query in panel_queries(&name, &dashboard) {
            panels += 1;
            if let Err(e) = fill(&query.text).and_then(|text| metric_names(&text)) {
                problems.push(format!("{}: {e}", query.place));
            }
            used.extend(
                fill(&query.text)
                    .and_then(|t| metric_names(&t))
                    .unwrap_or_default(),
            );
            problems.extend(check(&prometheus, &query, &values).await);
        }
    }
    assert!(panels >= 100, "only {panels} panel queries found");

    // The checker itself: a query of a metric nobody exports is reported.
    let missing = Query {
        place: "probe".into(),
        text: "sum(rate(sluice_no_such_metric_total[$__rate_interval]))".into(),
        variable: false,
    };
    let found = check(&prometheus, &missing, &builtins).await;
    assert!(
        found.as_deref().is_some_and(|f| f.contains("no data")),
        "{found:?}"
    );

    let metrics = scenario.gw.metrics().await + &scenario.local.metrics().await;
    let families = exposed_families(&metrics);
    for (place, expr) in rule_exprs() {
        match metric_names(&expr) {
            Ok(names) => used.extend(names),
            Err(e) => problems.push(format!("{place}: {e}")),
        }
    }
    let used: BTreeSet<String> = used.iter().map(|n| family_of(n, &families)).collect();
    for family in families.keys().filter(|f| !used.contains(*f)) {
        problems.push(format!(
            "family {family} is on no dashboard panel and in no rule"
        ));
    }

    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n\nsluice /metrics:\n{metrics}\nPrometheus log:\n{}",
        problems.len(),
        problems.join("\n"),
        prometheus.log_text()
    );
}
