//! A running sluice on ephemeral ports: started (and retried when it loses its ports), its log,
//! its config rewritten for live reloads, signals, and its `/metrics` polled until a series
//! gets there.

use crate::metrics::metric_value;
use crate::{bin, PATIENCE};
use sluice_testkit::{
    free_port, listener_is_child, Proc, StartFailure, READY_WITHIN, START_ATTEMPTS,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What sluice prints when a listen address is taken (it then exits 1).
const BIND_FAILED: [&str; 1] = ["cannot listen on"];

/// A running sluice with its config file and captured log.
pub struct Gateway {
    pub url: String,
    pub admin: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts sluice on `yaml`, where `{listen}` and `{admin}` are replaced by free ports.
    #[must_use]
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &[])
    }

    #[must_use]
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_with(yaml, env, &[])
    }

    /// Starts sluice with extra environment and command-line arguments (before `run`). Ready
    /// means: still running, holding both ports, `/readyz` answers 200 and the proxy port
    /// accepts. A start that loses its ports is retried on fresh ones; any other failure
    /// panics with the log.
    #[must_use]
    pub fn start_with(yaml: &str, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        Self::start_placed(yaml, env, args, |dir, text| {
            let config = dir.join("gateway.yaml");
            std::fs::write(&config, text).expect("write config");
            config
        })
    }

    /// Like [`Gateway::start_with`], but `place` lays the config out: given the gateway's temp
    /// dir and the YAML with its ports filled in, it writes the file(s) and returns the path
    /// for `--config` (a Kubernetes ConfigMap's symlinks, say).
    #[must_use]
    pub fn start_placed(
        yaml: &str,
        env: &[(&str, &str)],
        args: &[&str],
        place: impl Fn(&Path, &str) -> PathBuf,
    ) -> Gateway {
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut gw = Self::spawn(yaml, env, args, &place);
            match gw.wait_ready(yaml) {
                Ok(()) => return gw,
                Err(StartFailure::Ports(why)) => failures.push_str(&format!(
                    "attempt {attempt} ({} / {}): {why}; log:\n{}\n",
                    gw.url,
                    gw.admin,
                    gw.log_text()
                )),
                Err(StartFailure::Stuck(why)) => {
                    panic!(
                        "{failures}sluice did not start: {why}; log:\n{}",
                        gw.log_text()
                    )
                }
            }
        }
        panic!("sluice did not start in {START_ATTEMPTS} attempts:\n{failures}");
    }

    /// Writes the config with fresh ports and spawns sluice on it.
    fn spawn(
        yaml: &str,
        env: &[(&str, &str)],
        args: &[&str],
        place: &impl Fn(&Path, &str) -> PathBuf,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let (listen, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let config = place(
            dir.path(),
            &yaml.replace("{listen}", &listen).replace("{admin}", &admin),
        );
        let log = dir.path().join("sluice.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin("sluice"))
            .args(args)
            .args(["run", "--config"])
            .arg(&config)
            // The caller's environment last, so it can override RUST_LOG.
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(log_file.try_clone().expect("log clone"))
            .stderr(log_file)
            .spawn()
            .expect("spawn sluice");
        Gateway {
            url: format!("http://{listen}"),
            admin: format!("http://{admin}"),
            config,
            log,
            proc: Proc { child },
            _dir: dir,
        }
    }

    /// Waits until sluice serves on the ports that `yaml` asks for.
    fn wait_ready(&mut self, yaml: &str) -> Result<(), StartFailure> {
        let pid = self.proc.child.id();
        let listen = self.url.trim_start_matches("http://").to_string();
        let admin = self.admin.trim_start_matches("http://").to_string();
        let mut ours = Vec::new();
        if yaml.contains("{listen}") {
            ours.push(listen.clone());
        }
        if yaml.contains("{admin}") {
            ours.push(admin.clone());
        }
        let port = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        let deadline = Instant::now() + READY_WITHIN;
        let mut foreign_since: Option<Instant> = None;
        loop {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return Err(StartFailure::Ports(format!("exited early ({status})")));
            }
            let log = self.log_text();
            if let Some(line) = log
                .lines()
                .find(|l| BIND_FAILED.iter().any(|m| l.contains(m)))
            {
                return Err(StartFailure::Ports(format!(
                    "a listener failed to bind: {line}"
                )));
            }
            let serving = (!ours.contains(&listen) || TcpStream::connect(&listen).is_ok())
                && (!ours.contains(&admin) || http_status(&admin, "/readyz") == Some(200));
            let foreign = ours
                .iter()
                .any(|a| port(a).and_then(|p| listener_is_child(pid, p)) == Some(false));
            if serving && !foreign {
                return Ok(());
            }
            // Something else listens on our ports: another process got there first. Give
            // sluice a moment to fail its bind, then move on regardless.
            if foreign {
                let since = *foreign_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    return Err(StartFailure::Ports(
                        "another process holds its ports".into(),
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(StartFailure::Stuck(format!(
                    "not ready after {READY_WITHIN:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log once `done` holds for it, or after [`PATIENCE`]; the caller asserts on it.
    #[must_use]
    pub fn log_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log_text();
            if done(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything sluice logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `yaml` with `{listen}` and `{admin}` replaced by the running ports.
    #[must_use]
    pub fn fill(&self, yaml: &str) -> String {
        let listen = self.url.trim_start_matches("http://");
        let admin = self.admin.trim_start_matches("http://");
        yaml.replace("{listen}", listen).replace("{admin}", admin)
    }

    /// Replaces the config file atomically (triggering a live reload), keeping the running ports.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, self.fill(yaml)).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }

    /// Sends a signal to the sluice process.
    pub fn signal(&self, sig: &str) {
        let pid = self.proc.child.id();
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{sig} {pid}");
    }

    /// POSTs `body` to `/v1/chat/completions`.
    pub async fn chat(
        &self,
        client: &reqwest::Client,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        client
            .post(format!("{}/v1/chat/completions", self.url))
            .body(body)
            .send()
            .await
            .expect("chat request")
    }

    /// `/metrics` once the [`metric_value`] of `series` reaches `want` (metrics are recorded
    /// just after the response is sent), or after [`PATIENCE`]; the caller asserts on the text.
    pub async fn metrics_when(&self, series: &str, want: f64) -> String {
        self.metrics_until(|m| metric_value(m, series) >= want)
            .await
    }

    /// `/metrics` once `done` holds for it, or after [`PATIENCE`]; the caller asserts on it.
    pub async fn metrics_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.metrics().await;
            if done(&text) || Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The current text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

/// The status code of a plain `GET path` to `addr`, or `None` if there is no HTTP answer.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    let head = std::str::from_utf8(&head).ok()?;
    head.strip_prefix("HTTP/1.1 ")?.parse().ok()
}
