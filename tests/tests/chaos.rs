//! Chaos: for a bounded time (60 s; `SLUICE_CHAOS_SECS` to change it) under steady load,
//! endpoints are killed and brought back at random, Redis is stopped and started, and the
//! config is reloaded. What must hold throughout:
//! - no client error while a healthy endpoint exists (one always does here): every answer on
//!   the ordinary route is a 200, streams included, cache hits included;
//! - Redis going away never costs a 5xx (the cache tier and the shared limit degrade);
//! - the shared limit admits at most its rate over the run plus one burst per fresh bucket
//!   (at start, and each Redis outage, which starts a local bucket and then an empty Redis),
//!   plus what was in flight;
//! - nothing panics, and sluice is ready at the end.

use sluice_e2e::{config, free_port, Gateway, Mock, RedisServer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RATE: f64 = 20.0;
const BURST: f64 = 10.0;
const LIMITED_CLIENTS: usize = 2;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited_ok: AtomicU64,
    limited_429: AtomicU64,
    errors: Mutex<Vec<String>>,
}

fn chaos_config(endpoints: &[String], redis: &str, ttl: &str) -> String {
    let urls: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    let upstream = "    retry: { attempts: 2, on: [connect, timeout, 502, 503, 504] }\n    health: { path: /health, interval: 200ms, unhealthy_after: 1, healthy_after: 1 }\n    timeouts: { connect: 500ms, first_byte: 5s, idle: 5s }\n";
    let routes = format!(
        "  - name: limited\n    match: {{ path_prefix: /v1/chat/completions, headers: {{ x-limited: \"1\" }} }}\n    upstream: up\n    limits:\n      - {{ name: shared-rps, key: route, requests_per_second: {RATE}, burst: {BURST}, shared: true }}\n  - name: chat\n    match: {{ path_prefix: /v1/chat/completions }}\n    upstream: up\n    cache:\n      ttl: {ttl}\n      key: {{ scope: none }}\n"
    );
    format!(
        "{}redis:\n  url: \"{redis}\"\n  timeout: 100ms\ncache:\n  memory: {{ max_bytes: 8MiB }}\n  redis: true\n",
        config(&urls, upstream, &routes)
    )
}

async fn load(url: String, limited: bool, n: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        // A few distinct prompts, so the cache both hits and misses; every fifth one streams.
        let stream = !limited && i.is_multiple_of(5);
        let prompt = format!("client {n} prompt {}", i % 7);
        let body = serde_json::json!({
            "model": "m", "stream": stream,
            "messages": [{"role": "user", "content": prompt}]
        });
        let mut req = client
            .post(format!("{url}/v1/chat/completions"))
            .body(body.to_string());
        if limited {
            req = req.header("x-limited", "1");
        }
        let outcome = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.text().await {
                    Ok(text)
                        if status == 200 && (!stream || text.ends_with("data: [DONE]\n\n")) =>
                    {
                        Ok(status)
                    }
                    Ok(_) if limited && status == 429 => Ok(status),
                    Ok(text) => Err(format!(
                        "{status}: {}",
                        text.chars().take(300).collect::<String>()
                    )),
                    Err(e) => Err(format!("{status}, body cut: {e}")),
                }
            }
            Err(e) => Err(format!("send: {e}")),
        };
        match outcome {
            Ok(200) if limited => {
                tally.limited_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(200) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                tally.limited_429.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut errors) = tally.errors.lock() {
                    errors.push(format!("limited={limited}: {e}"));
                }
            }
        }
    }
}

/// A small deterministic generator: the run is the same for the same seed (printed).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_answers_limits_and_the_process() {
    let secs: u64 = std::env::var("SLUICE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
        | 1;
    let mut dice = Dice(seed);
    let mut redis = RedisServer::start();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut mocks: Vec<Option<Mock>> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| Some(Mock::start_on(&format!("m{i}"), *p, &[])))
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let gw = Gateway::start(&chaos_config(&urls, &redis.url(), "60s"));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for n in 0..4 + LIMITED_CLIENTS {
        clients.push(tokio::spawn(load(
            gw.url.clone(),
            n >= 4,
            n,
            Arc::clone(&stop),
            Arc::clone(&tally),
        )));
    }
    let started = Instant::now();
    let (mut kills, mut revivals, mut redis_outages, mut reloads) = (0, 0, 0u32, 0);
    let mut redis_down_since: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(400 + dice.below(1200))).await;
        match dice.below(4) {
            0 => {
                // Kill one, keeping at least one endpoint alive.
                let alive: Vec<usize> = (0..3).filter(|i| mocks[*i].is_some()).collect();
                if alive.len() > 1 {
                    let i = alive[dice.below(alive.len() as u64) as usize];
                    if let Some(mut m) = mocks[i].take() {
                        m.stop();
                        kills += 1;
                    }
                }
            }
            1 => {
                let dead: Vec<usize> = (0..3).filter(|i| mocks[*i].is_none()).collect();
                if let Some(&i) = dead.get(dice.below(3) as usize % dead.len().max(1)) {
                    mocks[i] = Some(Mock::start_on(&format!("m{i}"), ports[i], &[]));
                    revivals += 1;
                }
            }
            2 => match redis_down_since {
                None => {
                    redis.stop();
                    redis_down_since = Some(Instant::now());
                    redis_outages += 1;
                }
                Some(_) => {
                    redis.restart();
                    redis_down_since = None;
                }
            },
            _ => {
                let ttl = if reloads % 2 == 0 { "61s" } else { "60s" };
                gw.write_config(&chaos_config(&urls, &redis.url(), ttl));
                reloads += 1;
            }
        }
    }
    if redis_down_since.is_some() {
        redis.restart();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let run = started.elapsed().as_secs_f64();
    let errors = tally.errors.lock().unwrap().clone();
    let (ok, limited_ok, limited_429) = (
        tally.ok.load(Ordering::Relaxed),
        tally.limited_ok.load(Ordering::Relaxed),
        tally.limited_429.load(Ordering::Relaxed),
    );
    eprintln!(
        "chaos {run:.0}s (seed {seed}): {kills} kills, {revivals} revivals, {redis_outages} Redis outages, {reloads} reloads; {ok} answers, limited route {limited_ok} admitted / {limited_429} refused, {} errors",
        errors.len()
    );
    let log = gw.log_text();
    assert!(
        errors.is_empty(),
        "client errors with a healthy endpoint left: {} (first: {:?})\nlog tail:\n{}",
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>(),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(ok > 100, "too little traffic to judge: {ok}");
    let fresh_buckets = 1.0 + 2.0 * f64::from(redis_outages);
    let bound = RATE * run + BURST * fresh_buckets + LIMITED_CLIENTS as f64;
    assert!(
        (limited_ok as f64) <= bound,
        "the shared limit admitted {limited_ok} in {run:.1}s, more than {bound:.0} (rate {RATE}/s, burst {BURST}, {redis_outages} Redis outages)"
    );
    assert!(
        limited_429 > 0,
        "the limit never refused: the test proves nothing"
    );
    assert!(!log.contains("panicked"), "a panic in the log:\n{log}");
    let ready = reqwest::get(format!("{}/readyz", gw.admin)).await.unwrap();
    assert_eq!(ready.status(), 200);
}
