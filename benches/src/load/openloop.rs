//! Open-loop load: requests are scheduled at a fixed rate whatever the server does, and each
//! latency is measured from its *scheduled* time, so a stall shows up in the percentiles
//! instead of slowing the load down (no coordinated omission, like wrk2 or oha's correction).

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What to send.
#[derive(Clone)]
pub struct Plan {
    pub addr: String,
    pub path: String,
    pub rate: f64,
    pub duration: Duration,
    pub connections: usize,
    /// POST these bodies in turn; GET when empty.
    pub bodies: Arc<Vec<Bytes>>,
    /// Stop the clock at the first body byte (time to first token) instead of the last.
    pub first_byte: bool,
}

/// Latency percentiles in milliseconds and what was achieved.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenLoopResult {
    pub sent: u64,
    pub errors: u64,
    pub achieved_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Runs the plan on the current runtime.
pub async fn run(plan: Plan) -> OpenLoopResult {
    let total = (plan.rate * plan.duration.as_secs_f64()) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(100);
    let mut workers = Vec::new();
    for _ in 0..plan.connections.max(1) {
        let (plan, next) = (plan.clone(), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            worker(plan, next, start, total).await
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    let mut errors = 0;
    for w in workers {
        if let Ok((h, e)) = w.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    OpenLoopResult {
        sent: hist.len() + errors,
        errors,
        achieved_rps: hist.len() as f64 / elapsed,
        p50_ms: us(0.5),
        p99_ms: us(0.99),
        p999_ms: us(0.999),
        max_ms: hist.max() as f64 / 1000.0,
    }
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A keep-alive HTTP/1.1 connection to `addr`, or None if it cannot be opened.
pub async fn connect(addr: &str) -> Option<Sender> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn worker(
    plan: Plan,
    next: Arc<AtomicU64>,
    start: Instant,
    total: u64,
) -> (Histogram<u64>, u64) {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!());
    let mut errors = 0;
    let mut sender = connect(&plan.addr).await;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let scheduled = start + Duration::from_secs_f64(i as f64 / plan.rate);
        tokio::time::sleep_until(scheduled).await;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = connect(&plan.addr).await;
        }
        let Some(s) = sender.as_mut() else {
            errors += 1;
            continue;
        };
        if let Some(done) = send_one(s, &plan, i).await {
            let _ =
                hist.record(done.saturating_duration_since(scheduled).as_micros().max(1) as u64);
        } else {
            errors += 1;
            sender = None;
        }
    }
    (hist, errors)
}

/// Sends request `i`; the instant its clock stops (first or last body byte), or None on failure.
async fn send_one(sender: &mut Sender, plan: &Plan, i: u64) -> Option<Instant> {
    let body =
        (!plan.bodies.is_empty()).then(|| plan.bodies[(i as usize) % plan.bodies.len()].clone());
    let (status, stop) = exchange(sender, &plan.addr, &plan.path, body, plan.first_byte).await?;
    (200..300).contains(&status).then_some(stop)
}

/// POSTs `body` to `path` (GET without one) and reads the whole answer, whatever its status;
/// its status and the instant its clock stops (first or last body byte), or None on failure.
pub async fn exchange(
    sender: &mut Sender,
    addr: &str,
    path: &str,
    body: Option<Bytes>,
    first_byte: bool,
) -> Option<(u16, Instant)> {
    let builder = hyper::Request::builder().uri(path).header("host", addr);
    let req = match body {
        None => builder.method("GET").body(Full::new(Bytes::new())),
        Some(body) => builder
            .method("POST")
            .header("content-type", "application/json")
            .body(Full::new(body)),
    };
    let req = req.ok()?;
    sender.ready().await.ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut stop = None;
    if first_byte && (200..300).contains(&status) {
        body.frame().await?.ok()?;
        stop = Some(Instant::now());
    }
    // Read to the end so the connection can take the next request.
    body.collect().await.ok()?;
    Some((status, stop.unwrap_or_else(Instant::now)))
}
