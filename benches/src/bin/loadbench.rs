//! `make bench`: measures sluice against direct and nginx in one run, alternating systems so
//! drift hits all alike. `BENCH_QUICK=1` for a short run. Needs release builds of sluice and
//! mock-llm, and nginx + wrk (installed by `make deps`).

use bytes::Bytes;
use sluice_benches::chat_body;
use sluice_benches::load::idle::{idle_connections, raise_fd_limit};
use sluice_benches::load::openloop::{self, OpenLoopResult, Plan};
use sluice_benches::load::procs::{nginx_conf, rss_kib, spawn, wait_port, RssSampler, Running};
use sluice_benches::load::report::{CacheMixRow, ClosedRow, OpenRow, Report};
use sluice_benches::load::wrk;
use sluice_benches::workload::{repeat_share, PromptMix};
use sluice_plugins::ab::exposition;
use sluice_testkit::free_port;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const FIXED_COMPLETION: &str = r#"{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A fixed completion for benchmarking."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#;
/// wrk and the upstreams share CPU 1; the proxy under test has CPU 0 to itself (1 thread),
/// so the numbers measure the proxy's own cost per request rather than its co-tenant's.
const LOAD_CPU: &str = "1";
const UPSTREAM_CPU: &str = "1";
/// mock-llm's delay before answering in the "prompt mix + cache" scenario: what a hit saves.
const MIX_LATENCY_MS: u64 = 20;
/// The open-loop rate of both prompt-mix scenarios.
const MIX_RATE: f64 = 500.0;
/// Idle keep-alive client connections held open against each proxy.
const IDLE_CONNECTIONS: usize = 10_000;

struct Settings {
    closed: Duration,
    rounds: usize,
    open: Duration,
    target: PathBuf,
}

/// The systems under test for one thread count.
struct Proxies {
    nginx_port: u16,
    sluice_port: u16,
    sluice: Running,
    nginx: Running,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("loadbench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?
        .to_path_buf();
    let target = workspace.join("target");
    let s = Settings {
        closed: Duration::from_secs(if quick { 2 } else { 8 }),
        rounds: if quick { 1 } else { 3 },
        open: Duration::from_secs(if quick { 2 } else { 8 }),
        target: target.clone(),
    };
    // Before any process starts, so the proxies inherit it.
    raise_fd_limit(IDLE_CONNECTIONS as u64 + 4096)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let release = target.join("release");
    let (sluice_bin, mock_bin) = (release.join("sluice"), release.join("mock-llm"));
    for b in [&sluice_bin, &mock_bin] {
        if !b.exists() {
            return Err(format!("{} missing: `make bench` builds it", b.display()));
        }
    }

    // Fixed upstreams: nginx returning a completion, mock-llm streaming for the TTFB scenario.
    let up_port = free_port();
    let up_conf = d.join("upstream.conf");
    std::fs::write(&up_conf, nginx_conf(d, 1, up_port, None, FIXED_COMPLETION))
        .map_err(|e| e.to_string())?;
    let _upstream = spawn(
        "nginx-upstream",
        UPSTREAM_CPU,
        Path::new("/usr/sbin/nginx"),
        &["-c", path_str(&up_conf)?, "-p", path_str(d)?],
        &d.join("up.log"),
    )?;
    let mock_port = free_port();
    let mock_listen = format!("127.0.0.1:{mock_port}");
    let _mock = spawn(
        "mock-llm",
        UPSTREAM_CPU,
        &mock_bin,
        &[
            "--listen",
            &mock_listen,
            "--threads",
            "1",
            "--tokens",
            "16",
            "--token-delay-ms",
            "2",
        ],
        &d.join("mock.log"),
    )?;
    // A mock-llm that takes MIX_LATENCY_MS to answer, behind the caching route.
    let slow_port = free_port();
    let slow_listen = format!("127.0.0.1:{slow_port}");
    let latency = MIX_LATENCY_MS.to_string();
    let _slow = spawn(
        "mock-llm-slow",
        UPSTREAM_CPU,
        &mock_bin,
        &[
            "--listen",
            &slow_listen,
            "--threads",
            "1",
            "--latency-ms",
            &latency,
        ],
        &d.join("mock-slow.log"),
    )?;
    wait_port(up_port, Duration::from_secs(5))?;
    wait_port(mock_port, Duration::from_secs(5))?;
    wait_port(slow_port, Duration::from_secs(5))?;

    let raw_1k = chat_body("bench-model", 1024);
    let body_1k = write_body(d, "1k.json", &raw_1k)?;
    let body_256k = write_body(d, "256k.json", &chat_body("bench-model", 256 * 1024))?;
    let mut report = Report {
        machine: machine(),
        quick,
        mix_latency_ms: MIX_LATENCY_MS,
        ..Report::default()
    };

    for threads in [1usize, 2] {
        let cpus = if threads == 1 { "0" } else { "0,1" };
        let p = start_proxies(d, threads, cpus, up_port, mock_port, &sluice_bin)?;
        if threads == 1 {
            std::thread::sleep(Duration::from_millis(300));
            report.idle_rss_mib = rss_kib(p.sluice.pid()).unwrap_or(0) as f64 / 1024.0;
        }
        let mut systems = vec![
            ("nginx", p.nginx_port, None),
            ("sluice", p.sluice_port, Some(p.sluice.pid())),
        ];
        if threads == 1 {
            systems.insert(0, ("direct", up_port, None));
        }
        closed_loop(
            &s,
            &mut report,
            threads,
            &systems,
            &[
                ("GET passthrough", None),
                ("POST 1KB", Some(&body_1k)),
                ("POST 256KB", Some(&body_256k)),
            ],
        )?;
        if threads == 1 {
            open_loop(&s, &mut report, up_port, &p)?;
            streaming_ttfb(&s, &mut report, mock_port, &p)?;
            prompt_mix(&s, &mut report, &p)?;
            cache_hit(
                &s,
                &mut report,
                d,
                up_port,
                &p,
                &sluice_bin,
                &raw_1k,
                &body_1k,
            )?;
            prompt_mix_cached(&s, &mut report, d, slow_port, &sluice_bin)?;
            limited(&s, &mut report, d, up_port, &p, &sluice_bin, &body_1k)?;
            balanced(&s, &mut report, d, &mock_bin, &sluice_bin, &body_1k)?;
            idle(&mut report, &p)?;
        }
    }

    let out = s.target.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let md = report.markdown();
    println!("{md}");
    std::fs::write(out.join("report.md"), &md).map_err(|e| e.to_string())?;
    report.chart(&out.join("report.svg"))?;
    println!(
        "written: {} and {}",
        out.join("report.md").display(),
        out.join("report.svg").display()
    );
    Ok(())
}

fn path_str(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", p.display()))
}

fn write_body(dir: &Path, name: &str, body: &[u8]) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, body).map_err(|e| e.to_string())?;
    let script = dir.join(format!("{name}.lua"));
    std::fs::write(&script, wrk::post_script(&path)).map_err(|e| e.to_string())?;
    Ok(script)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}")
}

fn start_proxies(
    d: &Path,
    threads: usize,
    cpus: &str,
    up_port: u16,
    mock_port: u16,
    sluice_bin: &Path,
) -> Result<Proxies, String> {
    let nginx_port = free_port();
    let conf = d.join(format!("proxy-{threads}.conf"));
    std::fs::write(&conf, nginx_conf(d, threads, nginx_port, Some(up_port), ""))
        .map_err(|e| e.to_string())?;
    let nginx = spawn(
        "nginx-proxy",
        cpus,
        Path::new("/usr/sbin/nginx"),
        &["-c", path_str(&conf)?, "-p", path_str(d)?],
        &d.join(format!("nginx-{threads}.log")),
    )?;
    let sluice_port = free_port();
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{sluice_port}\"]\n  threads: {threads}\n  max_body_bytes: 64MiB\nupstreams:\n  fixed:\n    endpoints: [{{url: \"http://127.0.0.1:{up_port}\"}}]\n    pool: {{ max_idle: 256 }}\n  mock:\n    endpoints: [{{url: \"http://127.0.0.1:{mock_port}\"}}]\nroutes:\n  - name: stream\n    match: {{ methods: [POST], model: \"stream-*\" }}\n    upstream: mock\n  - name: by-model\n    match: {{ methods: [POST], model: \"bench-*\" }}\n    upstream: fixed\n  - name: mix\n    match: {{ methods: [POST], model: \"mock-*\" }}\n    upstream: mock\n  - name: passthrough\n    upstream: fixed\n"
    );
    let sluice = spawn_sluice(d, &format!("sluice-{threads}"), cpus, sluice_bin, &yaml)?;
    wait_port(nginx_port, Duration::from_secs(5))?;
    wait_port(sluice_port, Duration::from_secs(10))?;
    Ok(Proxies {
        nginx_port,
        sluice_port,
        sluice,
        nginx,
    })
}

/// wrk against each system in turn, `rounds` times; keeps each system's median round.
fn closed_loop(
    s: &Settings,
    report: &mut Report,
    threads: usize,
    systems: &[(&'static str, u16, Option<u32>)],
    scenarios: &[(&'static str, Option<&PathBuf>)],
) -> Result<(), String> {
    for (scenario, script) in scenarios {
        let mut runs: Vec<Vec<(wrk::WrkResult, Option<f64>)>> = vec![Vec::new(); systems.len()];
        // Warm-up, so pools and caches are hot for every system.
        for (_, port, _) in systems {
            let _ = wrk::run(
                &format!("http://127.0.0.1:{port}/v1/chat/completions"),
                32,
                Duration::from_secs(1),
                script.map(PathBuf::as_path),
                LOAD_CPU,
            );
        }
        for _ in 0..s.rounds {
            for (i, (_, port, pid)) in systems.iter().enumerate() {
                let sampler = pid.map(RssSampler::start);
                let r = wrk::run(
                    &format!("http://127.0.0.1:{port}/v1/chat/completions"),
                    32,
                    s.closed,
                    script.map(PathBuf::as_path),
                    LOAD_CPU,
                )?;
                runs[i].push((r, sampler.map(RssSampler::finish)));
            }
        }
        for (i, (system, _, _)) in systems.iter().enumerate() {
            let mut rs = runs[i].clone();
            rs.sort_by(|a, b| a.0.rps.total_cmp(&b.0.rps));
            let (median, _) = rs[rs.len() / 2];
            let rss = rs.iter().filter_map(|(_, m)| *m).reduce(f64::max);
            let errors = rs.iter().map(|(r, _)| r.errors).sum();
            eprintln!(
                "{scenario:>16} t{threads} {system:>7}: {:>8.0} req/s p50 {:.3} ms p99 {:.3} ms",
                median.rps, median.p50_ms, median.p99_ms
            );
            report.closed.push(ClosedRow {
                scenario,
                threads,
                system,
                rps: median.rps,
                p50_ms: median.p50_ms,
                p99_ms: median.p99_ms,
                errors,
                rss_mib: rss,
            });
        }
    }
    Ok(())
}

fn run_open(plan: Plan) -> Result<OpenLoopResult, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .map(|rt| rt.block_on(openloop::run(plan)))
}

fn plan(
    port: u16,
    path: &str,
    rate: f64,
    duration: Duration,
    bodies: Vec<Bytes>,
    first_byte: bool,
) -> Plan {
    Plan {
        addr: format!("127.0.0.1:{port}"),
        path: path.into(),
        rate,
        duration,
        connections: 64,
        bodies: Arc::new(bodies),
        first_byte,
    }
}

/// Fixed rates at 25/50/75% of nginx's closed-loop capacity; latency added over direct.
fn open_loop(s: &Settings, report: &mut Report, up_port: u16, p: &Proxies) -> Result<(), String> {
    let capacity = report
        .closed
        .iter()
        .find(|r| r.scenario == "GET passthrough" && r.system == "nginx" && r.threads == 1)
        .map_or(10_000.0, |r| r.rps);
    for pct in [25u32, 50, 75] {
        let rate = capacity * f64::from(pct) / 100.0;
        for (system, port) in [
            ("direct", up_port),
            ("nginx", p.nginx_port),
            ("sluice", p.sluice_port),
        ] {
            let result = run_open(plan(port, "/v1/models", rate, s.open, vec![], false))?;
            eprintln!("open {pct:>3}% {rate:>7.0}/s {system:>7}: p50 {:.3} p99 {:.3} p99.9 {:.3} ms, {} errors", result.p50_ms, result.p99_ms, result.p999_ms, result.errors);
            report.open.push(OpenRow {
                load_pct: pct,
                rate,
                system,
                result,
            });
        }
    }
    Ok(())
}

/// Time to first token of an SSE stream, direct vs through sluice.
fn streaming_ttfb(
    s: &Settings,
    report: &mut Report,
    mock_port: u16,
    p: &Proxies,
) -> Result<(), String> {
    let body = Bytes::from(serde_json::to_vec(&serde_json::json!({"model": "stream-bench", "stream": true, "messages": [{"role": "user", "content": "hi"}]})).map_err(|e| e.to_string())?);
    for (system, port, path) in [
        ("direct", mock_port, "/v1/chat/completions"),
        ("sluice", p.sluice_port, "/v1/chat/completions"),
    ] {
        let result = run_open(plan(port, path, 200.0, s.open, vec![body.clone()], true))?;
        eprintln!(
            "ttfb {system:>7}: p50 {:.3} p99 {:.3} ms, {} errors",
            result.p50_ms, result.p99_ms, result.errors
        );
        report.ttfb.push((system, result));
    }
    Ok(())
}

/// A realistic mix (Zipf repeats, 30% streaming) through sluice to mock-llm.
fn prompt_mix(s: &Settings, report: &mut Report, p: &Proxies) -> Result<(), String> {
    let (share, bodies) = mix_bodies(s);
    let result = run_open(plan(
        p.sluice_port,
        "/v1/chat/completions",
        MIX_RATE,
        s.open,
        bodies,
        false,
    ))?;
    eprintln!(
        "mix: p50 {:.3} p99 {:.3} ms, {} errors, repeat share {:.1}%",
        result.p50_ms,
        result.p99_ms,
        result.errors,
        share * 100.0
    );
    report.mix = Some((share, result));
    Ok(())
}

/// The prompt mix's bodies (as many as the open loop sends, so the repeat share is exact) and
/// the share of them that repeat an earlier prompt.
fn mix_bodies(s: &Settings) -> (f64, Vec<Bytes>) {
    let mut mix = PromptMix::new(2000, 1.05, 0.3, 7);
    let n = (MIX_RATE * s.open.as_secs_f64()) as usize;
    let draws: Vec<_> = (0..n).map(|_| mix.draw()).collect();
    let share = repeat_share(&draws.iter().map(|d| d.prompt).collect::<Vec<_>>());
    (
        share,
        draws.into_iter().map(|d| Bytes::from(d.body)).collect(),
    )
}

/// Writes `<d>/<name>.yaml` and runs sluice on it pinned to `cpus`, logging to `<d>/<name>.log`.
fn spawn_sluice(
    d: &Path,
    name: &str,
    cpus: &str,
    sluice_bin: &Path,
    yaml: &str,
) -> Result<Running, String> {
    let cfg = d.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
    spawn(
        name,
        cpus,
        sluice_bin,
        &["run", "--config", path_str(&cfg)?],
        &d.join(format!("{name}.log")),
    )
}

/// A sluice of its own (1 thread, CPU 0) whose one route caches every POST to
/// `/v1/chat/completions` for everyone (`scope: none`), with an admin listener for `/metrics`.
struct CacheSluice {
    port: u16,
    admin_port: u16,
    proc: Running,
}

fn start_cache_sluice(
    d: &Path,
    name: &str,
    up_port: u16,
    sluice_bin: &Path,
) -> Result<CacheSluice, String> {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  threads: 1\n  max_body_bytes: 64MiB\nadmin:\n  listen: 127.0.0.1:{admin_port}\nupstreams:\n  up:\n    endpoints: [{{url: \"http://127.0.0.1:{up_port}\"}}]\n    pool: {{ max_idle: 256 }}\nroutes:\n  - name: chat\n    match: {{ path_prefix: /v1/chat/completions, methods: [POST] }}\n    upstream: up\n    cache: {{ ttl: 10m, key: {{ scope: none }} }}\n"
    );
    let proc = spawn_sluice(d, &format!("sluice-{name}"), "0", sluice_bin, &yaml)?;
    wait_port(port, Duration::from_secs(10))?;
    wait_port(admin_port, Duration::from_secs(10))?;
    Ok(CacheSluice {
        port,
        admin_port,
        proc,
    })
}

/// One HTTP/1.1 request on a fresh connection (`connection: close`): status, the value of
/// `header` if present, and the body.
fn http_once(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    header: &str,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())
        .and_then(|()| conn.write_all(body))
        .map_err(|e| format!("{method} {path} on port {port}: {e}"))?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp)
        .map_err(|e| format!("{method} {path} on port {port}: {e}"))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {path} on port {port}: no HTTP response"))?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path} on port {port}: bad status line"))?;
    let value = head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(header)
            .then(|| v.trim().to_string())
    });
    Ok((status, value, resp[split + 4..].to_vec()))
}

/// The cache counters of route `chat` on a sluice's `/metrics`: requests by result, and
/// upstream seconds saved.
fn cache_metrics(admin_port: u16) -> Result<(BTreeMap<String, f64>, f64), String> {
    let (status, _, body) = http_once(admin_port, "GET", "/metrics", b"", "")?;
    if status != 200 {
        return Err(format!("GET /metrics answered {status}"));
    }
    let scrape = exposition::parse(&String::from_utf8_lossy(&body))
        .map_err(|e| format!("GET /metrics: {e}"))?;
    let chat = [("route", "chat")];
    let mut results = BTreeMap::new();
    for sample in scrape.matching("sluice_cache_requests_total", &chat) {
        if let Some(result) = sample.label("result") {
            *results.entry(result.to_string()).or_insert(0.0) += sample.value;
        }
    }
    let saved = scrape.sum("sluice_cache_saved_seconds_total", &chat);
    Ok((results, saved))
}

/// Closed loop on one cached POST: sluice answering from its memory tier vs nginx proxying the
/// same POST to the upstream (nginx cannot cache a POST) and vs the upstream direct.
#[allow(clippy::too_many_arguments)]
fn cache_hit(
    s: &Settings,
    report: &mut Report,
    d: &Path,
    up_port: u16,
    p: &Proxies,
    sluice_bin: &Path,
    raw_body: &[u8],
    script: &PathBuf,
) -> Result<(), String> {
    let cached = start_cache_sluice(d, "cache-hit", up_port, sluice_bin)?;
    // Prime, then insist on a hit: a scenario that measures misses would be a lie.
    let mut last = None;
    for _ in 0..50 {
        let (status, cache, _) = http_once(
            cached.port,
            "POST",
            "/v1/chat/completions",
            raw_body,
            "x-sluice-cache",
        )?;
        if status == 200 && cache.as_deref() == Some("hit") {
            last = None;
            break;
        }
        last = Some((status, cache));
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some((status, cache)) = last {
        return Err(format!(
            "cache hit scenario: the primed POST is not served from the cache (status {status}, x-sluice-cache: {})",
            cache.as_deref().unwrap_or("absent")
        ));
    }
    let systems = [
        ("direct", up_port, None),
        ("nginx", p.nginx_port, None),
        ("sluice", cached.port, Some(cached.proc.pid())),
    ];
    let (before, _) = cache_metrics(cached.admin_port)?;
    closed_loop(s, report, 1, &systems, &[("cache hit", Some(script))])?;
    let (after, _) = cache_metrics(cached.admin_port)?;
    let count =
        |r: &str| after.get(r).copied().unwrap_or(0.0) - before.get(r).copied().unwrap_or(0.0);
    let (hits, others) = (
        count("hit"),
        count("miss") + count("coalesced") + count("bypass"),
    );
    eprintln!("cache hit: {hits:.0} hits and {others:.0} other answers while measuring");
    if others > 0.01 * hits {
        return Err(format!(
            "cache hit scenario: {others:.0} of {:.0} requests were not hits",
            hits + others
        ));
    }
    Ok(())
}

/// POST 1KB through a sluice whose route has a request limit and a token budget that every
/// request passes (so each one is checked, reserved and settled), vs nginx and direct in the
/// same run; compare with the "POST 1KB" rows for the cost of the limits.
fn limited(
    s: &Settings,
    report: &mut Report,
    d: &Path,
    up_port: u16,
    p: &Proxies,
    sluice_bin: &Path,
    script: &PathBuf,
) -> Result<(), String> {
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  threads: 1\n  max_body_bytes: 64MiB\nadmin:\n  listen: 127.0.0.1:{admin_port}\nupstreams:\n  up:\n    endpoints: [{{url: \"http://127.0.0.1:{up_port}\"}}]\n    pool: {{ max_idle: 256 }}\nroutes:\n  - name: chat\n    match: {{ methods: [POST], model: \"bench-*\" }}\n    upstream: up\n    limits:\n      - {{ name: rps, key: api_key, requests_per_second: 1000000000 }}\n      - {{ name: tpm, key: api_key, tokens_per_minute: 1000000000 }}\n"
    );
    let proc = spawn_sluice(d, "sluice-limited", "0", sluice_bin, &yaml)?;
    wait_port(port, Duration::from_secs(10))?;
    wait_port(admin_port, Duration::from_secs(10))?;
    let systems = [
        ("direct", up_port, None),
        ("nginx", p.nginx_port, None),
        ("sluice", port, Some(proc.pid())),
    ];
    closed_loop(
        s,
        report,
        1,
        &systems,
        &[("POST 1KB + limits", Some(script))],
    )?;
    let (status, _, body) = http_once(admin_port, "GET", "/metrics", b"", "")?;
    let scrape = exposition::parse(&String::from_utf8_lossy(&body))
        .map_err(|e| format!("limits scenario: GET /metrics answered {status}: {e}"))?;
    let decisions =
        |result: &str| scrape.sum("sluice_ratelimit_decisions_total", &[("result", result)]);
    let checked = decisions("allowed");
    let refused = decisions("limited") > 0.0;
    eprintln!("limits: {checked:.0} limit checks allowed while measuring");
    if status != 200 || checked < 1.0 || refused {
        return Err(format!(
            "limits scenario: expected every request checked and admitted (metrics {status}, {checked:.0} allowed, refused: {refused})"
        ));
    }
    Ok(())
}

/// POST 1KB through sluice to one mock-llm vs peak-EWMA over three (each its own process,
/// all on the upstream CPU), with one mock-llm direct as the reference.
fn balanced(
    s: &Settings,
    report: &mut Report,
    d: &Path,
    mock_bin: &Path,
    sluice_bin: &Path,
    script: &PathBuf,
) -> Result<(), String> {
    let mut mocks = Vec::new();
    let mut urls = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let name = format!("mock-ewma-{i}");
        let args = ["--listen", &listen, "--threads", "1", "--name", &name];
        mocks.push(spawn(
            &name,
            UPSTREAM_CPU,
            mock_bin,
            &args,
            &d.join(format!("{name}.log")),
        )?);
        wait_port(port, Duration::from_secs(5))?;
        urls.push(format!("{{url: \"http://{listen}\"}}"));
        ports.push(port);
    }
    let mut sluices = Vec::new();
    for (name, endpoints) in [
        ("sluice-1-endpoint", &urls[..1]),
        ("sluice-3-endpoints", &urls[..]),
    ] {
        let port = free_port();
        let yaml = format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n  threads: 1\n  max_body_bytes: 64MiB\nupstreams:\n  up:\n    balance: peak_ewma\n    endpoints: [{}]\n    pool: {{ max_idle: 256 }}\nroutes:\n  - name: chat\n    upstream: up\n",
            endpoints.join(", ")
        );
        let proc = spawn_sluice(d, name, "0", sluice_bin, &yaml)?;
        wait_port(port, Duration::from_secs(10))?;
        sluices.push((port, proc));
    }
    let systems = [
        ("direct", ports[0], None),
        ("sluice 1 endpoint", sluices[0].0, Some(sluices[0].1.pid())),
        ("sluice 3 peak_ewma", sluices[1].0, Some(sluices[1].1.pid())),
    ];
    closed_loop(
        s,
        report,
        1,
        &systems,
        &[("POST 1KB to mock-llm", Some(script))],
    )
}

/// IDLE_CONNECTIONS idle keep-alive connections to sluice and to nginx (GET passthrough).
fn idle(report: &mut Report, p: &Proxies) -> Result<(), String> {
    for (system, port, pid) in [
        ("nginx", p.nginx_port, p.nginx.pid()),
        ("sluice", p.sluice_port, p.sluice.pid()),
    ] {
        let r = idle_connections(port, pid, IDLE_CONNECTIONS)?;
        eprintln!(
            "idle {system}: {} connections, {:.1} KiB each, {} served after",
            r.connections, r.kib_per_connection, r.served_after
        );
        if r.served_after != r.connections {
            return Err(format!(
                "idle connections: {system} served only {} of {} afterwards",
                r.served_after, r.connections
            ));
        }
        report.idle.push((system, r));
    }
    Ok(())
}

/// The prompt mix through a caching sluice to a mock-llm that takes MIX_LATENCY_MS per
/// answer, cold cache, vs the same mock-llm direct: latency, and the real hit rate and the
/// upstream time saved from sluice's `/metrics`.
fn prompt_mix_cached(
    s: &Settings,
    report: &mut Report,
    d: &Path,
    slow_port: u16,
    sluice_bin: &Path,
) -> Result<(), String> {
    let (share, bodies) = mix_bodies(s);
    let direct = run_open(plan(
        slow_port,
        "/v1/chat/completions",
        MIX_RATE,
        s.open,
        bodies.clone(),
        false,
    ))?;
    eprintln!(
        "mix+cache  direct: p50 {:.3} p99 {:.3} ms, {} errors",
        direct.p50_ms, direct.p99_ms, direct.errors
    );
    report.cache_mix.push(CacheMixRow {
        system: "direct",
        repeat_share: share,
        result: direct,
        requests: BTreeMap::new(),
        saved_seconds: 0.0,
    });
    let cached = start_cache_sluice(d, "cache-mix", slow_port, sluice_bin)?;
    let (before, saved_before) = cache_metrics(cached.admin_port)?;
    let result = run_open(plan(
        cached.port,
        "/v1/chat/completions",
        MIX_RATE,
        s.open,
        bodies,
        false,
    ))?;
    let (mut after, saved_after) = cache_metrics(cached.admin_port)?;
    for (k, v) in &before {
        *after.entry(k.clone()).or_insert(0.0) -= v;
    }
    let row = CacheMixRow {
        system: "sluice",
        repeat_share: share,
        result,
        requests: after,
        saved_seconds: saved_after - saved_before,
    };
    eprintln!(
        "mix+cache  sluice: p50 {:.3} p99 {:.3} ms, {} errors, hit rate {:.1}% (repeat share {:.1}%), {:.1} upstream s saved, {:?}",
        result.p50_ms,
        result.p99_ms,
        result.errors,
        row.hit_rate() * 100.0,
        share * 100.0,
        row.saved_seconds,
        row.requests
    );
    if row.requests.values().sum::<f64>() < 1.0 {
        return Err("prompt mix + cache: sluice counted no cache requests".into());
    }
    report.cache_mix.push(row);
    Ok(())
}
