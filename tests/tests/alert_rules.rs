//! The Prometheus rules in `grafana/rules/`: promtool accepts every rule file and passes every
//! unit test file beside them, and, read from the YAML, every alert has a test case where it
//! fires and one where it stays quiet, a severity, a summary, a description and a runbook_url
//! whose anchor is a heading of docs/operations.md. An alert nobody tested, or a runbook link
//! into nothing, fails here instead of at 3 a.m.

use serde_yaml::Value;
use sluice_e2e::workspace;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SEVERITIES: &[&str] = &["page", "ticket", "info"];
const RUNBOOK_PAGE: &str = "docs/operations.md";

// === The files ===

/// The files of `grafana/rules/` whose names end in `suffix`, sorted.
fn rule_dir_files(suffix: &str) -> Vec<PathBuf> {
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

fn rule_files() -> Vec<PathBuf> {
    rule_dir_files(".rules.yml")
}

fn test_files() -> Vec<PathBuf> {
    rule_dir_files(".test.yml")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// A YAML mapping of scalars as strings (`exp_labels`, `labels`, `annotations`).
fn string_map(value: &Value) -> BTreeMap<String, String> {
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

// === promtool ===

/// Runs `promtool <args> <files>` in `grafana/rules/`; a missing promtool fails the test.
fn promtool(args: &[&str], files: &[PathBuf]) -> Output {
    Command::new("promtool")
        .args(args)
        .args(files)
        .current_dir(workspace().join("grafana/rules"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}); the alert rules are checked with it: run `make deps` \
                 (Debian: apt-get install prometheus)"
            )
        })
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_every_rule_file() {
    let out = promtool(&["check", "rules"], &rule_files());
    assert_success("promtool check rules", &out);
}

#[test]
fn promtool_unit_tests_pass() {
    let out = promtool(&["test", "rules"], &test_files());
    assert_success("promtool test rules", &out);
}

// === The alerts and their test cases ===

/// An alerting rule: several rules may share a name (a fast and a slow burn), told apart by
/// their static labels.
#[derive(Debug)]
struct Alert {
    name: String,
    file: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl Alert {
    fn id(&self) -> String {
        format!("{} {:?} ({})", self.name, self.labels, self.file)
    }
}

fn alerts() -> Vec<Alert> {
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
struct Case {
    alertname: String,
    loads: BTreeSet<String>,
    /// Each expected alert's `exp_labels` and `exp_annotations`.
    expected: Vec<(BTreeMap<String, String>, BTreeMap<String, String>)>,
}

fn cases() -> Vec<Case> {
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
fn untested(alerts: &[Alert], cases: &[Case]) -> Vec<String> {
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

#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let problems = untested(&alerts(), &cases());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_coverage_check_reports_a_missing_quiet_case() {
    let alerts = alerts();
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| !(c.alertname == "SluiceUpstreamDown" && c.expected.is_empty()))
        .collect();
    let problems = untested(&alerts, &cases);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("SluiceUpstreamDown") && problems[0].ends_with("stays quiet"),
        "{problems:?}"
    );
}

// === Annotations and runbooks ===

/// The anchors GitHub gives the headings of a Markdown file (code blocks skipped): lower case,
/// punctuation dropped, spaces as hyphens, `-1`, `-2` ... on repeats.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
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

#[test]
fn heading_anchors_follow_github() {
    let anchors = heading_anchors(
        "# Operations\n## Alerts\n```sh\n# not a heading\n```\n### SluiceQueueFillingUp\n## Alerts\n## Config edits: reload\n",
    );
    let expected = [
        "operations",
        "alerts",
        "sluicequeuefillingup",
        "alerts-1",
        "config-edits-reload",
    ];
    assert_eq!(anchors, expected.iter().map(|s| s.to_string()).collect());
}

#[test]
fn every_alert_says_how_bad_what_and_where_its_runbook_is() {
    let doc = std::fs::read_to_string(workspace().join(RUNBOOK_PAGE)).unwrap();
    let anchors = heading_anchors(&doc);
    let mut problems = Vec::new();
    for alert in alerts() {
        let id = alert.id();
        let severity = alert.labels.get("severity").map(String::as_str);
        if !severity.is_some_and(|s| SEVERITIES.contains(&s)) {
            problems.push(format!(
                "{id}: severity {severity:?} is not one of {SEVERITIES:?}"
            ));
        }
        for key in ["summary", "description", "runbook_url"] {
            if alert
                .annotations
                .get(key)
                .is_none_or(|v| v.trim().is_empty())
            {
                problems.push(format!("{id}: no {key} annotation"));
            }
        }
        if alert
            .annotations
            .get("description")
            .is_some_and(|d| !d.contains("$labels."))
        {
            problems.push(format!("{id}: the description names no label"));
        }
        if let Some(url) = alert.annotations.get("runbook_url") {
            match url.split_once('#') {
                Some((RUNBOOK_PAGE, anchor)) if anchors.contains(anchor) => {}
                Some((RUNBOOK_PAGE, anchor)) => {
                    problems.push(format!("{id}: {RUNBOOK_PAGE} has no heading #{anchor}"))
                }
                _ => problems.push(format!("{id}: runbook_url {url} is not {RUNBOOK_PAGE}#...")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
