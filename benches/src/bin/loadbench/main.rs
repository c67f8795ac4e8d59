//! `make bench`: measures sluice against direct and nginx in one run, alternating systems so
//! drift hits all alike. `BENCH_QUICK=1` for a short run. Needs release builds of sluice and
//! mock-llm, and nginx + wrk (installed by `make deps`).
//!
//! `loadbench compare OLD_SLUICE NEW_SLUICE` (`make bench-compare`) measures two sluice builds
//! against each other instead; see the compare module. `loadbench percore` (`make bench-percore`)
//! measures sluice, nginx and stock Pingora each alone on one core; see the percore module.

mod closed_loop;
mod compare;
mod feature_scenarios;
mod idle;
mod open_loop;
mod percore;
mod soak;
mod standalone;
mod streams;

use sluice_benches::chat_body;
use sluice_benches::load::idle::raise_fd_limit;
use sluice_benches::load::procs::{
    fixed_upstream, nginx_conf, rss_kib, spawn, spawn_nginx, wait_port, Running,
};
use sluice_benches::load::report::{machine, Report};
use sluice_benches::load::sluice::{one_endpoint, server_yaml, spawn_sluice};
use sluice_benches::load::wrk::write_post_script;
use sluice_testkit::free_port;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// wrk and the upstreams share CPU 1; the proxy under test has CPU 0 to itself (1 thread),
/// so the numbers measure the proxy's own cost per request rather than its co-tenant's.
const LOAD_CPU: &str = "1";
const UPSTREAM_CPU: &str = "1";
/// mock-llm's delay before answering in the "prompt mix + cache" scenario: what a hit saves.
const MIX_LATENCY_MS: u64 = 20;
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

const USAGE: &str = "usage: loadbench                           (the load benchmark, `make bench`)\n       loadbench compare OLD_SLUICE NEW_SLUICE  (two sluice builds, `make bench-compare`)\n       loadbench percore [--sluice PATH]     (sluice, nginx, stock Pingora per core, `make bench-percore`)\n       loadbench streams | soak | idle        (per-core SSE streams, soak, idle connections)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => benchmark(),
        ["compare", old, new] => compare::run(Path::new(old), Path::new(new)),
        ["percore"] => target_dir().and_then(|t| {
            let release = t.join("release");
            percore::run(&release.join("sluice"), &release.join("stock-pingora"))
        }),
        ["percore", "--sluice", sluice] => target_dir().and_then(|t| {
            percore::run(Path::new(sluice), &t.join("release").join("stock-pingora"))
        }),
        ["streams"] => streams::run(),
        ["soak"] => soak::run(),
        ["idle"] => idle::run(),
        _ => Err(USAGE.into()),
    };
    if let Err(e) = outcome {
        eprintln!("loadbench: {e}");
        std::process::exit(1);
    }
}

/// The load benchmark: every system, every scenario, `target/bench/report.{md,svg}`.
fn benchmark() -> Result<(), String> {
    let quick = quick();
    let target = target_dir()?;
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
    let (up_port, _upstream) = start_fixed_upstream(d)?;
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
    wait_port(mock_port, Duration::from_secs(5))?;
    wait_port(slow_port, Duration::from_secs(5))?;

    let raw_1k = chat_body("bench-model", 1024);
    let body_1k = write_post_script(d, "1k.json", &raw_1k)?;
    let body_256k = write_post_script(d, "256k.json", &chat_body("bench-model", 256 * 1024))?;
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
        closed_loop::closed_loop(
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
            open_loop::open_loop(&s, &mut report, up_port, &p)?;
            open_loop::streaming_ttfb(&s, &mut report, mock_port, &p)?;
            open_loop::prompt_mix(&s, &mut report, &p)?;
            feature_scenarios::cache_hit(
                &s,
                &mut report,
                d,
                up_port,
                &p,
                &sluice_bin,
                &raw_1k,
                &body_1k,
            )?;
            open_loop::prompt_mix_cached(&s, &mut report, d, slow_port, &sluice_bin)?;
            feature_scenarios::limited(&s, &mut report, d, up_port, &p, &sluice_bin, &body_1k)?;
            feature_scenarios::balanced(&s, &mut report, d, &mock_bin, &sluice_bin, &body_1k)?;
            feature_scenarios::idle(&mut report, &p)?;
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

/// `BENCH_QUICK=1`: a short run.
fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// The workspace's `target/` directory: the release binaries, and `bench/` for the reports.
fn target_dir() -> Result<PathBuf, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|workspace| workspace.join("target"))
        .ok_or_else(|| "no workspace above the benches crate".into())
}

/// The fixed upstream on [`UPSTREAM_CPU`]: its port once it accepts, and the process.
fn start_fixed_upstream(d: &Path) -> Result<(u16, Running), String> {
    fixed_upstream(d, UPSTREAM_CPU)
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
    let conf = nginx_conf(d, threads, nginx_port, Some(up_port), "");
    let nginx = spawn_nginx(d, &format!("nginx-proxy-{threads}"), cpus, &conf)?;
    let sluice_port = free_port();
    let yaml = format!(
        "{}upstreams:\n  fixed:\n{}  mock:\n    endpoints: [{{url: \"http://127.0.0.1:{mock_port}\"}}]\nroutes:\n  - name: stream\n    match: {{ methods: [POST], model: \"stream-*\" }}\n    upstream: mock\n  - name: by-model\n    match: {{ methods: [POST], model: \"bench-*\" }}\n    upstream: fixed\n  - name: mix\n    match: {{ methods: [POST], model: \"mock-*\" }}\n    upstream: mock\n  - name: passthrough\n    upstream: fixed\n",
        server_yaml(sluice_port, threads),
        one_endpoint(up_port)
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
