//! `loadbench streams`: many concurrent SSE streams (20 tokens/s each, from mock-llm) through
//! sluice and then through nginx (`proxy_buffering off`), each alone on CPU 0 with one worker;
//! the generator and mock-llm share CPU 1. Per system: CPU-seconds per 1,000 streams, RSS per
//! open stream, streams completed and failed, time to first token. `STREAMS` sets the count
//! (default 5,000; `BENCH_QUICK=1`: 500), `STREAM_TOKENS` the tokens per stream (default 100,
//! so 5 s each). Writes `target/bench/streams.md` and prints it.

use super::compare::env_count;
use super::quick;
use super::standalone::{publish, release_bins, setup_generator, start_mock};
use bytes::Bytes;
use sluice_benches::load::procs::{
    cpu_seconds, nginx_conf, rss_kib, spawn_nginx, wait_port, with_children, RssSampler, Running,
};
use sluice_benches::load::sluice::{start_plain_sluice, SLUICE_CPU};
use sluice_benches::load::streams::{self, StreamsPlan, StreamsResult};
use sluice_testkit::free_port;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

/// mock-llm's delay between tokens: 20 tokens/s per stream.
const TOKEN_DELAY_MS: u64 = 50;
/// The connections are opened over this long.
const RAMP: Duration = Duration::from_secs(2);
const BODY: &str = r#"{"model":"stream-bench","stream":true,"messages":[{"role":"user","content":"Tell me a story."}]}"#;

/// One system's run.
struct Row {
    system: &'static str,
    result: StreamsResult,
    cpu_seconds: f64,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
}

impl Row {
    fn cpu_per_1k(&self) -> f64 {
        self.cpu_seconds * 1000.0 / self.result.completed.max(1) as f64
    }

    /// RSS growth per stream, all of them open at once at the peak.
    fn kib_per_stream(&self, streams: usize) -> f64 {
        self.peak_rss_kib.saturating_sub(self.idle_rss_kib) as f64 / streams.max(1) as f64
    }
}

pub fn run() -> Result<(), String> {
    let n = env_count("STREAMS", if quick() { 500 } else { 5_000 })?;
    let tokens = env_count("STREAM_TOKENS", 100)?;
    let bins = release_bins()?;
    let machine = setup_generator(2 * n as u64 + 4096)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();

    let plan = |port: u16| StreamsPlan {
        addr: format!("127.0.0.1:{port}"),
        streams: n,
        ramp: RAMP,
        body: Bytes::from_static(BODY.as_bytes()),
        timeout: Duration::from_millis(TOKEN_DELAY_MS * tokens as u64) + Duration::from_secs(60),
    };

    // A fresh mock-llm for each system, so neither inherits the other's connections.
    let (mock_port, mock) = start_mock(d, &bins.mock, tokens, TOKEN_DELAY_MS, "mock-sluice")?;
    let sluice = start_plain_sluice(d, "sluice-streams", mock_port, &bins.sluice)?;
    let pid = sluice.proc.pid();
    let sluice_row = measure("sluice", &plan(sluice.port), pid, pid)?;
    expect_alive(&mock, d)?;
    drop((sluice, mock));

    let (mock_port, mock) = start_mock(d, &bins.mock, tokens, TOKEN_DELAY_MS, "mock-nginx")?;
    let nginx_port = free_port();
    let conf = streaming_nginx_conf(d, nginx_port, mock_port)?;
    let nginx = spawn_nginx(d, "nginx-streams", SLUICE_CPU, &conf)?;
    wait_port(nginx_port, Duration::from_secs(5))?;
    let master = nginx.pid();
    let worker = nginx_worker(master)?;
    let nginx_row = measure("nginx", &plan(nginx_port), master, worker)?;
    expect_alive(&mock, d)?;
    drop((nginx, mock));
    if sluice_row.result.failed + nginx_row.result.failed > 0 {
        for log in [
            "sluice-streams.log".into(),
            format!("nginx-{nginx_port}.err"),
            "mock-sluice.log".into(),
            "mock-nginx.log".into(),
        ] {
            log_tail(&d.join(log));
        }
    }

    let md = markdown(&machine, n, tokens, &sluice_row, &nginx_row);
    publish("streams.md", &md)?;
    Ok(())
}

/// Err, with its log, when mock-llm exited during a run (then the run measured refusals).
fn expect_alive(mock: &Running, d: &Path) -> Result<(), String> {
    // An exited child stays a zombie until waited for, and a zombie has no RSS.
    if rss_kib(mock.pid()).is_some() {
        return Ok(());
    }
    log_tail(&d.join(format!("{}.log", mock.name)));
    Err(format!("{} exited during the run", mock.name))
}

/// The last lines of `log` on stderr, to tell why streams failed.
fn log_tail(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("--- {} (last lines)", log.display());
    for l in &lines[lines.len().saturating_sub(5)..] {
        eprintln!("{l}");
    }
}

/// The pid of the worker of the nginx master `master`, once it has one.
fn nginx_worker(master: u32) -> Result<u32, String> {
    for _ in 0..100 {
        if let Some(w) = with_children(master).get(1) {
            return Ok(*w);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("nginx started no worker within 2 s".into())
}

/// nginx as a keep-alive reverse proxy to mock-llm that passes each SSE chunk on at once.
fn streaming_nginx_conf(d: &Path, port: u16, mock_port: u16) -> Result<String, String> {
    let conf = nginx_conf(d, 1, port, Some(mock_port), "");
    // sluice's listen backlog is the kernel's cap (somaxconn); nginx's default is 511.
    let edits = [
        (
            "proxy_http_version 1.1;",
            "proxy_http_version 1.1; proxy_buffering off; proxy_read_timeout 300s;",
        ),
        (" reuseport;", " reuseport backlog=4096;"),
    ];
    edits.iter().try_fold(conf, |conf, (anchor, with)| {
        if conf.contains(anchor) {
            Ok(conf.replace(anchor, with))
        } else {
            Err(format!("nginx proxy config has no `{anchor}` to extend"))
        }
    })
}

/// Runs the streams through the system on `port`: CPU of `pid` (and its children), RSS of
/// `rss_pid` (the process that holds the connections: sluice, or nginx's worker).
fn measure(
    system: &'static str,
    plan: &StreamsPlan,
    pid: u32,
    rss_pid: u32,
) -> Result<Row, String> {
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss_kib = rss_kib(rss_pid).ok_or_else(|| format!("{system}: no RSS"))?;
    let cpu_before = cpu_seconds(pid)?;
    let sampler = RssSampler::start(rss_pid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(streams::run(plan.clone()));
    let cpu_seconds = cpu_seconds(pid)? - cpu_before;
    let peak_rss_kib = (sampler.finish() * 1024.0) as u64;
    eprintln!(
        "streams {system}: {} completed, {} failed {:?} in {:.1} s; {cpu_seconds:.2} CPU-s; RSS {idle_rss_kib} -> {peak_rss_kib} KiB; TTFT p50 {:.1} p99 {:.1} ms",
        result.completed,
        result.failed,
        result.failures,
        result.elapsed.as_secs_f64(),
        result.ttft_p50_ms,
        result.ttft_p99_ms
    );
    Ok(Row {
        system,
        result,
        cpu_seconds,
        idle_rss_kib,
        peak_rss_kib,
    })
}

fn markdown(machine: &str, n: usize, tokens: usize, sluice: &Row, nginx: &Row) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Concurrent SSE streams, per core\n\n{machine}; {n} streams of {tokens} tokens at {} tokens/s (mock-llm), opened over {:.0} s; each system alone on CPU 0 with one worker, the generator and mock-llm on CPU 1.\n", 1000 / TOKEN_DELAY_MS, RAMP.as_secs_f64());
    let _ = writeln!(s, "| system | completed | failed | wall s | CPU-s | CPU-s per 1,000 streams | idle RSS MiB | peak RSS MiB | RSS KiB per stream | TTFT p50 ms | TTFT p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|");
    for r in [sluice, nginx] {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.2} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.system,
            r.result.completed,
            r.result.failed,
            r.result.elapsed.as_secs_f64(),
            r.cpu_seconds,
            r.cpu_per_1k(),
            r.idle_rss_kib as f64 / 1024.0,
            r.peak_rss_kib as f64 / 1024.0,
            r.kib_per_stream(n),
            r.result.ttft_p50_ms,
            r.result.ttft_p99_ms
        );
    }
    let cpu = sluice.cpu_per_1k() / nginx.cpu_per_1k().max(1e-9);
    let rss = sluice.kib_per_stream(n) / nginx.kib_per_stream(n).max(1e-9);
    // A run with failed streams did less work than it was given: no verdict on it.
    let comparable = sluice.result.failed + nginx.result.failed == 0;
    let verdict = |ok: bool| match (comparable, ok) {
        (false, _) => "not comparable, streams failed",
        (true, true) => "PASS",
        (true, false) => "FAIL",
    };
    let _ = writeln!(
        s,
        "\n- sluice / nginx, CPU per stream: {cpu:.2}× (target ≤ 1: {})",
        verdict(cpu <= 1.0)
    );
    let _ = writeln!(
        s,
        "- sluice / nginx, RSS per stream: {rss:.2}× (target ≤ 2: {})",
        verdict(rss <= 2.0)
    );
    let ideal = RAMP.as_secs_f64() + (TOKEN_DELAY_MS * tokens as u64) as f64 / 1000.0;
    let _ = writeln!(
        s,
        "- a run at the full token rate lasts {ideal:.1} s; longer means CPU 1 (generator and mock-llm) fell behind, stretching the streams alike for both systems"
    );
    for r in [sluice, nginx] {
        for f in &r.result.failures {
            let _ = writeln!(s, "- {} failure: {f}", r.system);
        }
    }
    s
}
