//! Admission control end to end (issue 7): an upstream's `max_concurrency` with its bounded
//! queue — a full queue refuses at once, a long wait times out, priorities pass each other,
//! and a client that gives up leaves the queue.

use futures_util::future::join_all;
use serde_json::Value;
use sluice_e2e::{config, metric_sum, Answer, Gateway, Mock, UpstreamCalls};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

// === Helpers ===

/// A gateway over `mock` whose upstream has `admission` (4-space YAML lines) and one plain
/// route `chat`.
fn gateway(mock: &Mock, admission: &str) -> Gateway {
    let route = "  - name: chat\n    match: { path_prefix: /v1 }\n    upstream: up\n";
    Gateway::start(&config(&[&mock.url], admission, route))
}

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// One answer, read whole, and when it started and ended.
#[derive(Debug)]
struct Timed {
    answer: Answer,
    took: Duration,
    done: Instant,
}

impl std::ops::Deref for Timed {
    type Target = Answer;

    fn deref(&self) -> &Answer {
        &self.answer
    }
}

impl Timed {
    fn code(&self) -> Value {
        let v: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        v["error"]["code"].clone()
    }
}

/// POSTs the chat body with `headers` (an upstream latency, a priority).
async fn post(base: String, headers: Vec<(&'static str, String)>) -> Timed {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut req = client
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(BODY);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let start = Instant::now();
    let answer = Answer::read(req).await;
    Timed {
        answer,
        took: start.elapsed(),
        done: Instant::now(),
    }
}

fn latency(ms: u64) -> Vec<(&'static str, String)> {
    vec![("x-mock-latency-ms", ms.to_string())]
}

/// Starts a request in the background.
fn spawn(gw: &Gateway, headers: Vec<(&'static str, String)>) -> tokio::task::JoinHandle<Timed> {
    tokio::spawn(post(gw.url.clone(), headers))
}

const DEPTH: &str = "sluice_queue_depth";
const UP: [(&str, &str); 1] = [("upstream", "up")];

/// Waits until the queue of upstream `up` holds `n` requests; fails if it never does.
async fn queue_reaches(gw: &Gateway, n: f64) {
    let m = gw.metrics_until(|m| metric_sum(m, DEPTH, &UP) == n).await;
    assert_eq!(metric_sum(&m, DEPTH, &UP), n, "queue depth: {m}");
}

// === Tests ===

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_the_rest_wait_their_turn() {
    let mock = Mock::start("full", &[]);
    let gw = gateway(
        &mock,
        "    max_concurrency: 2\n    queue: { max: 2, timeout: 5s }\n",
    );
    let all = join_all((0..10).map(|_| spawn(&gw, latency(1000)))).await;
    let all: Vec<Timed> = all.into_iter().map(|t| t.expect("task")).collect();
    let (ok, refused): (Vec<&Timed>, Vec<&Timed>) = all.iter().partition(|a| a.status == 200);
    let slowest = refused.iter().map(|a| a.took).max();
    println!(
        "10 at once on 2 slots + 2 queued: {} served, {} refused, slowest refusal {slowest:?}",
        ok.len(),
        refused.len()
    );
    assert_eq!((ok.len(), refused.len()), (4, 6), "{all:#?}");
    for a in &refused {
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.code(), "queue_full", "{a:?}");
        let v: Value = serde_json::from_str(&a.body).expect("JSON");
        assert_eq!(v["error"]["type"], "server_overloaded", "{a:?}");
        assert!(
            a.header("retry-after").is_some(),
            "a refusal says when to retry: {a:?}"
        );
        assert!(
            a.took < Duration::from_millis(500),
            "refused at once: {a:?}"
        );
    }
    // Two went straight to the upstream (1 s); two waited for their slots (2 s).
    let mut took: Vec<Duration> = ok.iter().map(|a| a.took).collect();
    took.sort();
    println!("served after {took:?}");
    assert!(took[0] >= Duration::from_millis(950), "{took:?}");
    assert!(
        took[2] >= Duration::from_millis(1900),
        "at most 2 at the upstream at once: {took:?}"
    );
    let full = [("route", "chat"), ("reason", "queue_full")];
    let m = gw
        .metrics_until(|m| metric_sum(m, "sluice_rejections_total", &full) >= 6.0)
        .await;
    assert_eq!(metric_sum(&m, "sluice_rejections_total", &full), 6.0, "{m}");
}

#[tokio::test]
async fn a_queued_request_times_out_with_503() {
    let mock = Mock::start("timeout", &[]);
    let gw = gateway(
        &mock,
        "    max_concurrency: 1\n    queue: { max: 2, timeout: 300ms }\n",
    );
    let all = join_all((0..3).map(|_| spawn(&gw, latency(2000)))).await;
    let all: Vec<Timed> = all.into_iter().map(|t| t.expect("task")).collect();
    let (ok, waited): (Vec<&Timed>, Vec<&Timed>) = all.iter().partition(|a| a.status == 200);
    println!(
        "queue timeout 300ms: refusals after {:?}",
        waited.iter().map(|a| a.took).collect::<Vec<_>>()
    );
    assert_eq!((ok.len(), waited.len()), (1, 2), "{all:#?}");
    for a in &waited {
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.code(), "queue_timeout", "{a:?}");
        assert!(a.header("retry-after").is_some(), "{a:?}");
        // After the timeout, and long before the slot frees (2 s).
        assert!(
            a.took >= Duration::from_millis(290) && a.took < Duration::from_millis(1500),
            "{a:?}"
        );
    }
    let timeouts = [("route", "chat"), ("reason", "queue_timeout")];
    let m = gw
        .metrics_until(|m| metric_sum(m, "sluice_rejections_total", &timeouts) >= 2.0)
        .await;
    assert_eq!(
        metric_sum(&m, "sluice_rejections_total", &timeouts),
        2.0,
        "{m}"
    );
}

#[tokio::test]
async fn high_priority_passes_low_priority_in_the_queue() {
    let mock = Mock::start("priority", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(
        &mock,
        "    max_concurrency: 1\n    queue: { max: 4, timeout: 10s }\n",
    );
    let occupier = spawn(&gw, latency(1500));
    up.reaches(1).await;
    // Queued in this order, each seen in the queue before the next is sent.
    let with = |priority: &str| {
        let mut h = latency(100);
        h.push(("x-sluice-priority", priority.to_string()));
        h
    };
    let low1 = spawn(&gw, with("low"));
    queue_reaches(&gw, 1.0).await;
    let low2 = spawn(&gw, with("low"));
    queue_reaches(&gw, 2.0).await;
    let high = spawn(&gw, with("high"));
    queue_reaches(&gw, 3.0).await;
    assert!(
        !occupier.is_finished(),
        "all three queued behind the occupier"
    );

    let occupier = occupier.await.expect("task");
    let (low1, low2, high) = (
        low1.await.expect("task"),
        low2.await.expect("task"),
        high.await.expect("task"),
    );
    for a in [&occupier, &low1, &low2, &high] {
        assert_eq!(a.status, 200, "{a:?}");
    }
    let after = |a: &Timed| a.done - occupier.done;
    println!(
        "after the occupier: high {:?}, low {:?}, low {:?}",
        after(&high),
        after(&low1),
        after(&low2)
    );
    assert!(high.done < low1.done && high.done < low2.done, "high first");
    assert!(
        low1.done < low2.done,
        "first in, first out within a priority"
    );
}

#[tokio::test]
async fn a_client_that_gives_up_leaves_the_queue() {
    let mock = Mock::start("gone", &[]);
    let mut up = UpstreamCalls::of(&mock);
    let gw = gateway(
        &mock,
        "    max_concurrency: 1\n    queue: { max: 2, timeout: 10s }\n",
    );
    let occupier = spawn(&gw, latency(1500));
    up.reaches(1).await;

    // A raw connection, so closing it is certain.
    let addr = gw.url.trim_start_matches("http://");
    let mut quitter = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    quitter.write_all(request.as_bytes()).await.expect("send");
    queue_reaches(&gw, 1.0).await;
    let left = Instant::now();
    drop(quitter);
    queue_reaches(&gw, 0.0).await;
    assert!(
        !occupier.is_finished(),
        "the queue must empty because the client left, not because the slot freed: it took {:?}",
        left.elapsed()
    );

    assert_eq!(occupier.await.expect("task").status, 200);
    let later = post(gw.url.clone(), vec![]).await;
    assert_eq!(later.status, 200, "{later:?}");
    assert!(
        later.took < Duration::from_millis(1000),
        "no ghost holds the slot: {later:?}"
    );
    assert_eq!(
        up.calls().await,
        2,
        "the abandoned request never reached the upstream"
    );
}
