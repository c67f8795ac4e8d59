//! `sluice ab-report` against a real split: a control upstream answering in 5 ms and a
//! candidate in 40 ms, 50/50 by user. The report, read from sluice's /metrics (since start and
//! over a window) and from a real Prometheus scraping it, must call the candidate slower.

use futures_util::StreamExt;
use sluice_e2e::{
    chat_body, free_port, json_stdout, run_sluice, Gateway, Mock, Prometheus, PATIENCE,
};
use std::collections::HashMap;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const REQUESTS: usize = 1_500;
const IN_FLIGHT: usize = 16;

/// Two upstreams, a 50/50 split by user on `chat`, and a route without a split.
fn split_config(control: &Mock, candidate: &Mock) -> String {
    format!(
        r#"server:
  listen: ["{{listen}}"]
  threads: 1
admin:
  listen: "{{admin}}"
upstreams:
  control-up: {{ endpoints: [ {{ url: "{}" }} ] }}
  cand-up: {{ endpoints: [ {{ url: "{}" }} ] }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/chat/completions }}
    upstream: control-up
    split:
      sticky: header:x-user-id
      variants:
        - {{ name: control, weight: 50 }}
        - {{ name: candidate, weight: 50, upstream: cand-up }}
  - name: other
    match: {{ path_prefix: /v1/models }}
    upstream: control-up
"#,
        control.url, candidate.url
    )
}

fn start() -> (Mock, Mock, Gateway) {
    let control = Mock::start("control", &["--latency-ms", "5"]);
    let candidate = Mock::start("candidate", &["--latency-ms", "40"]);
    let gw = Gateway::start(&split_config(&control, &candidate));
    (control, candidate, gw)
}

/// Sends [`REQUESTS`] chats to `gw`, each from its own user, [`IN_FLIGHT`] at a time; `done`
/// counts answers as they come. Returns how many answers each variant (`x-sluice-variant`) gave.
async fn traffic(gw: &Gateway, done: &AtomicUsize) -> HashMap<String, u64> {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gw.url);
    let body = chat_body("mock-gpt-4o", 100, false);
    let answers = futures_util::stream::iter(0..REQUESTS)
        .map(|i| {
            let req = client
                .post(&url)
                .header("x-user-id", format!("user-{i}"))
                .body(body.clone());
            async move {
                let resp = req.send().await.expect("chat");
                assert_eq!(resp.status(), 200);
                let variant = resp.headers()["x-sluice-variant"]
                    .to_str()
                    .expect("ascii")
                    .to_string();
                resp.bytes().await.expect("body");
                done.fetch_add(1, Ordering::Relaxed);
                variant
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut by_variant = HashMap::new();
    for variant in answers.collect::<Vec<_>>().await {
        *by_variant.entry(variant).or_insert(0) += 1;
    }
    by_variant
}

/// Runs `sluice ab-report` with `args`.
async fn ab_report(args: &[&str]) -> Output {
    run_sluice("ab-report", args).await
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the text report's verdict calls the candidate slower at p < 0.01 (as printed).
fn assert_text_says_slower(out: &Output) {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let verdict = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("verdict"))
        .unwrap_or_else(|| panic!("no verdict line:\n{stdout}"));
    assert!(verdict.contains("candidate is slower"), "{stdout}");
    let (bound, printed) = match (verdict.rsplit_once("p < "), verdict.rsplit_once("p = ")) {
        (Some((_, p)), _) => (true, p),
        (None, Some((_, p))) => (false, p),
        (None, None) => panic!("no p in the verdict: {verdict}"),
    };
    let p: f64 = printed.trim().parse().expect("p is a number");
    assert!(
        if bound { p <= 0.01 } else { p < 0.01 },
        "p {printed}: {stdout}"
    );
}

/// Asserts the JSON report compares the candidate with control and calls it slower.
fn assert_json_says_slower(report: &serde_json::Value) {
    assert_eq!(report["route"], "chat");
    assert_eq!(report["baseline"], "control", "{report:#}");
    let comparison = &report["comparisons"][0];
    assert_eq!(comparison["candidate"], "candidate", "{report:#}");
    assert_eq!(comparison["verdict"], "slower", "{report:#}");
    for p in ["p_value", "always_valid_p"] {
        let value = comparison["latency"][p].as_f64().expect("p");
        assert!(value < 0.01, "{p} {value}: {report:#}");
    }
}

#[tokio::test]
async fn the_report_from_metrics_calls_the_slower_candidate_slower() {
    let (_control, _candidate, gw) = start();
    let metrics = format!("{}/metrics", gw.admin);
    let done = AtomicUsize::new(0);
    // A one-second window while the traffic flows (it lasts well over a second).
    let windowed = async {
        let deadline = Instant::now() + PATIENCE;
        while done.load(Ordering::Relaxed) < REQUESTS / 5 {
            assert!(Instant::now() < deadline, "traffic does not flow");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let args = ["--metrics", &metrics, "--route", "chat", "--window", "1s"];
        ab_report(&[&args[..], &["--json"]].concat()).await
    };
    let (by_variant, windowed) = tokio::join!(traffic(&gw, &done), windowed);
    let window = json_stdout(&windowed);
    let in_window = window["requests"].as_u64().expect("requests");
    assert!(
        (1..REQUESTS as u64).contains(&in_window),
        "{in_window} of {REQUESTS} requests in a 1s window"
    );
    assert_json_says_slower(&window);

    // Since start: every request, per variant as the clients saw it.
    let out = ab_report(&["--metrics", &metrics, "--route", "chat"]).await;
    assert_text_says_slower(&out);
    println!("{}", text(&out).0);
    let report =
        json_stdout(&ab_report(&["--metrics", &metrics, "--route", "chat", "--json"]).await);
    assert_json_says_slower(&report);
    assert_eq!(report["requests"], REQUESTS as u64);
    for v in report["variants"].as_array().expect("variants") {
        let name = v["variant"].as_str().expect("name");
        assert_eq!(
            v["requests"].as_u64(),
            by_variant.get(name).copied(),
            "{name}"
        );
    }
    let control = by_variant["control"];
    assert!(
        (600..=900).contains(&control),
        "control got {control} of {REQUESTS}"
    );

    // The traffic is over: a window now holds nothing to compare.
    let idle = ab_report(&["--metrics", &metrics, "--route", "chat", "--window", "1s"]).await;
    let (stdout, stderr) = text(&idle);
    assert!(!idle.status.success(), "{stdout}");
    assert!(
        stderr.contains("over 1s") && stderr.contains("no traffic"),
        "{stderr}"
    );
}

/// Asserts a failed run: non-zero exit, one line on stderr containing every one of `says`.
fn assert_fails(out: &Output, says: &[&str]) {
    let (stdout, stderr) = text(out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for s in says {
        assert!(stderr.contains(s), "`{s}` missing from: {stderr}");
    }
}

#[tokio::test]
async fn bad_sources_and_routes_fail_with_one_clear_line() {
    let (_control, _candidate, gw) = start();
    let metrics = format!("{}/metrics", gw.admin);
    let report = |url: String, route: &'static str| async move {
        ab_report(&["--metrics", &url, "--route", route]).await
    };
    let nobody = format!("http://127.0.0.1:{}/metrics", free_port());
    assert_fails(
        &report(nobody.clone(), "chat").await,
        &[&nobody, "onnection refused"],
    );
    let missing = format!("{}/nothing-here", gw.admin);
    assert_fails(
        &report(missing.clone(), "chat").await,
        &[&missing, "HTTP 404"],
    );
    let health = format!("{}/healthz", gw.admin);
    assert_fails(
        &report(health.clone(), "chat").await,
        &[&health, "is not a Prometheus exposition", "line 1"],
    );
    assert_fails(
        &report(metrics.clone(), "chta").await,
        &["unknown route `chta`", "routes in the metrics: chat, other"],
    );
    assert_fails(
        &report(metrics.clone(), "other").await,
        &["route `other` has no split"],
    );
    // A split route before its first request.
    assert_fails(
        &report(metrics.clone(), "chat").await,
        &["no traffic on route `chat`"],
    );
    // Usage: exactly one source, and --range only with Prometheus.
    for args in [
        &["--route", "chat"][..],
        &[
            "--route",
            "chat",
            "--metrics",
            &metrics,
            "--prometheus",
            "http://x",
            "--range",
            "1m",
        ],
        &["--route", "chat", "--metrics", &metrics, "--range", "1m"],
        &["--route", "chat", "--prometheus", "http://x"],
        &[
            "--route",
            "chat",
            "--prometheus",
            "http://x",
            "--range",
            "1m",
            "--window",
            "1s",
        ],
        &["--route", "chat", "--metrics", &metrics, "--window", "soon"],
    ] {
        let out = ab_report(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out).1);
    }
}

// === Prometheus ===

#[tokio::test]
async fn the_report_from_prometheus_calls_the_slower_candidate_slower() {
    let (_control, _candidate, gw) = start();
    let prometheus = Prometheus::start(&[gw.admin.trim_start_matches("http://")]);
    // Scraping before the traffic starts, so the range sees it grow.
    prometheus
        .wait_for("up{job=\"sluice\"}", |up| up == 1.0)
        .await;
    traffic(&gw, &AtomicUsize::new(0)).await;
    prometheus
        .wait_for("sum(sluice_requests_total{route=\"chat\"})", |n| {
            n == REQUESTS as f64
        })
        .await;
    prometheus
        .wait_for(
            "min(count_over_time(sluice_requests_total{route=\"chat\"}[1m]))",
            |samples| samples >= 2.0,
        )
        .await;
    let args = [
        "--prometheus",
        &prometheus.url,
        "--range",
        "1m",
        "--route",
        "chat",
    ];
    let out = ab_report(&args).await;
    assert_text_says_slower(&out);
    assert_json_says_slower(&json_stdout(
        &ab_report(&[&args[..], &["--json"]].concat()).await,
    ));
    let (stdout, _) = text(&out);
    assert!(
        stdout.starts_with(&format!(
            "data: Prometheus {}, increase over 1m",
            prometheus.url
        )),
        "{stdout}"
    );
    println!("{stdout}");
}
