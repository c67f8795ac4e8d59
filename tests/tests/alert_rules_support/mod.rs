//! Reading `grafana/rules/` for tests/alert_rules.rs: the rule and test files, the alerts and
//! their promtool test cases, the metrics and labels each rule expression selects, and the
//! heading anchors of the runbook page.

use promql_parser::parser::{self, Expr, LabelModifier};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_yaml::Value;
use sluice_e2e::{scrape, workspace};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// === The files ===

/// The files of `grafana/rules/` whose names end in `suffix`, sorted.
pub fn rule_dir_files(suffix: &str) -> Vec<PathBuf> {
    let dir = workspace().join("grafana/rules");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *{suffix} in {}", dir.display());
    out
}

pub fn rule_files() -> Vec<PathBuf> {
    rule_dir_files(".rules.yml")
}

pub fn test_files() -> Vec<PathBuf> {
    rule_dir_files(".test.yml")
}

/// Each rule file's name and YAML, with its groups evaluated every second instead of every
/// minute, for a Prometheus that must evaluate them within a test.
pub fn rules_every_second() -> Vec<(String, String)> {
    rule_files()
        .iter()
        .map(|path| {
            let mut doc = yaml(path);
            for group in doc["groups"].as_sequence_mut().unwrap() {
                group["interval"] = "1s".into();
            }
            (file_name(path), serde_yaml::to_string(&doc).unwrap())
        })
        .collect()
}

pub fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// A YAML mapping of scalars as strings (`exp_labels`, `labels`, `annotations`).
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
    };
    value
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (scalar(k), scalar(v)))
        .collect()
}

// === The alerts and their test cases ===

/// An alerting rule: several rules may share a name (a fast and a slow burn), told apart by
/// their static labels.
#[derive(Debug)]
pub struct Alert {
    pub name: String,
    pub file: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Alert {
    pub fn id(&self) -> String {
        format!("{} {:?} ({})", self.name, self.labels, self.file)
    }
}

pub fn alerts() -> Vec<Alert> {
    let mut out = Vec::new();
    for path in rule_files() {
        let doc = yaml(&path);
        let groups = doc["groups"].as_sequence().expect("groups");
        for rule in groups
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
        {
            if let Some(name) = rule["alert"].as_str() {
                out.push(Alert {
                    name: name.to_string(),
                    file: file_name(&path),
                    labels: string_map(&rule["labels"]),
                    annotations: string_map(&rule["annotations"]),
                });
            }
        }
    }
    assert!(!out.is_empty(), "no alerting rules in grafana/rules");
    out
}

/// An `alert_rule_test` entry: what alerts it expects, and which rule files its test file
/// loads (a case in a file that does not load the alert's rules is quiet for nothing).
#[derive(Debug)]
pub struct Case {
    pub alertname: String,
    pub loads: BTreeSet<String>,
    /// Each expected alert's `exp_labels` and `exp_annotations`.
    pub expected: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)>,
}

pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for path in test_files() {
        let doc = yaml(&path);
        let loads: BTreeSet<String> = doc["rule_files"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{}: no rule_files", path.display()))
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        for test in doc["tests"].as_sequence().expect("tests") {
            for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
                let expected = case["exp_alerts"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        (
                            string_map(&a["exp_labels"]),
                            string_map(&a["exp_annotations"]),
                        )
                    })
                    .collect();
                out.push(Case {
                    alertname: case["alertname"].as_str().unwrap().to_string(),
                    loads: loads.clone(),
                    expected,
                });
            }
        }
    }
    out
}

/// What is missing: for each alerting rule, a case where it fires with its labels and all its
/// annotations; for each alert name, a case where it is expected quiet.
pub fn untested(alerts: &[Alert], cases: &[Case]) -> Vec<String> {
    let mut problems = Vec::new();
    for alert in alerts {
        let mine = || {
            cases
                .iter()
                .filter(|c| c.alertname == alert.name && c.loads.contains(&alert.file))
        };
        let fires = mine().any(|c| {
            c.expected.iter().any(|(labels, annotations)| {
                alert.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
                    && annotations.keys().eq(alert.annotations.keys())
            })
        });
        if !fires {
            problems.push(format!(
                "{}: no test case where it fires with its labels and annotations",
                alert.id()
            ));
        }
        if !mine().any(|c| c.expected.is_empty()) {
            problems.push(format!("{}: no test case where it stays quiet", alert.id()));
        }
    }
    problems
}

// === Annotations and runbooks ===

/// The anchors GitHub gives the headings of a Markdown file (code blocks skipped): lower case,
/// punctuation dropped, spaces as hyphens, `-1`, `-2` ... on repeats.
pub fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        if in_code {
            continue;
        }
        let slug: String = title
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !anchors.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    anchors
}

// === The metrics the rules read, against a running sluice ===

/// Labels of the scrape target, not of sluice's exposition.
pub const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Every rule's `expr`, with the rule's name, and the names the recording rules record.
pub fn exprs() -> (Vec<(String, String)>, BTreeSet<String>) {
    let (mut exprs, mut recorded) = (Vec::new(), BTreeSet::new());
    for path in rule_files() {
        let doc = yaml(&path);
        for rule in doc["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
        {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            if let Some(record) = rule["record"].as_str() {
                recorded.insert(record.to_string());
            }
            exprs.push((name.to_string(), rule["expr"].as_str().unwrap().to_string()));
        }
    }
    (exprs, recorded)
}

/// The metrics an expression selects, each with the label names it must have: its matchers'
/// and those of the `by`/`without` of the aggregations around it.
#[derive(Default)]
pub struct Selected {
    pub found: Vec<(String, BTreeSet<String>)>,
    grouping: Vec<Vec<String>>,
}

impl ExprVisitor for Selected {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            Expr::Aggregate(agg) => {
                let labels = match &agg.modifier {
                    Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) => l.labels.clone(),
                    None => Vec::new(),
                };
                self.grouping.push(labels);
                return Ok(true);
            }
            _ => return Ok(true),
        };
        let name = selector.name.clone().ok_or("a selector without a name")?;
        let matchers = &selector.matchers;
        let labels = (matchers.matchers.iter())
            .chain(matchers.or_matchers.iter().flatten())
            .map(|m| &m.name)
            .chain(self.grouping.iter().flatten())
            .filter(|l| *l != "__name__" && !TARGET_LABELS.contains(&l.as_str()))
            .cloned()
            .collect();
        self.found.push((name, labels));
        Ok(true)
    }

    fn post_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        if let Expr::Aggregate(_) = expr {
            self.grouping.pop();
        }
        Ok(true)
    }
}

/// What is wrong with the rules against the metric names and label names of `exposed`: a
/// metric it does not have, a label its metric lacks, a recorded name no rule records.
pub fn unexposed(exposed: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let (exprs, recorded) = exprs();
    let mut problems = Vec::new();
    for (rule, expr) in exprs {
        let parsed = match parser::parse(&expr) {
            Ok(parsed) => parsed,
            Err(e) => {
                problems.push(format!("{rule}: {e}"));
                continue;
            }
        };
        let mut selected = Selected::default();
        if let Err(e) = walk_expr(&mut selected, &parsed) {
            problems.push(format!("{rule}: {e}"));
        }
        for (metric, labels) in selected.found {
            if metric.contains(':') {
                if !recorded.contains(&metric) {
                    problems.push(format!("{rule}: no rule records {metric}"));
                }
                continue;
            }
            let Some(have) = exposed.get(&metric) else {
                problems.push(format!("{rule}: sluice exposes no {metric}"));
                continue;
            };
            for missing in labels.difference(have) {
                problems.push(format!("{rule}: {metric} has no label {missing}"));
            }
        }
    }
    problems
}

/// Sample names of a `/metrics` text with the label names each carries.
pub fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in scrape(text).samples {
        let labels = out.entry(sample.name).or_default();
        labels.extend(sample.labels.into_iter().map(|(name, _)| name));
    }
    out
}
