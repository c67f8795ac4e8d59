//! Many concurrent SSE streams: each its own connection, opened over a ramp, POSTing one
//! streaming chat completion and reading the body to its end; a stream counts as completed
//! when the body ended with `data: [DONE]`.

use super::openloop::connect;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use tokio::time::Instant;

/// What to open.
#[derive(Clone)]
pub struct StreamsPlan {
    pub addr: String,
    pub streams: usize,
    /// The connections are opened evenly over this long.
    pub ramp: Duration,
    /// A streaming chat completion request body.
    pub body: Bytes,
    /// A stream still open after this long counts as failed.
    pub timeout: Duration,
}

/// How the streams went.
#[derive(Debug, Clone, Default)]
pub struct StreamsResult {
    pub completed: usize,
    pub failed: usize,
    /// The first few distinct failure reasons, to tell what went wrong.
    pub failures: Vec<String>,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    /// From the first connection to the last stream's end.
    pub elapsed: Duration,
}

/// The marker of a completed OpenAI stream.
const DONE: &[u8] = b"data: [DONE]";

/// Runs the plan on the current runtime.
pub async fn run(plan: StreamsPlan) -> StreamsResult {
    let start = Instant::now();
    let n = plan.streams.max(1);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let plan = plan.clone();
        let at = start + plan.ramp.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            tokio::time::timeout(plan.timeout, one(&plan))
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
        }));
    }
    let mut ttft = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"));
    let mut r = StreamsResult::default();
    for t in tasks {
        match t.await.map_err(|e| e.to_string()).and_then(|x| x) {
            Ok(first) => {
                r.completed += 1;
                let _ = ttft.record(first.as_micros().max(1) as u64);
            }
            Err(e) => {
                r.failed += 1;
                if r.failures.len() < 5 && !r.failures.contains(&e) {
                    r.failures.push(e);
                }
            }
        }
    }
    r.elapsed = start.elapsed();
    r.ttft_p50_ms = ttft.value_at_quantile(0.5) as f64 / 1000.0;
    r.ttft_p99_ms = ttft.value_at_quantile(0.99) as f64 / 1000.0;
    r
}

/// One stream on a connection of its own; its time to first token (first body chunk).
async fn one(plan: &StreamsPlan) -> Result<Duration, String> {
    let mut sender = connect(&plan.addr)
        .await
        .ok_or_else(|| "connect failed".to_string())?;
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", &plan.addr)
        .header("content-type", "application/json")
        .body(Full::new(plan.body.clone()))
        .map_err(|e| e.to_string())?;
    let sent = Instant::now();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut first = None;
    // The last bytes seen, enough to find the marker across a chunk boundary.
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        first.get_or_insert_with(|| sent.elapsed());
        tail.extend_from_slice(&data[data.len().saturating_sub(64)..]);
        let keep = tail.len().saturating_sub(64);
        tail.drain(..keep);
    }
    let ended = String::from_utf8_lossy(&tail);
    if !ended.trim_end().as_bytes().ends_with(DONE) {
        return Err("body ended without data: [DONE]".into());
    }
    first.ok_or_else(|| "empty body".into())
}
