//! Helpers for the Redis Cluster end-to-end tests (`redis_cluster.rs`): the `redis:` block for
//! a cluster, chat requests read as 200/429 or what went wrong, a steady load over several
//! gateways and the tallies and assertions on it.

use sluice_e2e::{metric_sum, Gateway};
use sluice_testkit::RedisCluster;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const FALLBACKS: &str = "sluice_ratelimit_fallbacks_total";
pub const REDIS_ERRORS: &str = "sluice_ratelimit_redis_errors_total";

/// The top-level `redis:` block: every node of `cluster` as a seed.
pub fn redis_top(cluster: &RedisCluster) -> String {
    let seeds: Vec<String> = cluster.seeds().iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "redis:\n  cluster: [{}]\n  timeout: 200ms\n",
        seeds.join(", ")
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// `metric` summed over the gateways' `/metrics`, one value per gateway.
pub async fn counts(gws: &[&Gateway], metric: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for gw in gws {
        out.push(metric_sum(&gw.metrics().await, metric, &[]));
    }
    out
}

/// One small chat request: its status when 200 or 429, else what went wrong (another status
/// with its body, or a transport error).
pub async fn fire(client: reqwest::Client, url: String) -> Result<u16, String> {
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .map_err(|e| format!("transport: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("{status}, body: {e:?}"))?;
    match status {
        200 | 429 => Ok(status),
        _ => Err(format!("{status}: {body}")),
    }
}

/// One request of a load: which gateway, when it was sent, how it was answered.
pub struct Shot {
    pub gw: usize,
    pub at: Instant,
    pub answer: Result<u16, String>,
}

/// Steady load: `per_sec` requests per second to each gateway, each request its own task so a
/// slow answer never holds the pace back.
pub struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Shot>>,
}

impl Load {
    pub fn start(client: &reqwest::Client, gws: &[&Gateway], per_sec: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
        let (client, stopped) = (client.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
            let mut sent = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                for (gw, url) in urls.iter().enumerate() {
                    let req = tokio::spawn(fire(client.clone(), url.clone()));
                    sent.push((gw, Instant::now(), req));
                }
            }
            let mut shots = Vec::new();
            for (gw, at, req) in sent {
                let answer = req.await.unwrap_or_else(|e| Err(format!("task: {e}")));
                shots.push(Shot { gw, at, answer });
            }
            shots
        });
        Load { stop, task }
    }

    /// Stops sending and returns every request once answered.
    pub async fn finish(self) -> Vec<Shot> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

/// Fails on any answer other than 200 or 429, with the gateways' logs.
pub fn assert_answered(shots: &[Shot], gws: &[&Gateway]) {
    let bad: Vec<String> = shots
        .iter()
        .filter_map(|s| {
            s.answer
                .as_ref()
                .err()
                .map(|e| format!("gateway {}: {e}", s.gw))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests were not answered 200/429: {:?}\nlogs:\n{}",
        bad.len(),
        shots.len(),
        &bad[..bad.len().min(10)],
        gws.iter()
            .map(|g| g.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
}

/// (sent, admitted) among the requests sent in `[from, to)`, all gateways together.
pub fn tally(shots: &[Shot], from: Instant, to: Instant) -> (usize, usize) {
    let window = shots.iter().filter(|s| s.at >= from && s.at < to);
    window.fold((0, 0), |(sent, ok), s| {
        (sent + 1, ok + usize::from(s.answer == Ok(200)))
    })
}

/// Asserts that `admitted` is within `tolerance` (a fraction, plus 2 requests for the window's
/// edges) of `expected`.
pub fn assert_near(what: &str, admitted: usize, expected: f64, tolerance: f64) {
    let margin = expected * tolerance + 2.0;
    println!("{what}: admitted {admitted}, expected ≈ {expected:.1} (± {margin:.1})");
    assert!(
        (admitted as f64 - expected).abs() <= margin,
        "{what}: admitted {admitted}, expected {expected:.1} ± {margin:.1}"
    );
}
