//! A Redis connection for a component on the request path (the cache's L2, the shared limits).
//! redis-rs's `ConnectionManager` reconnects by itself; the link adds what a request path
//! needs around it: a timeout on every command, failures counted and logged once per outage,
//! and an outage mode in which operations fail at once while a background probe (backoff
//! 250 ms doubling to 5 s) waits for Redis to answer again, so a dead Redis costs requests
//! nothing. The manager spawns its connection tasks on the runtime that calls it, so callers
//! use the link on the runtime given to [`RedisLink::start`] (they hop there).

use crate::outage::Outage;
use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, RedisResult, ScriptInvocation};
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::Notify;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A pipeline of n commands may take up to min(n, this) command timeouts.
const PIPELINE_TIMEOUTS: u32 = 10;

/// Where a Redis is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Per-command timeout.
    pub timeout: Duration,
    /// Key prefix, default `"sluice"`.
    pub prefix: String,
}

impl RedisConfig {
    /// A config for `url` with the default timeout (100 ms) and prefix (`sluice`).
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            timeout: Duration::from_millis(100),
            prefix: "sluice".into(),
        }
    }
}

/// One component's connection to Redis, with timeouts, outage mode and a reconnecting probe.
pub struct RedisLink {
    /// First word of every log line ("cache", "limits").
    component: &'static str,
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    /// Replaced by the probe after each failed attempt, so every attempt starts clean.
    connection: RwLock<ConnectionManager>,
    outage: Outage,
    /// Wakes the probe when an operation fails.
    wake: Notify,
    prefix: String,
    timeout: Duration,
    /// `host:port` for logs (the URL may hold a password).
    address: String,
}

impl RedisLink {
    /// Creates the link and its probe on `handle`'s runtime, then waits up to one timeout for
    /// the first answer. Only a malformed URL is an error; an unreachable Redis is an outage.
    /// `errors` counts failed operations.
    pub fn start(
        config: &RedisConfig,
        component: &'static str,
        errors: IntCounter,
        handle: &Handle,
    ) -> Result<Arc<RedisLink>, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("invalid redis url: {e}"))?;
        let address = client.get_connection_info().addr().to_string();
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout));
        // The manager spawns its connection tasks on the runtime it is created in: `handle`'s.
        let connection = {
            let _entered = handle.enter();
            lazy_manager(&client, &manager_config)?
        };
        let link = Arc::new(RedisLink {
            component,
            client,
            manager_config,
            connection: RwLock::new(connection),
            outage: Outage::new(component, "redis", errors, true),
            wake: Notify::new(),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            address,
        });
        let (answered, first_answer) = std::sync::mpsc::channel();
        handle.spawn(Arc::clone(&link).keep_alive(answered));
        let _ = first_answer.recv_timeout(config.timeout + Duration::from_millis(50));
        Ok(link)
    }

    /// Whether operations go to Redis now (false from the first failure until the probe gets
    /// an answer).
    #[must_use]
    pub fn is_up(&self) -> bool {
        !self.outage.is_failing()
    }

    /// The configured key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// One command within the timeout. While Redis is down, fails at once; a failure is
    /// counted and starts an outage.
    pub async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, String> {
        let name = command_name(command);
        self.run(1, &name, self.timeout, async {
            command.query_async::<T>(&mut self.connection()).await
        })
        .await
    }

    /// One script by EVALSHA (loaded and retried on NOSCRIPT, all within one timeout), with
    /// the same failure handling as [`RedisLink::query`]; `what` names it in the log.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        what: &str,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, String> {
        self.run(1, what, self.timeout, async {
            script.invoke_async::<T>(&mut self.connection()).await
        })
        .await
    }

    /// A pipeline of `commands` commands within min(`commands`, 10) timeouts; a failure counts
    /// as `commands` failed operations. `what` names it in the log.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        what: &str,
        pipe: &Pipeline,
        commands: u32,
    ) -> Result<T, String> {
        let limit = self.timeout * commands.clamp(1, PIPELINE_TIMEOUTS);
        self.run(u64::from(commands), what, limit, async {
            pipe.query_async::<T>(&mut self.connection()).await
        })
        .await
    }

    /// Runs `operation` unless Redis is down; counts a failure and wakes the probe.
    async fn run<T>(
        &self,
        count: u64,
        what: &str,
        limit: Duration,
        operation: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        if !self.is_up() {
            return Err(format!("{}: redis is down", self.component));
        }
        let result = timed(limit, operation).await;
        if let Err(e) = &result {
            if self.outage.failed(count, what, e) {
                self.wake.notify_one();
            }
        }
        result
    }

    /// Probes Redis while it is down: at once at start, then after each failure with backoff.
    async fn keep_alive(self: Arc<Self>, answered: std::sync::mpsc::Sender<()>) {
        let component = self.component;
        let mut first_answer = Some(answered);
        let mut ever_up = false;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut ping = redis::cmd("PING");
            ping.arg("sluice");
            let pong = timed(self.timeout, async {
                ping.query_async::<String>(&mut self.connection()).await
            });
            match pong.await {
                Ok(_) => {
                    if ever_up {
                        self.outage.recovered();
                    } else {
                        self.outage.clear();
                        tracing::info!(address = %self.address, "{component}: redis connected");
                    }
                    ever_up = true;
                    first_answer.take().map(|a| a.send(()));
                    while !self.outage.is_failing() {
                        self.wake.notified().await;
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    if first_answer.is_some() {
                        tracing::warn!(
                            address = %self.address,
                            "{component}: redis does not answer ({e}); skipped until it does"
                        );
                    }
                    self.outage.failed(1, "probe", &e);
                    first_answer.take().map(|a| a.send(()));
                    self.renew_connection();
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn connection(&self) -> ConnectionManager {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swaps in a fresh lazy manager; called by the probe, so on the link's runtime.
    fn renew_connection(&self) {
        if let Ok(fresh) = lazy_manager(&self.client, &self.manager_config) {
            *self
                .connection
                .write()
                .unwrap_or_else(PoisonError::into_inner) = fresh;
        }
    }
}

fn lazy_manager(
    client: &redis::Client,
    config: &ConnectionManagerConfig,
) -> Result<ConnectionManager, String> {
    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
        .map_err(|e| format!("redis connection setup: {e}"))
}

async fn timed<T>(
    limit: Duration,
    operation: impl Future<Output = RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// The command's name for log lines ("GET", "SCAN").
fn command_name(command: &Cmd) -> String {
    match command.args_iter().next() {
        Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
        _ => "command".into(),
    }
}
