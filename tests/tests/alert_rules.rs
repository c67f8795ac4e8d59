//! The Prometheus rules in `grafana/rules/`: promtool accepts every rule file and passes every
//! unit test file beside them, and, read from the YAML, every alert has a test case where it
//! fires and one where it stays quiet, a severity, a summary, a description and a runbook_url
//! whose anchor is a heading of docs/operations.md; every metric and label the rules read is
//! one a running sluice exposes, and a real Prometheus scraping sluice evaluates every rule
//! without error. An alert nobody tested, a renamed metric it reads, a match that fails on real
//! series or a runbook link into nothing fails here instead of at 3 a.m.

mod alert_rules_support;

use alert_rules_support::{
    alerts, cases, exposed, exprs, heading_anchors, rule_files, rules_every_second, test_files,
    unexposed, untested, Case, Selected,
};
use promql_parser::parser;
use promql_parser::util::walk_expr;
use sluice_e2e::{config, sha256, workspace, Gateway, Mock, Prometheus, RedisServer, PATIENCE};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const SEVERITIES: &[&str] = &["page", "ticket", "info"];
const RUNBOOK_PAGE: &str = "docs/operations.md";

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

// === The metrics the rules read, against a running sluice ===

#[test]
fn the_exposure_check_reports_unknown_metrics_labels_and_records() {
    let mut exposed = BTreeMap::new();
    exposed.insert(
        "sluice_requests_total".to_string(),
        ["route", "upstream"].map(String::from).into(),
    );
    let problems = unexposed(&exposed).join("\n");
    assert!(
        problems.contains("sluice_requests_total has no label code"),
        "{problems}"
    );
    assert!(
        problems.contains("sluice exposes no sluice_queue_max"),
        "{problems}"
    );
    assert!(!problems.contains("no rule records"), "{problems}");
}

const KEY: &str = "sk-sluice-alert-rules";

/// A route with a cache, a token limit, a queue, outlier detection and a key with a budget:
/// the families of this instance's own buckets.
fn local_config(mock: &Mock, disk: &Path) -> String {
    config(
        &[&mock.url],
        "    max_concurrency: 4\n    queue: { max: 8, timeout: 5s }\n    outlier: { consecutive_failures: 5 }\n",
        "  - name: chat\n    upstream: up\n    auth: optional\n    cache: { ttl: 60s }\n    limits:\n      - { name: per-key-tpm, key: api_key, tokens_per_minute: 100000 }\n",
    ) + &format!(
        "cache:\n  memory: {{ max_bytes: 16MiB }}\n  disk: {{ path: \"{}\", max_bytes: 16MiB }}\n\
         pricing:\n  mock-gpt-4o: {{ input: 1, output: 1 }}\n\
         keys:\n  - {{ name: app-a, team: red, hash: \"sha256:{}\", budget: {{ usd: 10, per: 30d }} }}\n",
        disk.display(),
        sha256(KEY.as_bytes())
    )
}

/// The same route with a Redis cache tier and a shared limit: the Redis families.
fn redis_config(mock: &Mock, redis: &RedisServer) -> String {
    config(
        &[&mock.url],
        "",
        "  - name: chat\n    upstream: up\n    cache: { ttl: 60s }\n    limits:\n      - { name: shared-rps, key: api_key, requests_per_second: 100, burst: 100, shared: true, instances: 2 }\n",
    ) + &format!(
        "redis:\n  url: \"{}\"\n  timeout: 100ms\ncache:\n  redis: true\n",
        redis.url()
    )
}

/// Sends the same chat request twice: a miss, then a hit.
async fn exercise(gw: &Gateway) {
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let resp = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(KEY)
            .body(r#"{"model":"mock-gpt-4o","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", gw.log_text());
    }
}

/// The metric names and label names of both gateways together, once every name in `wanted`
/// is there (some gauges are set by a sweep) or after the harness's patience.
async fn exposed_by(
    gws: &[&Gateway],
    wanted: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for gw in gws {
            for (name, labels) in exposed(&gw.metrics().await) {
                all.entry(name).or_default().extend(labels);
            }
        }
        if wanted.iter().all(|name| all.contains_key(name)) || std::time::Instant::now() > deadline
        {
            return all;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Two exercised sluices, the second on Redis, and what they run on.
struct Sluices {
    local: Gateway,
    shared: Gateway,
    _redis: RedisServer,
    _mock: Mock,
    _disk: tempfile::TempDir,
}

async fn sluices() -> Sluices {
    let mock = Mock::start("alerts", &[]);
    let disk = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let local = Gateway::start(&local_config(&mock, disk.path()));
    let shared = Gateway::start(&redis_config(&mock, &redis));
    exercise(&local).await;
    exercise(&shared).await;
    Sluices {
        local,
        shared,
        _redis: redis,
        _mock: mock,
        _disk: disk,
    }
}

#[tokio::test]
async fn every_metric_and_label_the_rules_read_is_exposed_by_sluice() {
    let sluices = sluices().await;
    // The names the rules select, so the scrapes wait for families set late (at a sweep).
    let mut wanted = BTreeSet::new();
    for (_, expr) in exprs().0 {
        let mut selected = Selected::default();
        walk_expr(&mut selected, &parser::parse(&expr).unwrap()).unwrap();
        wanted.extend(
            selected
                .found
                .into_iter()
                .map(|(m, _)| m)
                .filter(|m| !m.contains(':')),
        );
    }
    let all = exposed_by(&[&sluices.local, &sluices.shared], &wanted).await;
    let problems = unexposed(&all);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// === In a real Prometheus ===

#[tokio::test]
async fn every_rule_evaluates_without_error_on_a_real_prometheus_scraping_sluice() {
    let sluices = sluices().await;
    let targets: Vec<&str> = [&sluices.local, &sluices.shared]
        .iter()
        .map(|gw| gw.admin.trim_start_matches("http://"))
        .collect();
    let prometheus = Prometheus::start_with_rules(&targets, &rules_every_second());
    // Both scraped, and the recording rules evaluated on what was scraped.
    prometheus
        .wait_for(
            "count(up == 1) + count(route:sluice_cache_lookups:rate30m)",
            |n| n == 3.0,
        )
        .await;
    // Two more rounds of every group on the scraped series.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let groups = prometheus.rule_groups().await.unwrap();
    let mut rules = 0;
    let mut problems = Vec::new();
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        rules += 1;
        if rule["health"] != "ok" {
            problems.push(format!(
                "{}: {} {}",
                rule["name"], rule["health"], rule["lastError"]
            ));
        }
    }
    assert_eq!(rules, exprs().0.len(), "{groups:#?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
