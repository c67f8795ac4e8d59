//! sluice as a process under test: its config, started pinned and waited for, and what its
//! `/metrics` say while it is measured. The scenarios that measure one feature each start a
//! sluice of their own with one worker thread on [`SLUICE_CPU`], so the figures are per core.

use super::oneshot;
use super::procs::{path_str, spawn_with_env, wait_port, Running};
use sluice_plugins::ab::exposition::{self, Scrape};
use sluice_testkit::free_port;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The CPU a one-thread sluice has to itself; wrk and the upstreams run on the other one.
pub const SLUICE_CPU: &str = "0";

/// The `server:` block of a sluice listening on `port` with `threads` worker threads.
#[must_use]
pub fn server_yaml(port: u16, threads: usize) -> String {
    format!("server:\n  listen: [\"127.0.0.1:{port}\"]\n  threads: {threads}\n  max_body_bytes: 64MiB\n")
}

/// The body of an upstream with the one endpoint `127.0.0.1:port` (under `up:`, 4 spaces in).
#[must_use]
pub fn one_endpoint(port: u16) -> String {
    format!(
        "    endpoints: [{{url: \"http://127.0.0.1:{port}\"}}]\n    pool: {{ max_idle: 256 }}\n"
    )
}

/// Writes `<d>/<name>.yaml` and runs sluice on it pinned to `cpus`, logging to `<d>/<name>.log`.
pub fn spawn_sluice(
    d: &Path,
    name: &str,
    cpus: &str,
    sluice_bin: &Path,
    yaml: &str,
) -> Result<Running, String> {
    spawn_sluice_with_env(d, name, cpus, sluice_bin, yaml, &[])
}

/// [`spawn_sluice`] with the environment variables `env` set (`RUST_LOG=warn`: no access lines).
pub fn spawn_sluice_with_env(
    d: &Path,
    name: &str,
    cpus: &str,
    sluice_bin: &Path,
    yaml: &str,
    env: &[(&str, &str)],
) -> Result<Running, String> {
    let cfg = d.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
    spawn_with_env(
        name,
        cpus,
        sluice_bin,
        &["run", "--config", path_str(&cfg)?],
        env,
        &d.join(format!("{name}.log")),
    )
}

/// A one-thread sluice on [`SLUICE_CPU`] with an admin listener for `/metrics`.
pub struct PinnedSluice {
    pub port: u16,
    pub admin_port: u16,
    pub proc: Running,
}

/// Starts a [`PinnedSluice`] named `name` whose upstream `up` is `upstream` (its body, as
/// [`one_endpoint`] writes it) and whose `routes:` are `routes`; returns once both ports accept.
pub fn start_pinned(
    d: &Path,
    name: &str,
    sluice_bin: &Path,
    upstream: &str,
    routes: &str,
) -> Result<PinnedSluice, String> {
    start_pinned_with_env(d, name, sluice_bin, upstream, routes, &[])
}

/// [`start_pinned`] with the environment variables `env` set for sluice.
pub fn start_pinned_with_env(
    d: &Path,
    name: &str,
    sluice_bin: &Path,
    upstream: &str,
    routes: &str,
    env: &[(&str, &str)],
) -> Result<PinnedSluice, String> {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "{}admin:\n  listen: 127.0.0.1:{admin_port}\nupstreams:\n  up:\n{upstream}routes:\n{routes}",
        server_yaml(port, 1)
    );
    let proc = spawn_sluice_with_env(d, name, SLUICE_CPU, sluice_bin, &yaml, env)?;
    wait_port(port, Duration::from_secs(10))?;
    wait_port(admin_port, Duration::from_secs(10))?;
    Ok(PinnedSluice {
        port,
        admin_port,
        proc,
    })
}

/// A [`PinnedSluice`] with one plain route (no match, so no body is read) to `up_port`.
pub fn start_plain_sluice(
    d: &Path,
    name: &str,
    up_port: u16,
    sluice_bin: &Path,
) -> Result<PinnedSluice, String> {
    start_pinned(d, name, sluice_bin, &one_endpoint(up_port), PLAIN_ROUTES)
}

/// The `routes:` of a sluice whose one route `chat` caches every POST to `/v1/chat/completions`
/// for everyone (`scope: none`).
pub const CACHE_ROUTES: &str = "  - name: chat\n    match: { path_prefix: /v1/chat/completions, methods: [POST] }\n    upstream: up\n    cache: { ttl: 10m, key: { scope: none } }\n";

/// The `routes:` of a sluice whose one route reads the body and matches on `model: bench-*`.
pub const BODY_ROUTES: &str =
    "  - name: by-model\n    match: { methods: [POST], model: \"bench-*\" }\n    upstream: up\n";

/// The `routes:` of a sluice whose one route matches everything (no body read).
pub const PLAIN_ROUTES: &str = "  - name: passthrough\n    upstream: up\n";

/// A [`PinnedSluice`] named `sluice-<name>` whose one route `chat` caches every POST to
/// `/v1/chat/completions` for everyone (`scope: none`).
pub fn start_cache_sluice(
    d: &Path,
    name: &str,
    up_port: u16,
    sluice_bin: &Path,
) -> Result<PinnedSluice, String> {
    start_pinned(
        d,
        &format!("sluice-{name}"),
        sluice_bin,
        &one_endpoint(up_port),
        CACHE_ROUTES,
    )
}

/// Sends `body` until the cache on `port` answers it as a hit (within about a second): a
/// scenario that measures misses would be a lie. `scenario` names it in the error.
pub fn prime_cache(scenario: &str, port: u16, body: &[u8]) -> Result<(), String> {
    let mut last = None;
    for _ in 0..50 {
        let a = oneshot::request(port, "POST", "/v1/chat/completions", body, "x-sluice-cache")?;
        if a.status == 200 && a.header.as_deref() == Some("hit") {
            return Ok(());
        }
        last = Some((a.status, a.header));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, cache) = last.unwrap_or((0, None));
    Err(format!(
        "{scenario}: the primed POST is not served from the cache (status {status}, x-sluice-cache: {})",
        cache.as_deref().unwrap_or("absent")
    ))
}

/// Every sample of the `/metrics` of the admin listener on `admin_port`.
pub fn scrape(admin_port: u16) -> Result<Scrape, String> {
    let a = oneshot::request(admin_port, "GET", "/metrics", b"", "")?;
    if a.status != 200 {
        return Err(format!("GET /metrics answered {}", a.status));
    }
    exposition::parse(&String::from_utf8_lossy(&a.body)).map_err(|e| format!("GET /metrics: {e}"))
}

/// The cache counters of route `chat` on a sluice's `/metrics`: requests by result, and
/// upstream seconds saved.
pub fn cache_metrics(admin_port: u16) -> Result<(BTreeMap<String, f64>, f64), String> {
    let scrape = scrape(admin_port)?;
    let chat = [("route", "chat")];
    let mut results = BTreeMap::new();
    for sample in scrape.matching("sluice_cache_requests_total", &chat) {
        if let Some(result) = sample.label("result") {
            *results.entry(result.to_string()).or_insert(0.0) += sample.value;
        }
    }
    let saved = scrape.sum("sluice_cache_saved_seconds_total", &chat);
    Ok((results, saved))
}

/// Checks that the cache requests counted between `before` and `after` (of [`cache_metrics`])
/// were hits, all but 1% at most; says how many on stderr. `scenario` names it.
pub fn expect_hits(
    scenario: &str,
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Result<(), String> {
    let count =
        |r: &str| after.get(r).copied().unwrap_or(0.0) - before.get(r).copied().unwrap_or(0.0);
    let (hits, others) = (
        count("hit"),
        count("miss") + count("coalesced") + count("bypass"),
    );
    eprintln!("{scenario}: {hits:.0} hits and {others:.0} other answers while measuring");
    if others > 0.01 * hits {
        return Err(format!(
            "{scenario}: {others:.0} of {:.0} requests were not hits",
            hits + others
        ));
    }
    Ok(())
}
