//! A real Prometheus scraping the test's sluice every second, on its own port and storage,
//! optionally evaluating rule files every second, and its HTTP API: instant queries and label
//! values, as Grafana asks them, and the rules' health.

use crate::PATIENCE;
use sluice_testkit::{free_port, listener_is_child, Proc, StartFailure, START_ATTEMPTS};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The job name of the scrape config, the `job` label of every series.
pub const JOB: &str = "sluice";

/// A running `prometheus`, killed on drop with its storage.
pub struct Prometheus {
    pub url: String,
    targets: usize,
    _proc: Proc,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, their `/metrics`) every second and
    /// waits until its API is ready. Panics if it is not installed: tests that need it fail.
    #[must_use]
    pub fn start(targets: &[&str]) -> Prometheus {
        Prometheus::start_with_rules(targets, &[])
    }

    /// [`Prometheus::start`] that also evaluates `rules`, each a rule file's name and YAML,
    /// at the global evaluation interval of one second.
    #[must_use]
    pub fn start_with_rules(targets: &[&str], rules: &[(String, String)]) -> Prometheus {
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut prometheus = Prometheus::spawn(targets, rules);
            match prometheus.wait_ready() {
                Ok(()) => return prometheus,
                Err(StartFailure::Ports(why)) => failures.push_str(&format!(
                    "attempt {attempt} ({}): {why}; log:\n{}\n",
                    prometheus.url,
                    prometheus.log_text()
                )),
                Err(StartFailure::Stuck(why)) => panic!(
                    "{failures}prometheus did not start: {why}; log:\n{}",
                    prometheus.log_text()
                ),
            }
        }
        panic!("prometheus did not start in {START_ATTEMPTS} attempts:\n{failures}");
    }

    fn spawn(targets: &[&str], rules: &[(String, String)]) -> Prometheus {
        let count = targets.len();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let targets = targets.join(", ");
        let dir = tempfile::tempdir().expect("tempdir");
        let rule_files: Vec<String> = rules
            .iter()
            .map(|(name, yaml)| {
                let path = dir.path().join(name);
                std::fs::write(&path, yaml).expect("write rule file");
                format!("\"{}\"", path.display())
            })
            .collect();
        let rule_files = rule_files.join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }}\n\
                 rule_files: [{rule_files}]\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs: [ {{ targets: [{targets}] }} ]\n"
            ),
        )
        .expect("write prometheus.yml");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        Prometheus {
            url: format!("http://{listen}"),
            targets: count,
            _proc: Proc { child },
            dir,
        }
    }

    /// Waits until `/-/ready` answers 200 from our own child on our port.
    fn wait_ready(&mut self) -> Result<(), StartFailure> {
        let pid = self._proc.child.id();
        let port: u16 = (self.url.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("port");
        let addr = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self._proc.child.try_wait() {
                return Err(StartFailure::Ports(format!("exited early ({status})")));
            }
            if listener_is_child(pid, port) == Some(false) {
                return Err(StartFailure::Ports("another process holds its port".into()));
            }
            if ready_status(&addr) == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartFailure::Stuck("not ready after 30s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything Prometheus logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `result` of an instant query (`/api/v1/query`) at the current time, or the error
    /// Prometheus gave.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let data = self
            .api("/api/v1/query", &[("query", promql.to_string())])
            .await?;
        match data["result"].as_array() {
            Some(result) => Ok(result.clone()),
            None => Err(format!("no result list in {data}")),
        }
    }

    /// The first value of the instant query `promql`, or `None` while it has none (or
    /// Prometheus does not answer).
    pub async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await.ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits (polling) until the first value of `promql` satisfies `done`; fails the test with
    /// Prometheus's log after 30 s.
    pub async fn wait_for(&self, promql: &str, done: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.value(promql).await;
            if value.is_some_and(&done) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never satisfied `{promql}` (last value {value:?}); its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The rule groups Prometheus evaluates (`/api/v1/rules`), each with its rules' health.
    pub async fn rule_groups(&self) -> Result<Vec<serde_json::Value>, String> {
        let data = self.api("/api/v1/rules", &[]).await?;
        match data["groups"].as_array() {
            Some(groups) => Ok(groups.clone()),
            None => Err(format!("no group list in {data}")),
        }
    }

    /// The values of `label` on the series `selector` matches, as Grafana's
    /// `label_values(selector, label)` asks for them (`/api/v1/label/<label>/values`).
    pub async fn label_values(&self, selector: &str, label: &str) -> Result<Vec<String>, String> {
        let data = self
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", selector.to_string())],
            )
            .await?;
        let values = data
            .as_array()
            .ok_or_else(|| format!("not a list of values: {data}"))?;
        Ok(values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    /// Successful scrapes in the last minute of the target scraped least.
    pub async fn scrapes(&self) -> usize {
        let query = format!("sum_over_time(up{{job=\"{JOB}\"}}[1m])");
        let result = self.query(&query).await.unwrap_or_default();
        let counts = result.iter().map(|r| {
            (r["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(0, |v| v as usize)
        });
        match result.len() == self.targets {
            true => counts.min().unwrap_or(0),
            false => 0,
        }
    }

    /// Waits (polling) until Prometheus holds `n` successful scrapes of every target.
    pub async fn wait_for_scrapes(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE + Duration::from_secs(n as u64);
        while self.scrapes().await < n {
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape sluice {n} times; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GETs an API path and returns its `data`, or the error it answered with.
    async fn api(
        &self,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<serde_json::Value, String> {
        let answer: serde_json::Value = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("{path}: not JSON: {e}"))?;
        if answer["status"] != "success" {
            return Err(format!(
                "{}: {}",
                answer["errorType"].as_str().unwrap_or("error"),
                answer["error"].as_str().unwrap_or_default()
            ));
        }
        Ok(answer["data"].clone())
    }
}

/// The status code of `GET /-/ready` at `addr`, or `None` without an HTTP answer.
fn ready_status(addr: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /-/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head)
        .ok()?
        .strip_prefix("HTTP/1.1 ")?
        .parse()
        .ok()
}

/// The `prometheus` executable from `PATH`.
fn prometheus_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("prometheus"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "prometheus is not installed: run `make deps` (Debian: apt-get install prometheus)"
            )
        })
}
