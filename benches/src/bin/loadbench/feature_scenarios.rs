//! Closed-loop scenarios that each put one sluice feature on the request path (cache hits,
//! limits, balancing over several endpoints) against the same requests without it, and idle
//! keep-alive connections.

use super::closed_loop::closed_loop;
use super::idle::checked;
use super::{Proxies, Settings, IDLE_CONNECTIONS, UPSTREAM_CPU};
use sluice_benches::load::idle::idle_connections;
use sluice_benches::load::procs::{spawn, wait_port};
use sluice_benches::load::report::Report;
use sluice_benches::load::sluice::{
    cache_metrics, expect_hits, one_endpoint, prime_cache, scrape, server_yaml, spawn_sluice,
    start_cache_sluice, start_pinned, SLUICE_CPU,
};
use sluice_testkit::free_port;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Closed loop on one cached POST: sluice answering from its memory tier vs nginx proxying the
/// same POST to the upstream (nginx cannot cache a POST) and vs the upstream direct.
#[allow(clippy::too_many_arguments)]
pub fn cache_hit(
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
    prime_cache("cache hit scenario", cached.port, raw_body)?;
    let systems = [
        ("direct", up_port, None),
        ("nginx", p.nginx_port, None),
        ("sluice", cached.port, Some(cached.proc.pid())),
    ];
    let (before, _) = cache_metrics(cached.admin_port)?;
    closed_loop(s, report, 1, &systems, &[("cache hit", Some(script))])?;
    let (after, _) = cache_metrics(cached.admin_port)?;
    expect_hits("cache hit scenario", &before, &after)
}

/// POST 1KB through a sluice whose route has a request limit and a token budget that every
/// request passes (so each one is checked, reserved and settled), vs nginx and direct in the
/// same run; compare with the "POST 1KB" rows for the cost of the limits.
pub fn limited(
    s: &Settings,
    report: &mut Report,
    d: &Path,
    up_port: u16,
    p: &Proxies,
    sluice_bin: &Path,
    script: &PathBuf,
) -> Result<(), String> {
    let routes = "  - name: chat\n    match: { methods: [POST], model: \"bench-*\" }\n    upstream: up\n    limits:\n      - { name: rps, key: api_key, requests_per_second: 1000000000 }\n      - { name: tpm, key: api_key, tokens_per_minute: 1000000000 }\n";
    let limited = start_pinned(
        d,
        "sluice-limited",
        sluice_bin,
        &one_endpoint(up_port),
        routes,
    )?;
    let systems = [
        ("direct", up_port, None),
        ("nginx", p.nginx_port, None),
        ("sluice", limited.port, Some(limited.proc.pid())),
    ];
    closed_loop(
        s,
        report,
        1,
        &systems,
        &[("POST 1KB + limits", Some(script))],
    )?;
    let scrape = scrape(limited.admin_port).map_err(|e| format!("limits scenario: {e}"))?;
    let decisions =
        |result: &str| scrape.sum("sluice_ratelimit_decisions_total", &[("result", result)]);
    let checked = decisions("allowed");
    let refused = decisions("limited") > 0.0;
    eprintln!("limits: {checked:.0} limit checks allowed while measuring");
    if checked < 1.0 || refused {
        return Err(format!(
            "limits scenario: expected every request checked and admitted ({checked:.0} allowed, refused: {refused})"
        ));
    }
    Ok(())
}

/// POST 1KB through sluice to one mock-llm vs peak-EWMA over three (each its own process,
/// all on the upstream CPU), with one mock-llm direct as the reference.
pub fn balanced(
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
            "{}upstreams:\n  up:\n    balance: peak_ewma\n    endpoints: [{}]\n    pool: {{ max_idle: 256 }}\nroutes:\n  - name: chat\n    upstream: up\n",
            server_yaml(port, 1),
            endpoints.join(", ")
        );
        let proc = spawn_sluice(d, name, SLUICE_CPU, sluice_bin, &yaml)?;
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
pub fn idle(report: &mut Report, p: &Proxies) -> Result<(), String> {
    for (system, port, pid) in [
        ("nginx", p.nginx_port, p.nginx.pid()),
        ("sluice", p.sluice_port, p.sluice.pid()),
    ] {
        let r = checked(system, idle_connections(port, pid, IDLE_CONNECTIONS)?)?;
        report.idle.push((system, r));
    }
    Ok(())
}
