//! `sluice report` against a real sluice: an upstream whose second endpoint answers 150 ms
//! slower, a route whose traffic exceeds its request rate, and a caching route whose prompts
//! never repeat. Read over a window from /metrics, the report must name each problem where it
//! is, and so must the report from a real Prometheus scraping it; a quiet, healthy sluice must
//! get no warning; an unreachable source fails in one line.

use futures_util::StreamExt;
use serde_json::{json, Value};
use sluice_e2e::{free_port, json_stdout, metric_sum, run_sluice, Gateway, Mock, Prometheus};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long each of the troubled sluice's clients keeps sending.
const TRAFFIC: Duration = Duration::from_secs(5);

fn troubled_config(fast: &Mock, slow: &Mock, other: &Mock) -> String {
    format!(
        r#"server:
  listen: ["{{listen}}"]
  threads: 1
admin:
  listen: "{{admin}}"
upstreams:
  pair: {{ endpoints: [ {{ url: "{}" }}, {{ url: "{}" }} ] }}
  single: {{ endpoints: [ {{ url: "{}" }} ] }}
routes:
  - name: chat
    match: {{ model: chat }}
    upstream: pair
  - name: limited
    match: {{ model: limited }}
    upstream: single
    limits:
      - {{ name: per-key-rps, key: api_key, requests_per_second: 5, burst: 5 }}
  - name: cached
    match: {{ model: cached }}
    upstream: single
    cache: {{ ttl: 10m }}
"#,
        fast.url, slow.url, other.url
    )
}

/// Sends chats for `model` until `stop`, `in_flight` at a time, pausing `pause` after each,
/// cycling through `distinct` prompts. Returns the status codes.
async fn send_until(
    gw: &Gateway,
    model: &str,
    distinct: usize,
    in_flight: usize,
    pause: Duration,
    stop: &AtomicBool,
) -> Vec<u16> {
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gw.url);
    futures_util::stream::iter(0..)
        .take_while(|_| std::future::ready(!stop.load(Ordering::Relaxed)))
        .map(|n| {
            let req = client
                .post(&url)
                .header("authorization", "Bearer client-key")
                .json(&json!({
                    "model": model,
                    "messages": [{"role": "user", "content": format!("prompt number {}", n % distinct)}]
                }));
            async move {
                let resp = req.send().await.expect("chat");
                let status = resp.status().as_u16();
                resp.bytes().await.expect("body");
                tokio::time::sleep(pause).await;
                status
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await
}

/// Runs `sluice report` with `args`.
async fn report(args: &[&str]) -> Output {
    run_sluice("report", args).await
}

/// The findings of `kind`.
fn findings<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

fn route<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .find(|r| r["route"] == name)
        .unwrap_or_else(|| panic!("no route {name}: {report:#}"))
}

/// The troubled sluice: `pair` is a fast endpoint and one 150 ms slower.
struct Troubled {
    _mocks: [Mock; 2],
    slow: Mock,
    gw: Gateway,
}

impl Troubled {
    fn start() -> Troubled {
        let fast = Mock::start("fast", &[]);
        let slow = Mock::start("slow", &["--latency-ms", "150"]);
        let other = Mock::start("other", &[]);
        let gw = Gateway::start(&troubled_config(&fast, &slow, &other));
        Troubled {
            _mocks: [fast, other],
            slow,
            gw,
        }
    }

    /// Chats on every route until `stop`: `chat` 4 at a time, `limited` far over its rate,
    /// `cached` with prompts that never repeat; checks the answers and returns how many chats
    /// were answered.
    async fn traffic(&self, stop: &AtomicBool) -> usize {
        let pause = Duration::from_millis(20);
        let (chat, limited, cached) = tokio::join!(
            send_until(&self.gw, "chat", usize::MAX, 4, Duration::ZERO, stop),
            send_until(&self.gw, "limited", usize::MAX, 1, pause, stop),
            send_until(&self.gw, "cached", usize::MAX, 1, pause, stop),
        );
        assert!(chat.iter().all(|s| *s == 200), "{chat:?}");
        assert!(
            limited.contains(&429) && limited.contains(&200),
            "{limited:?}"
        );
        assert!(cached.iter().all(|s| *s == 200), "{cached:?}");
        chat.len()
    }

    /// Asserts the report names the three problems where they are, and nothing else.
    fn assert_named(&self, r: &Value) {
        let slow = &self.slow;
        let slow_ones = findings(r, "slow_endpoint");
        assert_eq!(slow_ones.len(), 1, "{r:#}");
        assert_eq!(slow_ones[0]["upstream"], "pair");
        assert_eq!(slow_ones[0]["endpoint"], slow.url.as_str());
        assert_eq!(slow_ones[0]["severity"], "warning");

        let limits = findings(r, "rate_limited");
        assert_eq!(limits.len(), 1, "{r:#}");
        assert_eq!(limits[0]["route"], "limited");
        assert!(
            limits[0]["message"]
                .as_str()
                .unwrap()
                .contains("per-key-rps"),
            "{r:#}"
        );
        let limited_route = route(r, "limited");
        assert!(
            limited_route["rate_limited"].as_u64().unwrap() >= 20,
            "{r:#}"
        );

        let caches = findings(r, "low_cache_hit_rate");
        assert_eq!(caches.len(), 1, "{r:#}");
        assert_eq!(caches[0]["route"], "cached");
        assert!(
            caches[0]["message"]
                .as_str()
                .unwrap()
                .contains("every lookup was a miss"),
            "{r:#}"
        );
        assert_eq!(route(r, "cached")["cache_hit_rate"], 0.0);
        assert_eq!(route(r, "chat")["cache_hit_rate"], Value::Null);
        let others: Vec<&Value> = r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                !["slow_endpoint", "rate_limited", "low_cache_hit_rate"]
                    .contains(&f["kind"].as_str().unwrap())
            })
            .collect();
        assert!(others.is_empty(), "no other problem is invented: {r:#}");
    }
}

#[tokio::test]
async fn the_report_names_the_slow_endpoint_the_limited_route_and_the_useless_cache() {
    let t = Troubled::start();
    let metrics = format!("{}/metrics", t.gw.admin);
    let stop = AtomicBool::new(false);
    let window = async {
        // The window opens once every client is sending.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = report(&["--json", "--metrics", &metrics, "--window", "3s"]).await;
        let text = report(&["--metrics", &metrics]).await;
        tokio::time::sleep(TRAFFIC.saturating_sub(Duration::from_millis(500))).await;
        stop.store(true, Ordering::Relaxed);
        (out, text)
    };
    let ((out, text), chats) = tokio::join!(window, t.traffic(&stop));
    let r = json_stdout(&out);
    println!("{r:#}");
    let window_s = r["window_s"].as_f64().expect("window_s");
    assert!((3.0..3.5).contains(&window_s), "{window_s}");
    t.assert_named(&r);

    // Every route's numbers are there, in the window.
    let chat_route = route(&r, "chat");
    let requests = chat_route["requests"].as_u64().unwrap();
    assert!(
        requests >= 20 && (requests as usize) < chats,
        "{requests} of {chats}"
    );
    let rps = chat_route["rps"].as_f64().unwrap();
    assert!((rps - requests as f64 / window_s).abs() < 1e-6);
    // Half the requests wait 150 ms: the median is below, the p99 at or above.
    let (p50, p99) = (
        chat_route["p50_s"].as_f64().unwrap(),
        chat_route["p99_s"].as_f64().unwrap(),
    );
    assert!(p50 <= p99 && p99 >= 0.15, "p50 {p50}, p99 {p99}");
    // Where the time went: mostly waiting for the upstream, the rest in sluice.
    let upstream = chat_route["upstream_share"]
        .as_f64()
        .expect("upstream_share");
    let gateway = chat_route["gateway_share"].as_f64().expect("gateway_share");
    assert!(
        upstream > 0.8 && (upstream + gateway - 1.0).abs() < 1e-6,
        "{r:#}"
    );
    let gateway_p99 = chat_route["gateway_p99_s"].as_f64().expect("gateway_p99_s");
    assert!(gateway_p99 > 0.0 && gateway_p99 < p99, "{r:#}");
    // The text report, since start, says the same in words.
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(text.status.success(), "{stdout}");
    for words in [
        "slow_endpoint",
        "rate_limited",
        "low_cache_hit_rate",
        "what to do:",
        "totals since start",
    ] {
        assert!(stdout.contains(words), "`{words}` missing:\n{stdout}");
    }
}

#[tokio::test]
async fn a_quiet_healthy_sluice_gets_no_warning() {
    let a = Mock::start("a", &["--latency-ms", "20"]);
    let b = Mock::start("b", &["--latency-ms", "20"]);
    let gw = Gateway::start(&sluice_e2e::config(
        &[&a.url, &b.url],
        "",
        "  - name: chat\n    match: { path_prefix: /v1 }\n    upstream: up\n    cache: { ttl: 10m }\n",
    ));
    let metrics = format!("{}/metrics", gw.admin);
    let stop = AtomicBool::new(false);
    let window = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = report(&["--json", "--metrics", &metrics, "--window", "2s"]).await;
        stop.store(true, Ordering::Relaxed);
        out
    };
    let (out, answers) = tokio::join!(
        window,
        send_until(&gw, "m", 5, 2, Duration::from_millis(10), &stop)
    );
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    let r = json_stdout(&out);
    println!("{r:#}");
    let chat = route(&r, "chat");
    assert!(chat["requests"].as_u64().unwrap() >= 20, "{r:#}");
    assert!(chat["cache_hit_rate"].as_f64().unwrap() > 0.5, "{r:#}");
    let loud: Vec<&Value> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] != "info")
        .collect();
    assert!(loud.is_empty(), "{r:#}");
}

#[tokio::test]
async fn an_unreachable_source_fails_in_one_line_that_names_it() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let with_password = format!("http://me:hunter2@127.0.0.1:{port}/metrics");
    for (given, shown) in [
        (url.clone(), url.clone()),
        (
            with_password,
            format!("http://me:<redacted>@127.0.0.1:{port}/metrics"),
        ),
    ] {
        for args in [
            vec!["--metrics", &given],
            vec!["--json", "--metrics", &given, "--window", "1s"],
        ] {
            let out = report(&args).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}");
            assert!(out.stdout.is_empty(), "{args:?}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains(&shown) && stderr.contains("onnection refused"),
                "{stderr}"
            );
            assert!(!stderr.contains("hunter2"), "{stderr}");
        }
    }
    let prometheus = format!("http://127.0.0.1:{port}");
    let out = report(&["--prometheus", &prometheus, "--range", "5m"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{prometheus}/api/v1/query")),
        "{stderr}"
    );
}

// === From Prometheus ===

#[tokio::test]
async fn the_report_from_prometheus_names_the_same_problems() {
    let t = Troubled::start();
    let prometheus = Prometheus::start(&[t.gw.admin.trim_start_matches("http://")]);
    // Scraping before the traffic starts, so the range sees the counters grow.
    prometheus
        .wait_for("up{job=\"sluice\"}", |up| up >= 1.0)
        .await;
    let stop = AtomicBool::new(false);
    let stopper = async {
        tokio::time::sleep(TRAFFIC).await;
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(stopper, t.traffic(&stop));
    // Scraped after the traffic: every answer is in Prometheus.
    let answered = metric_sum(&t.gw.metrics().await, "sluice_requests_total", &[]);
    prometheus
        .wait_for("sum(sluice_requests_total)", |n| n >= answered)
        .await;
    // The traffic is a third of the range: the latency estimate's busiest tenth is in it.
    let out = report(&["--json", "--prometheus", &prometheus.url, "--range", "15s"]).await;
    let r = json_stdout(&out);
    println!("{r:#}");
    assert_eq!(r["window_s"], 15.0);
    t.assert_named(&r);
}
