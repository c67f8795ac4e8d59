//! `loadbench percore [--sluice PATH]`: sluice, nginx and stock Pingora each alone on CPU 0,
//! measured in alternating rounds for req/s, latency and CPU-seconds per 1,000 requests; wrk
//! and the fixed upstream run on CPU 1. `PERCORE_ROUNDS` rounds (default 3) of
//! `PERCORE_SECONDS` each (default 5); `BENCH_QUICK=1` makes it 1 round of 2 s. Writes
//! `target/bench/percore.{md,json}` and prints the table.

use super::compare::env_count;
use super::{quick, start_fixed_upstream, target_dir, LOAD_CPU};
use sluice_benches::chat_body;
use sluice_benches::load::comparison::{median, Summary};
use sluice_benches::load::oneshot;
use sluice_benches::load::percore_report::{
    row_label, Percore, Row, GET, NGINX, NGINX_CACHE, PINGORA, POST_1K, SLUICE_BODY, SLUICE_CACHE,
    SLUICE_PASSTHROUGH,
};
use sluice_benches::load::procs::{
    cpu_seconds, nginx_cache_conf, nginx_conf, spawn, spawn_nginx, wait_port,
};
use sluice_benches::load::report::machine;
use sluice_benches::load::sluice::{
    cache_metrics, expect_hits, one_endpoint, prime_cache, start_pinned_with_env, PinnedSluice,
    BODY_ROUTES, CACHE_ROUTES, PLAIN_ROUTES, SLUICE_CPU,
};
use sluice_benches::load::wrk::{self, WrkResult};
use sluice_testkit::free_port;
use std::path::Path;
use std::time::Duration;

const PATH: &str = "/v1/chat/completions";

/// One system in one scenario: what wrk sends it and whose CPU time is counted.
struct Scenario<'a> {
    system: &'static str,
    method: &'static str,
    access_lines: Option<bool>,
    port: u16,
    pid: u32,
    /// The wrk script that POSTs the 1 KB body; GET without.
    script: Option<&'a Path>,
}

/// A sluice of one scenario, with or without access lines.
struct SluiceUnderTest {
    system: &'static str,
    method: &'static str,
    access_lines: bool,
    sluice: PinnedSluice,
    log: std::path::PathBuf,
}

pub fn run(sluice_bin: &Path, pingora_bin: &Path) -> Result<(), String> {
    let quick = quick();
    let rounds = env_count("PERCORE_ROUNDS", if quick { 1 } else { 3 })?;
    let seconds = env_count("PERCORE_SECONDS", if quick { 2 } else { 5 })?;
    for bin in [sluice_bin, pingora_bin] {
        if !bin.is_file() {
            return Err(format!(
                "{} missing: `make bench-percore` builds it",
                bin.display()
            ));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let (up_port, _upstream) = start_fixed_upstream(d)?;
    let body = chat_body("bench-model", 1024);
    let script = wrk::write_post_script(d, "1k.json", &body)?;

    let (nginx_port, cache_port, pingora_port) = (free_port(), free_port(), free_port());
    let nginx = spawn_nginx(
        d,
        "nginx-proxy",
        SLUICE_CPU,
        &nginx_conf(d, 1, nginx_port, Some(up_port), ""),
    )?;
    let nginx_cache = spawn_nginx(
        d,
        "nginx-cache",
        SLUICE_CPU,
        &nginx_cache_conf(d, 1, cache_port, up_port),
    )?;
    let (listen, upstream) = (
        format!("127.0.0.1:{pingora_port}"),
        format!("127.0.0.1:{up_port}"),
    );
    let pingora = spawn(
        "stock-pingora",
        SLUICE_CPU,
        pingora_bin,
        &["--listen", &listen, "--upstream", &upstream],
        &d.join("stock-pingora.log"),
    )?;
    for port in [nginx_port, cache_port, pingora_port] {
        wait_port(port, Duration::from_secs(10))?;
    }
    let sluices = start_sluices(d, sluice_bin, up_port)?;

    nginx_hit(cache_port, &body)?;
    let mut cache_before = Vec::new();
    for s in sluices.iter().filter(|s| s.system == SLUICE_CACHE) {
        prime_cache(&label(s), s.sluice.port, &body)?;
        cache_before.push(cache_metrics(s.sluice.admin_port)?.0);
    }

    let mut scenarios = vec![
        scenario(NGINX, GET, nginx_port, nginx.pid(), None),
        scenario(NGINX, POST_1K, nginx_port, nginx.pid(), Some(&script)),
        scenario(
            NGINX_CACHE,
            POST_1K,
            cache_port,
            nginx_cache.pid(),
            Some(&script),
        ),
        scenario(PINGORA, GET, pingora_port, pingora.pid(), None),
    ];
    for s in &sluices {
        scenarios.push(Scenario {
            system: s.system,
            method: s.method,
            access_lines: Some(s.access_lines),
            port: s.sluice.port,
            pid: s.sluice.proc.pid(),
            script: (s.method == POST_1K).then_some(script.as_path()),
        });
    }

    let rows = measure(&scenarios, rounds, Duration::from_secs(seconds as u64))?;

    nginx_hit(cache_port, &body)?;
    let cached = sluices.iter().filter(|s| s.system == SLUICE_CACHE);
    for (s, before) in cached.zip(&cache_before) {
        let (after, _) = cache_metrics(s.sluice.admin_port)?;
        expect_hits(&label(s), before, &after)?;
    }
    for s in &sluices {
        check_access_lines(s)?;
    }

    let report = Percore {
        machine: machine(),
        rounds,
        seconds: seconds as u64,
        rows,
    };
    let out = target_dir()?.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let md = report.markdown();
    println!("{md}");
    let (md_file, json_file) = (out.join("percore.md"), out.join("percore.json"));
    std::fs::write(&md_file, &md).map_err(|e| format!("{}: {e}", md_file.display()))?;
    let json = serde_json::to_string_pretty(&report.json()).map_err(|e| e.to_string())?;
    std::fs::write(&json_file, json).map_err(|e| format!("{}: {e}", json_file.display()))?;
    println!("written: {} and {}", md_file.display(), json_file.display());
    Ok(())
}

fn scenario<'a>(
    system: &'static str,
    method: &'static str,
    port: u16,
    pid: u32,
    script: Option<&'a Path>,
) -> Scenario<'a> {
    Scenario {
        system,
        method,
        access_lines: None,
        port,
        pid,
        script,
    }
}

/// The six sluices: passthrough, body route and cache hit, each with and without access lines.
fn start_sluices(
    d: &Path,
    sluice_bin: &Path,
    up_port: u16,
) -> Result<Vec<SluiceUnderTest>, String> {
    let mut out = Vec::new();
    for access_lines in [true, false] {
        // Explicit both ways, so a RUST_LOG in the caller's environment changes nothing.
        let env = [("RUST_LOG", if access_lines { "info" } else { "warn" })];
        for (system, method, routes, slug) in [
            (SLUICE_PASSTHROUGH, GET, PLAIN_ROUTES, "passthrough"),
            (SLUICE_BODY, POST_1K, BODY_ROUTES, "body"),
            (SLUICE_CACHE, POST_1K, CACHE_ROUTES, "cache"),
        ] {
            let name = format!(
                "sluice-{slug}-{}",
                if access_lines { "log" } else { "nolog" }
            );
            let sluice =
                start_pinned_with_env(d, &name, sluice_bin, &one_endpoint(up_port), routes, &env)?;
            out.push(SluiceUnderTest {
                system,
                method,
                access_lines,
                sluice,
                log: d.join(format!("{name}.log")),
            });
        }
    }
    Ok(out)
}

fn label(s: &SluiceUnderTest) -> String {
    row_label(s.system, Some(s.access_lines))
}

/// A 1 s warm-up of each scenario, then `rounds` rounds of wrk (32 connections, `each` long)
/// over every scenario in turn, with the system's CPU time read around each run.
fn measure(scenarios: &[Scenario], rounds: usize, each: Duration) -> Result<Vec<Row>, String> {
    let url = |port: u16| format!("http://127.0.0.1:{port}{PATH}");
    for s in scenarios {
        let _ = wrk::run(&url(s.port), 32, Duration::from_secs(1), s.script, LOAD_CPU);
    }
    let mut runs: Vec<Vec<(WrkResult, f64)>> = vec![Vec::new(); scenarios.len()];
    for round in 1..=rounds {
        for (s, runs) in scenarios.iter().zip(&mut runs) {
            let before = cpu_seconds(s.pid)?;
            let r = wrk::run(&url(s.port), 32, each, s.script, LOAD_CPU)?;
            let cpu = cpu_seconds(s.pid)? - before;
            if r.requests == 0 {
                return Err(format!(
                    "{} {}: wrk completed no request",
                    s.system, s.method
                ));
            }
            let per_1k = cpu / r.requests as f64 * 1000.0;
            eprintln!(
                "round {round}: {:>38} {:>9}: {:>8.0} req/s p50 {:.3} ms p99 {:.3} ms, {per_1k:.4} CPU-s/1k, {} errors",
                row_label(s.system, s.access_lines),
                s.method,
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.errors
            );
            runs.push((r, per_1k));
        }
    }
    let mut rows = Vec::new();
    for (s, rs) in scenarios.iter().zip(runs) {
        let results: Vec<WrkResult> = rs.iter().map(|(r, _)| *r).collect();
        let summary = Summary::of(&results).ok_or_else(|| format!("{}: no rounds", s.system))?;
        rows.push(Row {
            system: s.system,
            method: s.method,
            access_lines: s.access_lines,
            summary,
            cpu_s_per_1k: median(rs.iter().map(|(_, c)| *c).collect()),
        });
    }
    Ok(rows)
}

/// Checks that nginx on `port` answers the 1 KB POST from its cache (`X-Cache-Status: HIT`),
/// sending it until it does (within about a second).
fn nginx_hit(port: u16, body: &[u8]) -> Result<(), String> {
    let mut last = None;
    for _ in 0..50 {
        let a = oneshot::request(port, "POST", PATH, body, "x-cache-status")?;
        if a.status == 200 && a.header.as_deref() == Some("HIT") {
            return Ok(());
        }
        last = Some((a.status, a.header));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, cache) = last.unwrap_or((0, None));
    Err(format!(
        "nginx proxy_cache: the POST is not served from the cache (status {status}, X-Cache-Status: {})",
        cache.as_deref().unwrap_or("absent")
    ))
}

/// Checks that a sluice with access lines wrote some and one without wrote none.
fn check_access_lines(s: &SluiceUnderTest) -> Result<(), String> {
    let text = std::fs::read_to_string(&s.log).map_err(|e| format!("{}: {e}", s.log.display()))?;
    let lines = text.lines().filter(|l| l.contains(" access: ")).count();
    eprintln!("{}: {lines} access lines written", label(s));
    match (s.access_lines, lines) {
        (true, 0) => Err(format!("{}: no access line in its log", label(s))),
        (false, n) if n > 0 => Err(format!("{}: {n} access lines in its log", label(s))),
        _ => Ok(()),
    }
}
