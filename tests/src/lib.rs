//! The end-to-end harness: starts real `mock-llm`, `sluice` and `redis-server` processes on
//! loopback ports and stops them on drop. Tests talk to them over real sockets. Ports, child
//! processes and redis-server come from `sluice_testkit` (its port module says why the ports
//! never race); a start that loses its ports is retried on fresh ones.

pub use answer::Answer;
pub use gateway::Gateway;
pub use metrics::{metric_sum, metric_value, scrape};
pub use mock::{Mock, UpstreamCalls};
pub use prometheus::Prometheus;
pub use sluice_testkit::{free_port, Proc, RedisServer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

mod answer;
mod gateway;
pub mod load;
mod metrics;
mod mock;
mod prometheus;

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

/// Runs `sluice <subcommand> <args>` off the test's runtime and returns how it ended.
pub async fn run_sluice(subcommand: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(bin("sluice"))
        .arg(subcommand)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run sluice {subcommand}: {e}"))
}

/// The stdout of a successful `--json` run, parsed; fails the test, with stdout and stderr,
/// when the run failed or printed something else.
#[must_use]
pub fn json_stdout(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `tests/python/<script>` against `gateway` with the venv's Python (or `SLUICE_PYTHON`)
/// and returns its stdout; fails the test, with the gateway's log, when the script fails.
/// `make test` creates `.venv` with the openai SDK.
#[must_use]
pub fn run_python_check(script: &str, gateway: &Gateway) -> String {
    run_python_check_with(script, gateway, &[])
}

/// [`run_python_check`] with more arguments after the gateway's URL.
pub fn run_python_check_with(script: &str, gateway: &Gateway, args: &[&str]) -> String {
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
        .args(args)
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

/// The resident set of process `pid` in bytes (`VmRSS` in /proc).
#[must_use]
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// The access lines of a JSON log (`--log-format json`), parsed.
#[must_use]
pub fn access_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
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
