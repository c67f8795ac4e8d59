//! Helpers shared by the resilient-routing end-to-end tests (`resilience.rs`,
//! `resilience_balance.rs`): configs with several upstreams, a concurrent load that records who
//! answered each request, and per-endpoint metric reads.
#![allow(dead_code)] // each test binary uses its own subset

use sluice_e2e::{metric_sum, Gateway, PATIENCE};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An endpoint entry of an upstream's `endpoints:` list.
pub fn ep(url: &str) -> String {
    format!("{{ url: \"{url}\" }}")
}

/// An endpoint entry with a `weight`.
pub fn ep_weighted(url: &str, weight: u32) -> String {
    format!("{{ url: \"{url}\", weight: {weight} }}")
}

/// One upstream `name` over `endpoints` (see [`ep`]), with `extra` YAML lines (4-space indent).
pub fn upstream(name: &str, endpoints: &[String], extra: &str) -> String {
    let eps: String = endpoints.iter().map(|e| format!("      - {e}\n")).collect();
    format!("  {name}:\n    endpoints:\n{eps}{extra}")
}

/// A whole gateway config: one worker thread, 8 MiB bodies, the given upstreams and routes.
pub fn gateway_yaml(upstreams: &[String], routes: &str) -> String {
    format!(
        "server:\n  listen: [\"{{listen}}\"]\n  threads: 1\n  max_body_bytes: 8MiB\n  grace_period: 10s\nadmin:\n  listen: \"{{admin}}\"\nupstreams:\n{}routes:\n{routes}",
        upstreams.concat()
    )
}

/// A route `name` for `/v1` to `upstream`.
pub fn route(name: &str, upstream: &str) -> String {
    format!("  - name: {name}\n    match: {{ path_prefix: /v1 }}\n    upstream: {upstream}\n")
}

/// `http://127.0.0.1:<port>` where nothing listens.
pub fn dead_url() -> String {
    format!("http://127.0.0.1:{}", sluice_e2e::free_port())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// One request's outcome as a client saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// 0 when no answer arrived.
    pub status: u16,
    /// `x-sluice-upstream`: the endpoint URL that served it.
    pub endpoint: String,
    pub error: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }
}

/// `GET /v1/models` through the gateway, read whole.
pub async fn get_models(client: &reqwest::Client, gw_url: &str) -> Sample {
    let at = Instant::now();
    let resp = match client.get(format!("{gw_url}/v1/models")).send().await {
        Ok(r) => r,
        Err(e) => {
            return Sample {
                at,
                status: 0,
                endpoint: String::new(),
                error: Some(e.to_string()),
            }
        }
    };
    let status = resp.status().as_u16();
    let endpoint = header(&resp, "x-sluice-upstream");
    let error = resp.bytes().await.err().map(|e| format!("body: {e}"));
    Sample {
        at,
        status,
        endpoint,
        error,
    }
}

/// `clients` concurrent clients sending `GET /v1/models` back to back until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(gw: &Gateway, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let http = client();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, samples, http) = (stop.clone(), samples.clone(), http.clone());
                let url = gw.url.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let s = get_models(&http, &url).await;
                        samples.lock().expect("samples").push(s);
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            tasks,
        }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }

    /// Samples of requests sent from `since` on.
    pub fn since(&self, since: Instant) -> Vec<Sample> {
        self.samples()
            .into_iter()
            .filter(|s| s.at >= since)
            .collect()
    }

    /// Stops the clients and returns every sample.
    pub async fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            t.await.expect("load task");
        }
        self.samples()
    }
}

/// How many of `samples` the endpoint `url` served.
pub fn served_by(samples: &[Sample], url: &str) -> usize {
    samples.iter().filter(|s| s.endpoint == url).count()
}

/// The share of `samples` the endpoint `url` served (0 when there are none).
pub fn share(samples: &[Sample], url: &str) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    served_by(samples, url) as f64 / samples.len() as f64
}

/// The failed samples (not a whole 200), at most `n` of them, for a message.
pub fn failures(samples: &[Sample], n: usize) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| !s.ok())
        .take(n)
        .cloned()
        .collect()
}

/// The value of per-endpoint metric `name` (summed over other labels, e.g. `kind`).
pub fn ep_metric(text: &str, name: &str, upstream: &str, endpoint: &str) -> f64 {
    metric_sum(
        text,
        name,
        &[("upstream", upstream), ("endpoint", endpoint)],
    )
}

/// Polls `/metrics` every 20 ms until `done` holds (or [`PATIENCE`] runs out): the last text
/// and how long it took; the caller asserts.
pub async fn metrics_until(gw: &Gateway, done: impl Fn(&str) -> bool) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let text = gw.metrics().await;
        if done(&text) || start.elapsed() > PATIENCE {
            return (text, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `/mock/stats` of the mock at `url`: (requests, connections), counting this GET itself.
pub async fn mock_stats(url: &str) -> (u64, u64) {
    let v: serde_json::Value = reqwest::get(format!("{url}/mock/stats"))
        .await
        .expect("mock stats")
        .json()
        .await
        .expect("stats JSON");
    (
        v["requests"].as_u64().expect("requests"),
        v["connections"].as_u64().expect("connections"),
    )
}

/// A response header's value as text, empty when absent.
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}
