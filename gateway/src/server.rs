//! Building and running the Pingora server: the proxy (behind the [`Listener`] that enforces
//! `server.limits`) and admin services, reload triggers, and shutdown (SIGTERM drains in-flight
//! requests up to `server.grace_period`, SIGINT exits).

use crate::admin::AdminApp;
use crate::bind::{bind, BoundSocket, Lifetime, OnBound, Readiness};
use crate::config::server_limits::ServerLimits;
use crate::config::{compile, load_file, Policy, SharedState};
use crate::listener::Listener;
use crate::proxy::{ActiveRequests, Forwarder, Gateway};
use crate::reload::{watch_file, watch_sighup, PolicyStore};
use async_trait::async_trait;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;
use sluice_plugins::cache::flight::Flights;
use sluice_plugins::cache::store::{CacheStore, DiskConfig, RedisConfig, StoreConfig};
use sluice_plugins::cache::PromptCache;
use sluice_plugins::limits::shared::SharedBuckets;
use sluice_plugins::metrics::Metrics;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, watch};

/// Loads `config` and serves until a shutdown signal. With `upgrade`, the listening sockets are
/// taken over from the running sluice (sent SIGQUIT) instead of bound.
pub fn run(config: &Path, upgrade: bool) -> Result<(), String> {
    let loaded = load_file(config).map_err(|e| e.to_string())?;
    let metrics = Metrics::new(env!("CARGO_PKG_VERSION")).map_err(|e| format!("metrics: {e}"))?;
    let shared = Arc::new(SharedState::new(metrics));
    let policy = compile(&loaded, &shared).map_err(|e| e.to_string())?;
    let limits = ServerLimits::compile(&loaded).map_err(|e| e.to_string())?;
    let spec = loaded.spec;
    // Every listener is bound before anything else starts: a taken port is one error, now.
    // An upgrade inherits them from the old process instead.
    let bind_unless_upgrade = |addr: &str, field: &str| {
        if upgrade {
            Ok(Vec::new())
        } else {
            bind(addr, field).map(|s| vec![s])
        }
    };
    let mut proxy_sockets: Vec<BoundSocket> = Vec::new();
    for addr in &spec.server.listen {
        proxy_sockets.extend(bind_unless_upgrade(addr, "server.listen")?);
    }
    let admin_sockets = match &spec.admin {
        Some(a) => bind_unless_upgrade(&a.listen, "admin.listen")?,
        None => Vec::new(),
    };
    let admin_token = match spec.admin.as_ref().and_then(|a| a.token_env.as_deref()) {
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.is_empty() => Some(token),
            _ => {
                return Err(format!(
                    "admin.token_env names {var}, but that environment variable is not set"
                ))
            }
        },
        None => None,
    };
    let cache = open_cache(&policy, &shared)?;
    let shared_limits = open_shared_limits(&policy, &shared)?;
    let usage_log = match &policy.telemetry.usage_log {
        Some(target) => Some(crate::usage_log::UsageLog::open(target)?),
        None => None,
    };
    let otlp = match &policy.telemetry.otlp_traces {
        Some(url) => Some(crate::otlp::OtlpExporter::start(url.clone())?),
        None => None,
    };
    let store = Arc::new(PolicyStore::new(config.to_path_buf(), policy, shared));

    let grace = spec.server.grace_period.0;
    let upgrade_sock = crate::upgrade::socket_path(&spec.server)?;
    let conf = ServerConf {
        threads: spec.server.threads,
        // One thread: a single-threaded runtime, ~20% cheaper per request than work stealing.
        // Several: work stealing, since without it Pingora parks pooled upstream connections
        // on a random worker's runtime and they get dropped instead of reused.
        work_stealing: spec.server.threads > 1,
        grace_period_seconds: Some(grace.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: spec
            .upstreams
            .values()
            .map(|u| u.pool.max_idle)
            .max()
            .unwrap_or(128),
        upgrade_sock: upgrade_sock.clone(),
        ..ServerConf::default()
    };
    if upgrade {
        tracing::info!(
            socket = %conf.upgrade_sock,
            "upgrade: waiting for the running sluice to hand over its sockets (send it SIGQUIT)"
        );
    }
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    if upgrade {
        crate::upgrade::taken_over(&upgrade_sock);
    }
    let phases = server.watch_execution_phase();

    let active = Arc::new(ActiveRequests::default());
    let connections = Arc::new(ActiveRequests::default());
    let gateway = Gateway::new(
        Arc::clone(&store),
        Forwarder::new(ConnectorOptions::from_server_conf(&server.configuration)),
        Arc::clone(&active),
        cache.clone(),
        shared_limits,
        usage_log,
        otlp,
    );
    // Our listener reads each request head within server.limits, then hands it to the proxy.
    let proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    let buffers = L4BufferSettings::new(limits.read_buffer, limits.write_buffer);
    let mut service = Service::new(
        "sluice".to_string(),
        Listener::new(proxy, limits, Arc::clone(&connections)),
    );
    for addr in &spec.server.listen {
        service.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(buffers));
    }
    let readiness = Arc::new(Readiness::new(1 + usize::from(spec.admin.is_some())));
    server.add_service(OnBound::new(
        "sluice",
        service,
        proxy_sockets,
        Arc::clone(&readiness),
        Lifetime::Server,
    ));

    let (admin_stop, admin_watch) = watch::channel(false);
    // Held here for the process: a dropped sender would read as "stop" to the admin.
    let admin_stop = Arc::new(admin_stop);
    if let Some(admin) = &spec.admin {
        let mut service = Service::new(
            "sluice-admin".to_string(),
            AdminApp::new(
                Arc::clone(&store),
                admin_token,
                Arc::clone(&readiness),
                cache,
            ),
        );
        service.add_tcp(&admin.listen);
        server.add_service(OnBound::new(
            "sluice-admin",
            service,
            admin_sockets,
            Arc::clone(&readiness),
            Lifetime::Own(admin_watch),
        ));
    }

    crate::health::start(Arc::clone(&store))
        .map_err(|e| format!("starting the health prober: {e}"))?;
    sweep_limits(Arc::clone(store.shared()))
        .map_err(|e| format!("starting the limit sweeper: {e}"))?;
    watch_file(Arc::clone(&store)).map_err(|e| format!("watching {}: {e}", config.display()))?;
    watch_sighup(Arc::clone(&store)).map_err(|e| format!("SIGHUP handler: {e}"))?;
    tracing::info!(
        listen = %spec.server.listen.join(","),
        admin = %spec.admin.as_ref().map_or("off", |a| a.listen.as_str()),
        "sluice started"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnTerm {
            active,
            connections,
            readiness,
            admin_stop: Arc::clone(&admin_stop),
            phases: std::sync::Mutex::new(Some(phases)),
            upgrade_sock,
            grace,
        }),
    });
    drop(admin_stop);
    Ok(())
}

/// Opens the cache tiers the policy asks for. They live for the process: a reload that
/// changes `cache:` or `redis:` takes effect on restart (logged by the reload).
fn open_cache(policy: &Policy, shared: &SharedState) -> Result<Option<Arc<PromptCache>>, String> {
    let Some(tiers) = &policy.cache_tiers else {
        return Ok(None);
    };
    let config = StoreConfig {
        memory_max_bytes: tiers.memory_max_bytes,
        redis: tiers.redis.as_ref().map(|r| RedisConfig {
            nodes: r.nodes.clone(),
            timeout: r.timeout,
            prefix: r.prefix.clone(),
        }),
        disk: tiers.disk.as_ref().map(|d| DiskConfig {
            path: d.path.clone(),
            max_bytes: d.max_bytes,
        }),
    };
    let store = CacheStore::open(&config, &shared.metrics).map_err(|e| format!("cache: {e}"))?;
    Ok(Some(Arc::new(PromptCache {
        store: Arc::new(store),
        flights: Flights::default(),
    })))
}

/// Connects the shared limits' Redis when a limit is shared. Like the cache, this lives for the
/// process: a reload that adds the first shared limit falls back to local buckets until restart.
fn open_shared_limits(
    policy: &Policy,
    shared: &SharedState,
) -> Result<Option<Arc<SharedBuckets>>, String> {
    let Some(redis) = &policy.limits_redis else {
        return Ok(None);
    };
    let config = RedisConfig {
        nodes: redis.nodes.clone(),
        timeout: redis.timeout,
        prefix: redis.prefix.clone(),
    };
    SharedBuckets::connect(&config, shared.metrics.limits_redis_errors())
        .map(Some)
        .map_err(|e| format!("limits: {e}"))
}

/// Every few seconds, evicts full (idle) limit buckets so distinct keys cannot grow memory
/// without bound.
fn sweep_limits(shared: Arc<SharedState>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("sluice-limit-sweep".into())
        .spawn(move || loop {
            std::thread::sleep(LIMIT_SWEEP_EVERY);
            shared.limit_buckets.sweep(Instant::now());
        })
        .map(drop)
}

const LIMIT_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// SIGTERM: stop accepting, let in-flight requests finish, exit when none is left (or at the
/// end of the grace period). SIGQUIT: the same, after handing the listening sockets to a
/// `run --upgrade` process. SIGINT: exit now.
struct DrainOnTerm {
    active: Arc<ActiveRequests>,
    /// Client connections still open: each is closed after its last answer (or a short
    /// last call), so exiting after them resets no client.
    connections: Arc<ActiveRequests>,
    readiness: Arc<Readiness>,
    /// Stops the admin listener, which otherwise serves until the process exits.
    admin_stop: Arc<watch::Sender<bool>>,
    phases: std::sync::Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    /// Where a `run --upgrade` process waits; SIGQUIT without one is ignored.
    upgrade_sock: String,
    grace: Duration,
}

impl DrainOnTerm {
    /// Exits once the requests in flight are done (at most `grace`), after `ready_to_drain`.
    fn exit_when_drained(&self, ready_to_drain: impl FnOnce() + Send + 'static) {
        let (active, connections, grace) = (
            Arc::clone(&self.active),
            Arc::clone(&self.connections),
            self.grace,
        );
        // Pingora waits out the whole grace period; exit as soon as the last request is done.
        let _ = std::thread::Builder::new()
            .name("drain".into())
            .spawn(move || {
                ready_to_drain();
                let deadline = Instant::now() + grace;
                while (active.count() > 0 || connections.count() > 0) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                tracing::info!(
                    requests = active.count(),
                    connections = connections.count(),
                    "drained, exiting"
                );
                crate::access_log::flush(Duration::from_millis(500));
                std::process::exit(0);
            });
    }
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnTerm {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!(
                "cannot install signal handlers; SIGTERM/SIGINT/SIGQUIT will not shut down gracefully"
            );
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!(in_flight = self.active.count(), grace_ms = self.grace.as_millis(), "SIGTERM: draining");
                    self.readiness.start_draining();
                    self.exit_when_drained(|| {});
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    // Without a new process to take them, handing over the sockets would only
                    // shut this one down: an outage, not an upgrade.
                    if !crate::upgrade::new_process_waits(&self.upgrade_sock) {
                        tracing::error!(
                            socket = %self.upgrade_sock,
                            "SIGQUIT ignored: no `sluice run --upgrade` waits for the sockets; still serving"
                        );
                        continue;
                    }
                    tracing::info!(in_flight = self.active.count(), "SIGQUIT: handing the listening sockets to the new process, then draining");
                    self.readiness.start_draining();
                    let phases = self.phases.lock().ok().and_then(|mut p| p.take());
                    let admin_stop = Arc::clone(&self.admin_stop);
                    // Both processes accept for a few seconds after the hand-over; drain after that.
                    self.exit_when_drained(move || {
                        let Some(mut phases) = phases else {
                            return;
                        };
                        while let Ok(phase) = phases.blocking_recv() {
                            match phase {
                                // Closing the admin listener before its socket is sent would send
                                // a closed descriptor; after, the new process answers there.
                                ExecutionPhase::GracefulUpgradeCloseTimeout => {
                                    let _ = admin_stop.send(true);
                                }
                                ExecutionPhase::ShutdownStarted => break,
                                _ => {}
                            }
                        }
                    });
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: exiting now");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
    }
}
