//! A steady load of small chat requests over several gateways, for the tests of limits shared
//! through Redis: each request read as 200/429 or what went wrong, tallies by time window and
//! the assertions on them.

use crate::Gateway;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client whose requests give up after 10 s, so a stuck gateway fails the test.
#[must_use]
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// One small chat request (with `authorization: key` when given): its status when 200 or
/// 429, else what went wrong (another status with its body, or a transport error).
pub async fn fire(
    client: reqwest::Client,
    url: String,
    key: Option<&'static str>,
) -> Result<u16, String> {
    let mut req = client
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", key);
    }
    let resp = req
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
    /// Starts sending [`fire`]s with `key` to each of `gws`.
    #[must_use]
    pub fn start(
        client: &reqwest::Client,
        gws: &[&Gateway],
        per_sec: u32,
        key: Option<&'static str>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = gws.iter().map(|g| g.url.clone()).collect();
        let (client, stopped) = (client.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
            let mut sent = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                for (gw, url) in urls.iter().enumerate() {
                    let req = tokio::spawn(fire(client.clone(), url.clone(), key));
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

/// Per gateway of the `N` loaded: (sent, admitted) among the requests sent in `[from, to)`.
#[must_use]
pub fn tally<const N: usize>(shots: &[Shot], from: Instant, to: Instant) -> [(usize, usize); N] {
    let mut out = [(0, 0); N];
    for s in shots.iter().filter(|s| s.at >= from && s.at < to) {
        out[s.gw].0 += 1;
        out[s.gw].1 += usize::from(s.answer == Ok(200));
    }
    out
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
