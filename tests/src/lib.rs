//! The end-to-end harness: starts real `mock-llm`, `sluice` and `redis-server` processes on
//! loopback ports and stops them on drop. Tests talk to them over real sockets. Ports, child
//! processes and redis-server come from `sluice_testkit` (its port module says why the ports
//! never race); a start that loses its ports is retried on fresh ones.

pub use answer::Answer;
use sluice_plugins::ab::exposition::{self, Scrape};
pub use sluice_testkit::{free_port, Proc, RedisServer};
use sluice_testkit::{listener_is_child, StartFailure, READY_WITHIN, START_ATTEMPTS};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod answer;

/// How long a poll waits for something that takes milliseconds on an idle machine. Generous,
/// since CI runs test binaries next to a parallel build on two cores; only a failing test
/// waits it out.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Where cargo put the workspace's binaries (next to this test executable).
#[must_use]
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`make test` does)",
        path.display()
    );
    path
}

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// What sluice prints when a listen address is taken (it then exits 1).
const BIND_FAILED: [&str; 1] = ["cannot listen on"];

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

// === Gateway ===

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

/// Runs `tests/python/<script>` against `gateway` with the venv's Python (or `SLUICE_PYTHON`)
/// and returns its stdout; fails the test, with the gateway's log, when the script fails.
/// `make test` creates `.venv` with the openai SDK.
#[must_use]
pub fn run_python_check(script: &str, gateway: &Gateway) -> String {
    let python = std::env::var_os("SLUICE_PYTHON")
        .map_or_else(|| workspace().join(".venv/bin/python"), PathBuf::from);
    assert!(
        python.exists(),
        "{} is missing: run `make test`, which creates .venv with the openai SDK",
        python.display()
    );
    let out = Command::new(python)
        .arg(workspace().join("tests/python").join(script))
        .arg(&gateway.url)
        .output()
        .expect("run python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{stderr}\nsluice log:\n{}",
        gateway.log_text()
    );
    stdout
}

/// Every sample of a `/metrics` text, read by the parser `sluice ab-report` uses; a text that
/// is not a Prometheus exposition fails the test.
#[must_use]
pub fn scrape(text: &str) -> Scrape {
    exposition::parse(text).unwrap_or_else(|e| panic!("not a Prometheus exposition ({e}):\n{text}"))
}

/// The value of `series`, written `name` or `name{label="value",...}` with every label of the
/// sample (in any order); 0 when absent.
#[must_use]
pub fn metric_value(text: &str, series: &str) -> f64 {
    let want = scrape(&format!("{series} 0")).samples.remove(0);
    scrape(text)
        .samples
        .into_iter()
        .find(|s| s.name == want.name && s.labels == want.labels)
        .map_or(0.0, |s| s.value)
}

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

/// The sum of the samples of metric `name` carrying all of `labels` (in any order).
#[must_use]
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(text).sum(name, labels)
}

/// A YAML config with one upstream `up` over `urls` and the given routes block.
#[must_use]
pub fn config(urls: &[&str], upstream_extra: &str, routes: &str) -> String {
    let endpoints: String = urls
        .iter()
        .map(|u| format!("      - url: \"{u}\"\n"))
        .collect();
    format!(
        "server:\n  listen: [\"{{listen}}\"]\n  threads: 1\n  max_body_bytes: 8MiB\n  grace_period: 10s\nadmin:\n  listen: \"{{admin}}\"\nupstreams:\n  up:\n    endpoints:\n{endpoints}{upstream_extra}routes:\n{routes}"
    )
}

/// SHA-256 hex of `bytes`.
#[must_use]
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A chat request body of about `size` bytes.
#[must_use]
pub fn chat_body(model: &str, size: usize, stream: bool) -> Vec<u8> {
    let filler: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(size)
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "model": model, "stream": stream,
        "messages": [{"role": "user", "content": filler}]
    }))
    .expect("json")
}

/// GETs `url` and parses the JSON answer.
pub async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    client
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON answer")
}

/// Sends `req` and returns the status code.
pub async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("request").status().as_u16()
}

/// The YAML of [`config`] with an admin token from `ADMIN_TOKEN` and an upstream key from
/// `UPSTREAM_KEY`, for tests about secrets.
#[must_use]
pub fn config_with_secrets(urls: &[&str], routes: &str) -> String {
    config(
        urls,
        "    set_headers: { authorization: \"Bearer ${UPSTREAM_KEY}\" }\n",
        routes,
    )
    .replace(
        "  listen: \"{admin}\"\n",
        "  listen: \"{admin}\"\n  token_env: ADMIN_TOKEN\n",
    )
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

// === Mocks that go away and come back ===

impl Mock {
    /// Starts a mock named `name` on `127.0.0.1:port` (a [`free_port`], or the port of a mock
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
