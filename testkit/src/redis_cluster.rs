//! A real Redis Cluster per test (3 masters, 3 replicas), for the shared cache and limits on a
//! cluster: never mocked.

use crate::redis::{installed, spawn_ready};
use crate::{free_port, Proc, StartFailure, READY_WITHIN, START_ATTEMPTS};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Three masters, each with one replica.
const NODES: usize = 6;
const SLOTS: u32 = 16_384;
/// Failure detection takes this long; short, so a failover fits in a test.
const NODE_TIMEOUT_MS: &str = "1000";

/// A Redis Cluster of six `redis-server` processes on loopback ports: three masters with one
/// replica each, no persistence, all killed on drop. `kill_master` and `wait_promoted`
/// simulate a failover.
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// Client ports of the masters killed so far.
    killed: Vec<u16>,
    /// The nodes' configs and logs, one subdirectory each.
    _dir: tempfile::TempDir,
}

/// One cluster node: its client port, its cluster bus port and its process while it runs.
struct Node {
    port: u16,
    bus_port: u16,
    proc: Option<Proc>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create` and waits until every
    /// node has all slots and every replica is in sync. Panics if redis-server or redis-cli
    /// is not installed: the tests that need them must fail, not skip.
    #[must_use]
    pub fn start() -> RedisCluster {
        let cli = installed("redis-cli");
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<Node> = (0..NODES)
            .map(|i| Node::start(&dir.path().join(format!("node-{i}"))))
            .collect();
        let out = Command::new(cli)
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        let cluster = RedisCluster {
            nodes,
            killed: Vec::new(),
            _dir: dir,
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}\n{}\nlogs:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.log_text()
        );
        cluster.wait_until("the cluster formed", RedisCluster::healthy);
        cluster
    }

    /// `redis://127.0.0.1:port` of every node, masters and replicas (killed ones too).
    #[must_use]
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Ports of the live masters that serve slots, lowest first.
    #[must_use]
    pub fn masters(&self) -> Vec<u16> {
        self.live_with_role("master")
    }

    /// Ports of the live replicas, lowest first.
    #[must_use]
    pub fn replicas(&self) -> Vec<u16> {
        self.live_with_role("slave")
    }

    /// Kills master `i` of [`RedisCluster::masters`] with SIGKILL (a crash) and returns its
    /// port. Its replica takes over once the others notice: see [`RedisCluster::wait_promoted`].
    pub fn kill_master(&mut self, i: usize) -> u16 {
        let masters = self.masters();
        let port = *masters
            .get(i)
            .unwrap_or_else(|| panic!("no master {i}: masters are {masters:?}"));
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a master is one of the nodes");
        node.proc = None;
        self.killed.push(port);
        port
    }

    /// Waits until every live node marks the killed masters failed, their slots are served by
    /// promoted replicas, and the cluster is healthy again (all slots, replicas in sync).
    pub fn wait_promoted(&self) {
        self.wait_until("a replica took over the killed master's slots", |c| {
            c.healthy() && c.killed_masters_replaced()
        });
    }

    /// Keys on each live master (DBSIZE), in the order of [`RedisCluster::masters`].
    #[must_use]
    pub fn dbsizes(&self) -> Vec<u64> {
        self.masters()
            .into_iter()
            .map(|port| {
                command(port, &["DBSIZE"])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Keys in the whole cluster: the sum of DBSIZE over the live masters.
    #[must_use]
    pub fn dbsize_total(&self) -> u64 {
        self.dbsizes().iter().sum()
    }

    /// Runs `redis-cli -c` (following redirections) with `args` against a live node and
    /// returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_on(self.live_ports()[0], args)
    }

    /// Everything the nodes logged so far, node by node.
    #[must_use]
    pub fn log_text(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.port, n.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Live nodes whose flags (in the first live node's view) include `role`, lowest port
    /// first; masters only with slots.
    fn live_with_role(&self, role: &str) -> Vec<u16> {
        let view = cluster_nodes(self.live_ports()[0]).unwrap_or_default();
        let mut ports: Vec<u16> = view
            .iter()
            .filter(|n| n.flags.iter().any(|f| f == role) && !n.failed())
            .filter(|n| role != "master" || n.has_slots)
            .map(|n| n.port)
            .filter(|p| !self.killed.contains(p))
            .collect();
        ports.sort_unstable();
        ports
    }

    /// Every live node: cluster state ok, all slots served, three masters with slots, and
    /// each replica's link to its master up (so a failover finds its data there).
    fn healthy(&self) -> bool {
        self.live_ports().into_iter().all(|port| {
            let Ok(info) = command(port, &["CLUSTER", "INFO"]) else {
                return false;
            };
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
            };
            let slots_ok = SLOTS.to_string();
            let view = cluster_nodes(port).unwrap_or_default();
            let serving = view.iter().filter(|n| n.has_slots && !n.failed()).count();
            let replica_in_sync = !view
                .iter()
                .any(|n| n.port == port && n.flags.iter().any(|f| f == "slave"))
                || command(port, &["INFO", "replication"])
                    .is_ok_and(|r| r.lines().any(|l| l.trim() == "master_link_status:up"));
            field("cluster_state") == Some("ok")
                && field("cluster_slots_ok") == Some(slots_ok.as_str())
                && serving == NODES / 2
                && replica_in_sync
        })
    }

    /// Every live node sees each killed master as failed and without slots.
    fn killed_masters_replaced(&self) -> bool {
        self.live_ports().into_iter().all(|port| {
            cluster_nodes(port).is_ok_and(|view| {
                self.killed.iter().all(|dead| {
                    view.iter()
                        .any(|n| n.port == *dead && n.failed() && !n.has_slots)
                })
            })
        })
    }

    /// Polls `done` until it holds; panics with the cluster's view and logs after
    /// [`READY_WITHIN`].
    fn wait_until(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + READY_WITHIN;
        while !done(self) {
            if Instant::now() > deadline {
                let view = self
                    .live_ports()
                    .first()
                    .map(|p| command(*p, &["CLUSTER", "NODES"]));
                panic!(
                    "Redis Cluster: not {what} after {READY_WITHIN:?}; CLUSTER NODES: {view:?}\nlogs:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Node {
    /// Starts a cluster-enabled redis-server in `dir` on fresh ports, retried when it loses
    /// them.
    fn start(dir: &Path) -> Node {
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            // A failed attempt may have left a cluster config naming its ports.
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).expect("node dir");
            let mut node = Node {
                port: free_port(),
                bus_port: free_port(),
                proc: None,
                dir: dir.to_path_buf(),
            };
            match node.spawn() {
                Ok(()) => return node,
                Err(StartFailure::Ports(why)) => failures.push_str(&format!(
                    "attempt {attempt} (ports {}, {}): {why}; log:\n{}\n",
                    node.port,
                    node.bus_port,
                    node.log_text()
                )),
                Err(StartFailure::Stuck(why)) => panic!(
                    "{failures}redis-server (cluster node) did not start: {why}; log:\n{}",
                    node.log_text()
                ),
            }
        }
        panic!(
            "redis-server (cluster node) did not start in {START_ATTEMPTS} attempts:\n{failures}"
        );
    }

    fn spawn(&mut self) -> Result<(), StartFailure> {
        let bus_port = self.bus_port.to_string();
        let cluster = [
            ["--cluster-port", &bus_port],
            ["--cluster-enabled", "yes"],
            ["--cluster-config-file", "nodes.conf"],
            ["--cluster-node-timeout", NODE_TIMEOUT_MS],
            // A replica takes over however long its link was down: failovers must not stall.
            ["--cluster-replica-validity-factor", "0"],
        ];
        self.proc = Some(spawn_ready(
            &self.dir,
            &[self.port, self.bus_port],
            cluster.as_flattened(),
        )?);
        Ok(())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

/// One line of CLUSTER NODES, the parts the harness reads.
struct NodeView {
    port: u16,
    flags: Vec<String>,
    has_slots: bool,
}

impl NodeView {
    /// Marked failed (`fail`) or suspected by this node (`fail?`).
    fn failed(&self) -> bool {
        self.flags.iter().any(|f| f.starts_with("fail"))
    }
}

/// CLUSTER NODES as `port`'s node sees the cluster. Lines: `id ip:port@bus flags master
/// ping pong epoch link slot...`.
fn cluster_nodes(port: u16) -> std::io::Result<Vec<NodeView>> {
    let text = command(port, &["CLUSTER", "NODES"])?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?.split('@').next()?;
            Some(NodeView {
                port: addr.rsplit(':').next()?.parse().ok()?,
                flags: fields.get(2)?.split(',').map(str::to_string).collect(),
                has_slots: fields.len() > 8,
            })
        })
        .collect())
}

/// Sends one command over RESP on a raw socket and returns a status, integer or bulk reply
/// as text; an error reply is an error.
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "$" => {
            let len: usize = rest.parse().unwrap_or(0);
            let mut bulk = vec![0; len + 2];
            reader.read_exact(&mut bulk)?;
            bulk.truncate(len);
            Ok(String::from_utf8_lossy(&bulk).into_owned())
        }
        _ => Err(std::io::Error::other(format!("redis replied {line:?}"))),
    }
}

/// `redis-cli -c -p port args...`, its output trimmed; panics when it does not run.
fn cli_on(port: u16, args: &[&str]) -> String {
    let out = Command::new(installed("redis-cli"))
        .args(["-c", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli -c -p {port} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_three_masters_with_a_replica_each() {
        let cluster = RedisCluster::start();
        assert_eq!(cluster.masters().len(), 3, "{}", cluster.log_text());
        assert_eq!(cluster.replicas().len(), 3, "{}", cluster.log_text());
        assert_eq!(cluster.seeds().len(), NODES);
        for port in cluster.live_ports() {
            let info = command(port, &["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_state:ok"), "{port}: {info}");
            assert!(info.contains("cluster_slots_ok:16384"), "{port}: {info}");
        }
        assert_eq!(cluster.dbsize_total(), 0);
    }

    #[test]
    fn a_key_set_through_one_node_is_read_through_another() {
        let cluster = RedisCluster::start();
        let (masters, replicas) = (cluster.masters(), cluster.replicas());
        for i in 0..10 {
            assert_eq!(
                cli_on(
                    masters[i % 3],
                    &["SET", &format!("key-{i}"), &format!("v{i}")]
                ),
                "OK"
            );
        }
        for i in 0..10 {
            for port in [masters[(i + 1) % 3], replicas[i % 3]] {
                let got = cli_on(port, &["GET", &format!("key-{i}")]);
                assert_eq!(got, format!("v{i}"), "key-{i} through {port}");
            }
        }
        assert_eq!(cluster.dbsize_total(), 10);
        let spread = cluster.dbsizes().iter().filter(|n| **n > 0).count();
        assert!(spread > 1, "10 keys on one master: {:?}", cluster.dbsizes());
    }

    #[test]
    fn a_killed_master_is_replaced_by_its_replica() {
        let mut cluster = RedisCluster::start();
        assert_eq!(cluster.cli(&["SET", "survivor", "yes"]), "OK");
        // The write reached the replica before the crash.
        let deadline = Instant::now() + READY_WITHIN;
        while cluster
            .replicas()
            .iter()
            .map(|p| command(*p, &["DBSIZE"]).unwrap())
            .all(|n| n == "0")
        {
            assert!(Instant::now() < deadline, "the replica never got the key");
            std::thread::sleep(Duration::from_millis(20));
        }
        let holder = cluster.dbsizes().iter().position(|n| *n == 1).unwrap();
        let (masters, replicas) = (cluster.masters(), cluster.replicas());
        let dead = cluster.kill_master(holder);
        assert_eq!(dead, masters[holder]);
        cluster.wait_promoted();

        let now = cluster.masters();
        assert_eq!(now.len(), 3, "{now:?}");
        assert!(!now.contains(&dead), "{now:?}");
        let promoted: Vec<u16> = now
            .iter()
            .copied()
            .filter(|p| replicas.contains(p))
            .collect();
        assert_eq!(
            promoted.len(),
            1,
            "masters {now:?}, replicas were {replicas:?}"
        );
        assert_eq!(cluster.replicas().len(), 2);
        assert_eq!(cluster.cli(&["GET", "survivor"]), "yes");
        assert_eq!(cluster.dbsize_total(), 1);
    }
}
