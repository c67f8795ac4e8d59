//! The end-to-end harness: starts real `mock-llm` and `sluice` processes on ephemeral
//! loopback ports and stops them on drop. Tests talk to them over real sockets.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A free loopback port (bound then released).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running child process, killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running mock-llm.
pub struct Mock {
    pub url: String,
    _proc: Proc,
}

impl Mock {
    /// Starts a mock named `name` on an ephemeral port with extra command-line knobs.
    #[must_use]
    pub fn start(name: &str, args: &[&str]) -> Mock {
        let mut child = Command::new(bin("mock-llm"))
            .args(["--listen", "127.0.0.1:0", "--name", name, "--threads", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn mock-llm");
        let stdout = child.stdout.take().expect("mock stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("mock prints its address");
        let url = line.split_whitespace().last().expect("address").to_string();
        Mock {
            url,
            _proc: Proc { child },
        }
    }
}

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

    /// Starts sluice with extra environment and command-line arguments (before `run`).
    #[must_use]
    pub fn start_with(yaml: &str, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let (listen, admin) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let config = dir.path().join("gateway.yaml");
        std::fs::write(
            &config,
            yaml.replace("{listen}", &listen).replace("{admin}", &admin),
        )
        .expect("write config");
        let log = dir.path().join("sluice.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin("sluice"))
            .args(args)
            .args(["run", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().expect("log clone"))
            .stderr(log_file)
            .spawn()
            .expect("spawn sluice");
        let gw = Gateway {
            url: format!("http://{listen}"),
            admin: format!("http://{admin}"),
            config,
            log,
            proc: Proc { child },
            _dir: dir,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.url.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("sluice did not start; log:\n{}", self.log_text());
    }

    /// Everything sluice logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the config file atomically (triggering a live reload), keeping the running ports.
    pub fn write_config(&self, yaml: &str) {
        let listen = self.url.trim_start_matches("http://");
        let admin = self.admin.trim_start_matches("http://");
        let tmp = self.config.with_extension("tmp");
        std::fs::write(
            &tmp,
            yaml.replace("{listen}", listen).replace("{admin}", admin),
        )
        .expect("write");
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

    /// `/metrics` once the sample `prefix` reaches `want` (metrics are recorded just after the
    /// response is sent), or after two seconds; the caller asserts on the text.
    pub async fn metrics_when(&self, prefix: &str, want: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let text = self.metrics().await;
            if metric_value(&text, prefix) >= want || Instant::now() > deadline {
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

/// The value of a Prometheus sample line that starts with `prefix` (0 when absent).
#[must_use]
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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
