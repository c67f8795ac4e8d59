//! A real redis-server per test, for the shared cache and limits: never mocked.

use crate::{free_port, listener_is_child, Proc, StartFailure, READY_WITHIN, START_ATTEMPTS};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A real redis-server on a loopback port, for the shared cache and limits: no persistence,
/// killed on drop. `stop` and `restart` (same port) simulate an outage.
pub struct RedisServer {
    port: u16,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server and waits until it answers PING. Panics if it is not installed:
    /// the tests that need it must fail, not skip.
    #[must_use]
    pub fn start() -> RedisServer {
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut redis = RedisServer {
                port: free_port(),
                proc: None,
                dir: tempfile::tempdir().expect("tempdir"),
            };
            match redis.spawn() {
                Ok(()) => return redis,
                Err(StartFailure::Ports(why)) => failures.push_str(&format!(
                    "attempt {attempt} (port {}): {why}; log:\n{}\n",
                    redis.port,
                    redis.log_text()
                )),
                Err(StartFailure::Stuck(why)) => panic!(
                    "{failures}redis-server did not start: {why}; log:\n{}",
                    redis.log_text()
                ),
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts:\n{failures}");
    }

    /// `redis://127.0.0.1:port`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (no shutdown handshake, like a crash); its port stays reserved.
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts the server again on the same port (stopping it first if it runs), empty.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(StartFailure::Ports(why) | StartFailure::Stuck(why)) = self.spawn() {
            panic!(
                "redis-server did not restart on port {}: {why}; log:\n{}",
                self.port,
                self.log_text()
            );
        }
    }

    /// Sends PING and returns the reply line (`+PONG` when up).
    pub fn ping(&self) -> std::io::Result<String> {
        redis_ping(self.port)
    }

    /// Keys in the database (DBSIZE); 0 while it does not answer.
    #[must_use]
    pub fn dbsize(&self) -> u64 {
        redis_command(self.port, "DBSIZE")
            .ok()
            .and_then(|l| l.strip_prefix(':').and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }

    /// Everything redis-server logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), StartFailure> {
        self.proc = Some(spawn_ready(self.dir.path(), &[self.port], &[])?);
        Ok(())
    }
}

/// Starts redis-server on `ports[0]` in `dir` (its log in `redis.log` there), without
/// persistence and with `extra` arguments, and waits until it answers PING. `Ports` when it
/// exits early or another process holds one of `ports`: retry on fresh ones.
pub(crate) fn spawn_ready(dir: &Path, ports: &[u16], extra: &[&str]) -> Result<Proc, StartFailure> {
    let log = std::fs::File::create(dir.join("redis.log")).expect("log file");
    let child = Command::new(installed("redis-server"))
        .args(["--port", &ports[0].to_string(), "--bind", "127.0.0.1"])
        .args(extra)
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(log.try_clone().expect("log clone"))
        .stderr(log)
        .spawn()
        .expect("spawn redis-server");
    let mut proc = Proc { child };
    let pid = proc.child.id();
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            return Err(StartFailure::Ports(format!("exited early ({status})")));
        }
        let answered = redis_ping(ports[0]).is_ok_and(|r| r == "+PONG");
        let owners: Vec<Option<bool>> = ports.iter().map(|p| listener_is_child(pid, *p)).collect();
        if owners.contains(&Some(false)) {
            return Err(StartFailure::Ports("another process holds its port".into()));
        }
        if answered {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            return Err(StartFailure::Stuck(format!(
                "no PONG after {READY_WITHIN:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tool` (redis-server, redis-cli) from `PATH` or the sbin directories; panics when it is not
/// installed: the tests that need it must fail, not skip.
pub(crate) fn installed(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{tool} is not installed, and the shared cache and limits tests need a real one: \
                 run `make deps` (Debian: apt-get install redis-server, which ships redis-cli)"
            )
        })
}

/// PING over RESP on a raw socket; the reply line without its CRLF.
fn redis_ping(port: u16) -> std::io::Result<String> {
    redis_command(port, "PING")
}

/// Sends a RESP command without arguments and returns the reply line.
fn redis_command(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "*1\r\n${}\r\n{cmd}\r\n", cmd.len())?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}
