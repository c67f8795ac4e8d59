//! Open-loop scenarios: requests sent at a fixed rate whatever the answers do, latency measured
//! from the scheduled send time (no coordinated omission): added latency at shares of nginx's
//! capacity, time to first token, and the prompt mix with and without the cache.

use super::{Proxies, Settings};
use bytes::Bytes;
use sluice_benches::load::openloop::{self, OpenLoopResult, Plan};
use sluice_benches::load::report::{CacheMixRow, OpenRow, Report};
use sluice_benches::load::sluice::{cache_metrics, start_cache_sluice};
use sluice_benches::workload::{repeat_share, PromptMix};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The open-loop rate of both prompt-mix scenarios.
const MIX_RATE: f64 = 500.0;

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
pub fn open_loop(
    s: &Settings,
    report: &mut Report,
    up_port: u16,
    p: &Proxies,
) -> Result<(), String> {
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
pub fn streaming_ttfb(
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
pub fn prompt_mix(s: &Settings, report: &mut Report, p: &Proxies) -> Result<(), String> {
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

/// The prompt mix through a caching sluice to a mock-llm that takes MIX_LATENCY_MS per
/// answer, cold cache, vs the same mock-llm direct: latency, and the real hit rate and the
/// upstream time saved from sluice's `/metrics`.
pub fn prompt_mix_cached(
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
