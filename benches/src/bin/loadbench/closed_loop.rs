//! Closed-loop throughput: wrk against each system in turn, round after round, so drift hits
//! every system alike.

use super::{Settings, LOAD_CPU};
use sluice_benches::load::procs::RssSampler;
use sluice_benches::load::report::{ClosedRow, Report};
use sluice_benches::load::wrk::{self, WrkResult};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A system under closed-loop load: its name, its port, and its pid when its peak RSS is
/// sampled.
pub type System = (&'static str, u16, Option<u32>);

/// One wrk round: what it measured and the system's peak RSS (MiB) when sampled.
pub type Round = (WrkResult, Option<f64>);

/// A 1 s warm-up of each system (so pools and caches are hot for all), then `rounds` rounds of
/// wrk (32 connections, `each` long) POSTing with `script` (GET without) to each system in
/// turn; per system, its rounds.
pub fn rounds(
    systems: &[System],
    script: Option<&Path>,
    rounds: usize,
    each: Duration,
) -> Result<Vec<Vec<Round>>, String> {
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let mut runs: Vec<Vec<Round>> = vec![Vec::new(); systems.len()];
    for (_, port, _) in systems {
        let _ = wrk::run(&url(*port), 32, Duration::from_secs(1), script, LOAD_CPU);
    }
    for _ in 0..rounds {
        for (i, (_, port, pid)) in systems.iter().enumerate() {
            let sampler = pid.map(RssSampler::start);
            let r = wrk::run(&url(*port), 32, each, script, LOAD_CPU)?;
            runs[i].push((r, sampler.map(RssSampler::finish)));
        }
    }
    Ok(runs)
}

/// wrk against each system in turn, `s.rounds` times; keeps each system's median round.
pub fn closed_loop(
    s: &Settings,
    report: &mut Report,
    threads: usize,
    systems: &[System],
    scenarios: &[(&'static str, Option<&PathBuf>)],
) -> Result<(), String> {
    for (scenario, script) in scenarios {
        let runs = rounds(systems, script.map(PathBuf::as_path), s.rounds, s.closed)?;
        for ((system, _, _), mut rs) in systems.iter().zip(runs) {
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
