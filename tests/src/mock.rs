//! mock-llm as a process: started on an ephemeral port or a given one, stopped like a crash,
//! and asked how many requests it answered.

use crate::{bin, PATIENCE};
use sluice_testkit::Proc;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A running mock-llm.
pub struct Mock {
    pub url: String,
    _proc: Proc,
}

impl Mock {
    /// Starts a mock named `name` on an ephemeral port with extra command-line knobs.
    #[must_use]
    pub fn start(name: &str, args: &[&str]) -> Mock {
        Mock::spawn("127.0.0.1:0", name, args).expect("mock-llm starts and prints its address")
    }

    /// Starts mock-llm on `listen`; `None` when it did not come up (e.g. the port is taken).
    fn spawn(listen: &str, name: &str, args: &[&str]) -> Option<Mock> {
        let mut child = Command::new(bin("mock-llm"))
            .args(["--listen", listen, "--name", name, "--threads", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mock-llm");
        let stdout = child.stdout.take().expect("mock stdout");
        let mut line = String::new();
        let printed = BufReader::new(stdout).read_line(&mut line).unwrap_or(0) > 0;
        let mut proc = Proc { child };
        if !(printed && proc.running()) {
            return None;
        }
        let url = line.split_whitespace().last()?.to_string();
        Some(Mock { url, _proc: proc })
    }
}

// === Mocks that go away and come back ===

impl Mock {
    /// Starts a mock named `name` on `127.0.0.1:port` (a [`free_port`](crate::free_port), or the port of a mock
    /// that was [`stop`](Mock::stop)ped, to bring an endpoint back at the same URL). The bind is
    /// retried for a moment, in case the old process's socket is still being torn down.
    #[must_use]
    pub fn start_on(name: &str, port: u16, args: &[&str]) -> Mock {
        let listen = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(mock) = Mock::spawn(&listen, name, args) {
                return mock;
            }
            assert!(
                Instant::now() < deadline,
                "mock-llm {name} could not listen on {listen} within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port the mock listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("mock URL ends with its port")
    }

    /// Kills the mock at once (like a crash): its URL refuses connections from now on.
    pub fn stop(&mut self) {
        let _ = self._proc.child.kill();
        let _ = self._proc.child.wait();
    }
}

// === impl UpstreamCalls ===

/// Counts the requests a mock answered, not counting the stats requests themselves.
pub struct UpstreamCalls {
    url: String,
    reads: u64,
}

impl UpstreamCalls {
    #[must_use]
    pub fn of(mock: &Mock) -> UpstreamCalls {
        UpstreamCalls {
            url: mock.url.clone(),
            reads: 0,
        }
    }

    /// Upstream calls so far (each stats GET counts itself at the mock).
    pub async fn calls(&mut self) -> u64 {
        let v: serde_json::Value = reqwest::get(format!("{}/mock/stats", self.url))
            .await
            .expect("mock stats")
            .json()
            .await
            .expect("stats JSON");
        self.reads += 1;
        v["requests"].as_u64().expect("requests") - self.reads
    }

    /// Waits until the mock has answered `n` requests (within 10 s).
    pub async fn reaches(&mut self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.calls().await < n {
            assert!(
                std::time::Instant::now() < deadline,
                "the mock never got {n} requests"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
