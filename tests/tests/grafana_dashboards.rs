//! The Grafana dashboards (`grafana/dashboards/*.json`) against a running sluice: every panel
//! and variable query parses as PromQL once Grafana's variables are filled in, and names only
//! metrics, and labels of those metrics, that a sluice driven through every feature exposes
//! (dashboards_support/scenario.rs). A renamed metric or a typo fails here instead of showing
//! an empty panel; a label the panel groups by that the metric lacks (which Prometheus
//! answers without complaint) fails here too.

mod dashboards_support;

use dashboards_support::scenario::Scenario;
use dashboards_support::{dashboards, label_values_args, panels, queries, variables, Query};
use promql_parser::parser::{self, Expr, LabelModifier};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::json;
use sluice_e2e::{scrape, workspace};
use std::collections::{BTreeMap, BTreeSet};

// === Grafana's variables ===

/// What each variable stands for while checking: plausible values in the form Grafana sends
/// (a multi-value variable becomes a regex alternation).
const VARIABLES: &[(&str, &str)] = &[
    ("datasource", "sluice-prometheus"),
    ("route", "chat"),
    ("variant", "(control|candidate)"),
    ("upstream", "(primary|candidate)"),
    ("endpoint", "(http://127\\\\.0\\\\.0\\\\.1:8001)"),
    ("tier", "(memory|redis|disk)"),
    ("key", "(app-a)"),
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__range_ms", "3600000"),
];

/// `text` with Grafana's variables replaced by [`VARIABLES`].
fn interpolate(text: &str) -> Result<String, String> {
    dashboards_support::interpolate(text, |name| {
        VARIABLES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
}

// === What a query uses ===

/// A metric name a query selects, with the label names it needs that metric to have.
#[derive(Debug)]
struct Use {
    metric: String,
    labels: BTreeSet<String>,
}

/// Collects every selector, with the labels it must have: its matchers' and the `by (...)`
/// labels of the aggregations around it (else the grouping silently collapses), except those
/// a label_replace or label_join inside the aggregation makes.
#[derive(Default)]
struct Uses {
    found: Vec<Use>,
    problems: Vec<String>,
    grouping: Vec<BTreeSet<String>>,
}

impl ExprVisitor for Uses {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            Expr::Aggregate(agg) => {
                let made = made_labels(&agg.expr);
                let by = match &agg.modifier {
                    Some(LabelModifier::Include(by)) => by.labels.iter(),
                    _ => [].iter(),
                };
                self.grouping
                    .push(by.filter(|l| !made.contains(*l)).cloned().collect());
                return Ok(true);
            }
            _ => return Ok(true),
        };
        let Some(metric) = &selector.name else {
            self.problems
                .push(format!("selector without a metric name: {expr}"));
            return Ok(true);
        };
        let matchers = &selector.matchers;
        let labels = (matchers.matchers.iter())
            .chain(matchers.or_matchers.iter().flatten())
            .map(|m| &m.name)
            .chain(self.grouping.iter().flatten())
            .filter(|name| *name != "__name__")
            .cloned()
            .collect();
        self.found.push(Use {
            metric: metric.clone(),
            labels,
        });
        Ok(true)
    }

    fn post_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        if let Expr::Aggregate(_) = expr {
            self.grouping.pop();
        }
        Ok(true)
    }
}

/// Labels that label_replace / label_join calls in `expr` write (their second argument).
fn made_labels(expr: &Expr) -> BTreeSet<String> {
    struct Made(BTreeSet<String>);
    impl ExprVisitor for Made {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            if let Expr::Call(call) = expr {
                if ["label_replace", "label_join"].contains(&call.func.name) {
                    if let Some(Expr::StringLiteral(s)) = call.args.args.get(1).map(|a| &**a) {
                        self.0.insert(s.val.clone());
                    }
                }
            }
            Ok(true)
        }
    }
    let mut made = Made(BTreeSet::new());
    let _ = walk_expr(&mut made, expr);
    made.0
}

/// What `query` uses once its variables are filled in, or why it cannot be read.
fn uses(query: &Query) -> Result<Vec<Use>, String> {
    let text = interpolate(&query.text)?;
    let (promql, label) = if query.variable {
        let (selector, label) = label_values_args(&text)?;
        (selector, Some(label.to_string()))
    } else {
        (text.as_str(), None)
    };
    let expr =
        parser::parse(promql).map_err(|e| format!("PromQL does not parse ({e}): {promql}"))?;
    let mut found = Uses::default();
    walk_expr(&mut found, &expr)?;
    if !found.problems.is_empty() {
        return Err(found.problems.join("; "));
    }
    if let (Some(label), [only]) = (label, found.found.as_mut_slice()) {
        only.labels.insert(label);
    }
    Ok(found.found)
}

// === What sluice exposes ===

/// Sample names of a Prometheus text exposition, each with the label names it carries.
fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in scrape(text).samples {
        let labels = out.entry(sample.name).or_default();
        labels.extend(sample.labels.into_iter().map(|(name, _)| name));
    }
    out
}

/// Everything wrong with `queries` against `exposed`, one line each.
fn problems(queries: &[Query], exposed: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for query in queries {
        let mut found = BTreeSet::new();
        match uses(query) {
            Err(e) => {
                found.insert(e);
            }
            Ok(uses) => {
                for u in uses {
                    let Some(have) = exposed.get(&u.metric) else {
                        found.insert(format!("metric {} is not exposed by sluice", u.metric));
                        continue;
                    };
                    for missing in u.labels.difference(have) {
                        found.insert(format!("{} has no label {missing} ({have:?})", u.metric));
                    }
                }
            }
        }
        out.extend(found.into_iter().map(|f| format!("{}: {f}", query.place)));
    }
    out
}

// === Tests ===

#[test]
fn the_checker_reports_misspelled_metrics_labels_variables_and_bad_promql() {
    let scrape = "# TYPE sluice_requests_total counter\n\
                  sluice_requests_total{code=\"200\",route=\"chat\",upstream=\"a,b\",variant=\"x\\\"y\"} 3\n\
                  sluice_request_duration_seconds_bucket{route=\"chat\",variant=\"\",le=\"+Inf\"} 3\n";
    let exposed = exposed(scrape);
    assert_eq!(
        exposed["sluice_requests_total"],
        BTreeSet::from(["code", "route", "upstream", "variant"].map(String::from))
    );
    // (a variable query?, the query, what the checker must say; "" = nothing)
    let cases = [
        (false, r#"sum by (variant) (rate(sluice_requests_total{route="$route", variant=~"${variant:regex}"}[$__rate_interval]))"#, ""),
        (false, "histogram_quantile(0.5, sum by (variant, le) (rate(sluice_request_duration_seconds_bucket[$__range])))", ""),
        (false, r#"sum by (class) (label_replace(sluice_requests_total, "class", "${1}xx", "code", "(.).."))"#, ""),
        (true, r#"label_values(sluice_requests_total{route="$route"}, variant)"#, ""),
        (false, "rate(sluice_request_total[5m])", "metric sluice_request_total is not exposed"),
        (false, "sum by (varient) (sluice_requests_total)", "has no label varient"),
        (false, r#"sluice_requests_total{rout="chat"}"#, "has no label rout"),
        (false, "sluice_request_duration_seconds", "metric sluice_request_duration_seconds is not"),
        (false, "sum(rate(sluice_requests_total[5m])", "PromQL does not parse"),
        (false, "rate(sluice_requests_total[$nope])", "unknown variable $nope"),
        (false, r#"{__name__=~"sluice_.*"}"#, "selector without a metric name"),
        (true, "label_values(sluice_requests_total, varient)", "has no label varient"),
    ];
    for (variable, text, want) in cases {
        let query = Query {
            place: "q".into(),
            text: text.into(),
            variable,
        };
        let found = problems(&[query], &exposed);
        match want {
            "" => assert!(found.is_empty(), "{text}: {found:?}"),
            _ => assert!(
                found.len() == 1 && found[0].contains(want),
                "{text}: {found:?}, want {want:?}"
            ),
        }
    }
}

#[test]
fn dashboards_are_well_formed_and_use_the_provisioned_datasource() {
    let grafana = workspace().join("grafana");
    let read_yaml = |path: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(grafana.join(path)).unwrap();
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let datasource = read_yaml("provisioning/datasources/sluice.yaml");
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    assert_eq!(
        datasource["datasources"][0]["type"].as_str(),
        Some("prometheus")
    );
    let provider = read_yaml("provisioning/dashboards/sluice.yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let compose = read_yaml("docker-compose.yml");
    let mounts = format!("{:?}", compose["services"]["grafana"]["volumes"]);
    assert!(
        mounts.contains(&format!("./dashboards:{path}")),
        "docker-compose.yml mounts the dashboards where the provider reads them ({path}): {mounts}"
    );

    let mut uids = BTreeSet::new();
    for (name, dashboard) in dashboards() {
        let dash_uid = dashboard["uid"].as_str().unwrap_or_default();
        assert!(
            !dash_uid.is_empty() && uids.insert(dash_uid.to_string()),
            "{name}: uid {dash_uid:?}"
        );
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: panel without id"));
            assert!(ids.insert(id), "{name}: panel id {id} is used twice");
            let targets = panel["targets"].as_array().into_iter().flatten();
            for ds in targets
                .map(|t| &t["datasource"])
                .chain([&panel["datasource"]])
            {
                assert!(
                    ds.is_null() || ds["uid"] == "${datasource}",
                    "{name}: panel {id} datasource {ds}"
                );
            }
        }
        let var = variables(&dashboard)
            .find(|v| v["type"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(var["name"], "datasource", "{name}");
        assert_eq!(var["query"], "prometheus", "{name}");
        assert_eq!(
            var["current"]["value"],
            json!(uid),
            "{name}: defaults to the provisioned datasource"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_metrics_a_running_sluice_exposes() {
    let mut scenario = Scenario::start();
    scenario.drive().await;
    let queries: Vec<Query> = dashboards()
        .iter()
        .flat_map(|(name, dashboard)| queries(name, dashboard))
        .collect();
    assert!(queries.len() >= 100, "only {} queries found", queries.len());
    // Both sluices: the second keeps a key budget of its own, which only it reports.
    let scrape = scenario.gw.metrics().await;
    let mut exposed = exposed(&scrape);
    for (name, labels) in self::exposed(&scenario.local.metrics().await) {
        exposed.entry(name).or_default().extend(labels);
    }
    let found = problems(&queries, &exposed);
    assert!(
        found.is_empty(),
        "{} problems in the dashboards:\n{}\n\nscrape:\n{scrape}",
        found.len(),
        found.join("\n")
    );
}
