//! A Redis connection for a component on the request path (the cache's L2, the shared limits).
//! redis-rs's `ConnectionManager` reconnects by itself; the link adds what a request path
//! needs around it: a timeout on every command, failures counted and logged once per outage,
//! and an outage mode in which operations fail at once while a background probe (backoff
//! 250 ms doubling to 5 s) waits for Redis to answer again, so a dead Redis costs requests
//! nothing. The manager spawns its connection tasks on the runtime that calls it, so callers
//! use the link on the runtime given to [`RedisLink::start`] (they hop there).
//!
//! On a Redis Cluster the link holds redis-rs's cluster connection instead (slot map,
//! `MOVED`/`ASK`, reconnects); every key sluice writes carries a hash tag, so each command and
//! script touches one slot. It is made by the probe, so a cluster that is down at start is an
//! outage like any other.

use crate::outage::Outage;
use prometheus::IntCounter;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult,
    ScriptInvocation, Value,
};
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
    pub nodes: RedisNodes,
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
            nodes: RedisNodes::Single(url.into()),
            timeout: Duration::from_millis(100),
            prefix: "sluice".into(),
        }
    }
}

/// One Redis server, or a Redis Cluster by its seed nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNodes {
    /// `redis://[user:password@]host:port[/db]`.
    Single(String),
    /// `redis://[user:password@]host:port` of some of the cluster's nodes.
    Cluster(Vec<String>),
}

/// How the link makes a connection.
enum Connector {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster(ClusterClient),
}

/// A connection to one server or to a cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// A node a command can be sent to: for [`RedisLink::query_on`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNode {
    /// The one server.
    Server,
    /// A cluster master, by address.
    Master { host: String, port: u16 },
}

/// One component's connection to Redis, with timeouts, outage mode and a reconnecting probe.
pub struct RedisLink {
    /// First word of every log line ("cache", "limits").
    component: &'static str,
    connector: Connector,
    /// Replaced by the probe after each failed attempt, so every attempt starts clean; `None`
    /// until the probe has connected to a cluster.
    connection: RwLock<Option<Connection>>,
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
        let (connector, address) = connector(config)?;
        // The manager spawns its connection tasks on the runtime it is created in: `handle`'s.
        let connection = {
            let _entered = handle.enter();
            connector.lazy()?
        };
        let link = Arc::new(RedisLink {
            component,
            connector,
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
            command.query_async::<T>(&mut self.connection()?).await
        })
        .await
    }

    /// The nodes that hold the data: the server, or every master of a cluster (from its slot
    /// map), for commands such as SCAN that see one node's keys.
    pub async fn data_nodes(&self) -> Result<Vec<RedisNode>, String> {
        if matches!(self.connector, Connector::Single { .. }) {
            return Ok(vec![RedisNode::Server]);
        }
        let slots: Vec<Vec<Value>> = self.query(&redis::cmd("CLUSTER").arg("SLOTS")).await?;
        let mut masters: Vec<RedisNode> =
            slots.iter().filter_map(|range| master_of(range)).collect();
        masters.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        masters.dedup();
        Ok(masters)
    }

    /// One command on `node`, with the failure handling of [`RedisLink::query`].
    pub async fn query_on<T: FromRedisValue>(
        &self,
        node: &RedisNode,
        command: &Cmd,
    ) -> Result<T, String> {
        let name = command_name(command);
        self.run(1, &name, self.timeout, async {
            match (node, self.connection()?) {
                (RedisNode::Master { host, port }, Connection::Cluster(mut c)) => {
                    let route = SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    };
                    let value = c
                        .route_command(command.clone(), RoutingInfo::SingleNode(route))
                        .await?;
                    T::from_redis_value(value).map_err(RedisError::from)
                }
                (_, mut c) => command.query_async::<T>(&mut c).await,
            }
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
            script.invoke_async::<T>(&mut self.connection()?).await
        })
        .await
    }

    /// A pipeline of `commands` commands within min(`commands`, 10) timeouts; a failure counts
    /// as `commands` failed operations. `what` names it in the log. On a cluster the commands
    /// go out one by one, concurrently, and every result is returned (ignored ones too).
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        what: &str,
        pipe: &Pipeline,
        commands: u32,
    ) -> Result<T, String> {
        let limit = self.timeout * commands.clamp(1, PIPELINE_TIMEOUTS);
        self.run(u64::from(commands), what, limit, async {
            match self.connection()? {
                // A cluster refuses a pipeline across slots: each command goes to its own
                // slot's master, all at once (the results of ignored commands included).
                Connection::Cluster(c) => {
                    let sent = pipe.cmd_iter().map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<Value>(&mut c).await }
                    });
                    let values = futures_util::future::try_join_all(sent).await?;
                    T::from_redis_value(Value::Array(values)).map_err(RedisError::from)
                }
                mut single => pipe.query_async::<T>(&mut single).await,
            }
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
            self.connect_cluster().await;
            let mut ping = redis::cmd("PING");
            ping.arg("sluice");
            let pong = timed(self.timeout, async {
                ping.query_async::<String>(&mut self.connection()?).await
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

    fn connection(&self) -> RedisResult<Connection> {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        connection
            .clone()
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "not connected to the cluster yet")))
    }

    /// Connects to the cluster if the link has no connection (the probe's first step).
    async fn connect_cluster(&self) {
        let Connector::Cluster(client) = &self.connector else {
            return;
        };
        if self.connection().is_ok() {
            return;
        }
        let connected = timed(self.timeout * 4, client.get_async_connection()).await;
        if let Ok(c) = connected {
            *self
                .connection
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(Connection::Cluster(c));
        }
    }

    /// Swaps in a fresh lazy manager (the next probe reconnects a cluster); called by the
    /// probe, so on the link's runtime.
    fn renew_connection(&self) {
        if let Ok(fresh) = self.connector.lazy() {
            *self
                .connection
                .write()
                .unwrap_or_else(PoisonError::into_inner) = fresh;
        }
    }
}

impl Connector {
    /// A connection that connects on first use (one server), or none yet (a cluster).
    fn lazy(&self) -> Result<Option<Connection>, String> {
        match self {
            Connector::Single { client, config } => {
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map(|m| Some(Connection::Single(m)))
                    .map_err(|e| format!("redis connection setup: {e}"))
            }
            Connector::Cluster(_) => Ok(None),
        }
    }
}

/// The connector for `config` and the address logs name (never a password).
fn connector(config: &RedisConfig) -> Result<(Connector, String), String> {
    let open = |url: &str| redis::Client::open(url).map_err(|e| format!("invalid redis url: {e}"));
    match &config.nodes {
        RedisNodes::Single(url) => {
            let client = open(url)?;
            let address = client.get_connection_info().addr().to_string();
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(0)
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout));
            Ok((Connector::Single { client, config }, address))
        }
        RedisNodes::Cluster(seeds) => {
            let mut addresses = Vec::with_capacity(seeds.len());
            for seed in seeds {
                addresses.push(open(seed)?.get_connection_info().addr().to_string());
            }
            let client = ClusterClient::builder(seeds.iter().map(String::as_str))
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .retries(2)
                .build()
                .map_err(|e| format!("invalid redis cluster: {e}"))?;
            Ok((
                Connector::Cluster(client),
                format!("cluster [{}]", addresses.join(", ")),
            ))
        }
    }
}

/// The master of one `CLUSTER SLOTS` entry: `[start, end, [host, port, id, ..], replicas..]`.
fn master_of(range: &[Value]) -> Option<RedisNode> {
    let Some(Value::Array(master)) = range.get(2) else {
        return None;
    };
    let host: String = redis::from_redis_value(master.first()?.clone()).ok()?;
    let port: u16 = redis::from_redis_value(master.get(1)?.clone()).ok()?;
    Some(RedisNode::Master { host, port })
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
