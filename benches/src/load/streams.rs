//! Many concurrent SSE streams: each its own connection, opened over a ramp, POSTing one
//! streaming chat completion and reading the body to its end; a stream counts as completed
//! when the body ended with `data: [DONE]`.

use bytes::Bytes;
use hdrhistogram::Histogram;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

/// One stream on a connection of its own, read as raw bytes (hyper's client would cost the
/// CPU the generator shares with mock-llm about twice as much); its time to first token.
async fn one(plan: &StreamsPlan) -> Result<Duration, String> {
    let mut conn = TcpStream::connect(&plan.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = conn.set_nodelay(true);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        plan.addr,
        plan.body.len()
    );
    conn.write_all(&[head.as_bytes(), &plan.body].concat())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let sent = Instant::now();
    let mut buf = vec![0u8; 2048];
    // The response head until it is whole, then the last bytes of the body: enough to find
    // the markers across read boundaries.
    let mut seen: Vec<u8> = Vec::with_capacity(256);
    let (mut in_body, mut first, mut done) = (false, None, false);
    loop {
        let n = conn
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if !in_body {
            let Some(end) = find(&seen, b"\r\n\r\n") else {
                continue;
            };
            if !seen.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&seen[..end]);
                return Err(format!("answer: {}", line.lines().next().unwrap_or("")));
            }
            in_body = true;
            seen.drain(..end + 4);
        }
        if first.is_none() && find(&seen, b"data:").is_some() {
            first = Some(sent.elapsed());
        }
        done = done || find(&seen, DONE).is_some();
        // The last chunk of a chunked body: the stream is over (the connection stays open).
        if done && seen.ends_with(b"0\r\n\r\n") {
            break;
        }
        let keep = seen.len().saturating_sub(64);
        seen.drain(..keep);
    }
    if !done {
        return Err("body ended without data: [DONE]".into());
    }
    first.ok_or_else(|| "no data event".into())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
