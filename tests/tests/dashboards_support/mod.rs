//! What the dashboard tests share: the queries of `grafana/dashboards/*.json` (panel targets
//! and query variables) with Grafana's variables filled in, the metric names a PromQL
//! expression reads, the expressions of the alert and recording rules in `grafana/rules/`, and
//! a sluice driven through every feature the dashboards show (`scenario`).
#![allow(dead_code)] // each test binary uses its own subset

pub mod scenario;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;
use sluice_e2e::workspace;
use std::collections::BTreeSet;

// === The dashboards ===

/// One PromQL query of a dashboard and where it is, for the failure message.
pub struct Query {
    pub place: String,
    pub text: String,
    /// A query variable, `label_values(selector, label)`, rather than a panel's `expr`.
    pub variable: bool,
}

/// Every `grafana/dashboards/*.json`, by file name, parsed.
pub fn dashboards() -> Vec<(String, Value)> {
    let dir = workspace().join("grafana/dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

/// Every panel of a dashboard, those inside collapsed rows included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The dashboard's template variables, in order (a variable may use the ones before it).
pub fn variables(dashboard: &Value) -> impl Iterator<Item = &Value> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
}

/// A query variable's query (Grafana 10+ stores {query, refId}; older files a bare string).
pub fn variable_query(var: &Value) -> &str {
    (var["query"]["query"].as_str())
        .or(var["query"].as_str())
        .unwrap_or_default()
}

/// The panel targets of a dashboard.
pub fn panel_queries(name: &str, dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_else(|| {
                panic!("{name}: panel {} has a target without expr", panel["id"])
            });
            out.push(Query {
                place: format!(
                    "{name}: panel {} \"{}\" target {}",
                    panel["id"],
                    panel["title"].as_str().unwrap_or_default(),
                    target["refId"].as_str().unwrap_or_default()
                ),
                text: expr.to_string(),
                variable: false,
            });
        }
    }
    out
}

/// Every query of a dashboard: panel targets, then query variables.
pub fn queries(name: &str, dashboard: &Value) -> Vec<Query> {
    let mut out = panel_queries(name, dashboard);
    for var in variables(dashboard).filter(|v| v["type"] == "query") {
        out.push(Query {
            place: format!(
                "{name}: variable {}",
                var["name"].as_str().unwrap_or_default()
            ),
            text: variable_query(var).to_string(),
            variable: true,
        });
    }
    out
}

// === Grafana's variables ===

/// `text` with `$name`, `${name}` and `${name:format}` replaced by `value(name)`; an unknown
/// variable is an error. `$1` and `${1}` are regex groups (label_replace), which Grafana
/// leaves alone.
pub fn interpolate(text: &str, value: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, token_len) = match after.strip_prefix('{') {
            Some(braced) => {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {text}"))?;
                let inner = &braced[..end];
                (inner.split(':').next().unwrap_or(inner), end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        let token = &rest[at..at + 1 + token_len];
        if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(token);
        } else {
            let value = value(name).ok_or_else(|| format!("unknown variable {token}"))?;
            out.push_str(&value);
        }
        rest = &rest[at + 1 + token_len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The selector and label of a `label_values(selector, label)` variable query.
pub fn label_values_args(text: &str) -> Result<(&str, &str), String> {
    let (selector, label) = text
        .strip_prefix("label_values(")
        .and_then(|t| t.strip_suffix(')'))
        .and_then(|t| t.rsplit_once(','))
        .ok_or_else(|| format!("not label_values(metric, label): {text}"))?;
    Ok((selector.trim(), label.trim()))
}

// === Metric names ===

/// The metric names the selectors of `promql` read.
pub fn metric_names(promql: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
            let selector = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            match &selector.name {
                Some(name) => {
                    self.0.insert(name.clone());
                    Ok(true)
                }
                None => Err(format!("selector without a metric name: {expr}")),
            }
        }
    }
    let expr =
        parser::parse(promql).map_err(|e| format!("PromQL does not parse ({e}): {promql}"))?;
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &expr)?;
    Ok(names.0)
}

// === Alert and recording rules ===

/// Every `expr` of the rule files in `grafana/rules/` (files with `groups:`; promtool's test
/// files have `tests:` instead), each with its place; none while the directory does not exist.
pub fn rule_exprs() -> Vec<(String, String)> {
    let dir = workspace().join("grafana/rules");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for group in yaml["groups"].as_sequence().into_iter().flatten() {
            for rule in group["rules"].as_sequence().into_iter().flatten() {
                let Some(expr) = rule["expr"].as_str() else {
                    continue;
                };
                let what = (rule["alert"].as_str())
                    .or(rule["record"].as_str())
                    .unwrap_or_default();
                out.push((format!("{name}: rule {what}"), expr.to_string()));
            }
        }
    }
    out
}
