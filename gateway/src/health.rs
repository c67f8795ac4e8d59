//! The active health prober: a background thread that reads the live policy on every tick, so
//! a reload adds or removes probes without a restart, and sends each endpoint of an upstream
//! with `health:` a GET on a fresh connection every `interval`. Verdicts are kept in the
//! endpoint's stats (outside the policy snapshot); a passing probe also ends an ejection.

use crate::config::policy::{Route, Upstream};
use crate::config::Policy;
use crate::reload::PolicyStore;
use http::Method;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use sluice_plugins::health::{HealthPolicy, ProbeSchedule};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest the prober sleeps, so a reload's new probes start soon.
const TICK: Duration = Duration::from_millis(100);

/// Starts the prober thread.
pub fn start(store: Arc<PolicyStore>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("sluice-health".into())
        .spawn(move || runtime.block_on(probe_forever(store)))
        .map(drop)
}

async fn probe_forever(store: Arc<PolicyStore>) {
    // Its own connector: one shared across runtimes breaks pooled connections.
    let connector = Arc::new(Connector::new(None));
    let mut schedule = ProbeSchedule::default();
    loop {
        let policy = store.load();
        let now = Instant::now();
        let mut live = HashSet::new();
        for up in probed_upstreams(&policy) {
            let Some(health) = &up.health else { continue };
            for (i, ep) in up.endpoints.iter().enumerate() {
                live.insert((up.name.clone(), ep.url.clone()));
                if schedule.take_due((&up.name, &ep.url), health.interval, now) {
                    let (up, connector) = (Arc::clone(&up), Arc::clone(&connector));
                    tokio::spawn(async move { probe(&connector, &up, i).await });
                }
            }
        }
        schedule.retain(&live);
        let wake = schedule.next_due().map_or(TICK, |at| {
            at.saturating_duration_since(Instant::now()).min(TICK)
        });
        tokio::time::sleep(wake).await;
    }
}

/// Every upstream a route of `policy` can send to, once each.
fn probed_upstreams(policy: &Policy) -> Vec<Arc<Upstream>> {
    let mut seen = HashSet::new();
    policy
        .routes
        .iter()
        .flat_map(Route::upstreams)
        .filter(|up| up.health.is_some() && seen.insert(up.name.clone()))
        .cloned()
        .collect()
}

/// Probes endpoint `i` of `up` once and records the verdict.
async fn probe(connector: &Connector, up: &Upstream, i: usize) {
    let (Some(health), Some(ep), Some(stats)) =
        (&up.health, up.endpoints.get(i), up.balancer.stats(i))
    else {
        return;
    };
    let result = tokio::time::timeout(health.timeout, status_of(connector, up, i, health))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", health.timeout)));
    let passed = matches!(result, Ok(status) if health.passes(status));
    let now = Instant::now();
    if passed && stats.readmit(now) {
        tracing::info!(upstream = %up.name, endpoint = %ep.url, "endpoint readmitted by a passing health check");
    }
    match stats.record_probe(passed, health.unhealthy_after, health.healthy_after) {
        Some(true) => tracing::info!(upstream = %up.name, endpoint = %ep.url, "endpoint healthy"),
        Some(false) => {
            let reason = match result {
                Ok(status) => format!("status {status}"),
                Err(e) => e,
            };
            tracing::warn!(upstream = %up.name, endpoint = %ep.url, reason, "endpoint unhealthy");
        }
        None => {}
    }
}

/// Sends the probe request and returns the answer's status.
async fn status_of(
    connector: &Connector,
    up: &Upstream,
    i: usize,
    health: &HealthPolicy,
) -> Result<u16, String> {
    let ep = &up.endpoints[i];
    let peer = ep.peer(Instant::now()).await?;
    let (mut conn, _) = connector
        .get_http_session(peer.as_ref())
        .await
        .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
    let mut req = RequestHeader::build(Method::GET, health.path.as_bytes(), None)
        .map_err(|e| e.to_string())?;
    req.insert_header(http::header::HOST, ep.authority.clone())
        .map_err(|e| e.to_string())?;
    if let Some(auth) = &ep.basic_auth {
        req.insert_header(http::header::AUTHORIZATION, auth.clone())
            .map_err(|e| e.to_string())?;
    }
    req.insert_header("user-agent", "sluice-health")
        .map_err(|e| e.to_string())?;
    conn.write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("write: {}", e.etype().as_str()))?;
    conn.finish_request_body()
        .await
        .map_err(|e| format!("write: {}", e.etype().as_str()))?;
    conn.read_response_header()
        .await
        .map_err(|e| format!("read: {}", e.etype().as_str()))?;
    conn.response_header()
        .map(|h| h.status.as_u16())
        .ok_or_else(|| "no response header".to_string())
}
