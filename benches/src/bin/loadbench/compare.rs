//! `loadbench compare OLD_SLUICE NEW_SLUICE`: two sluice builds measured per core, fairly, to
//! see what a change does to the hot path. Each build is one process pinned whole to CPU 0
//! (`taskset -c 0`, 1 worker thread); wrk and the fixed upstream share CPU 1. Per scenario the
//! rounds alternate old, new, old, new, so drift hits both builds alike. `BENCH_ROUNDS` rounds
//! (default 5) of `BENCH_SECONDS` each (default 5); `BENCH_QUICK=1` makes it 2 rounds of 2 s.
//! Writes `target/bench/compare.md` and prints it.

use super::closed_loop::{self, System};
use super::{quick, start_fixed_upstream, target_dir};
use sluice_benches::chat_body;
use sluice_benches::load::comparison::{Comparison, ScenarioComparison, Summary};
use sluice_benches::load::report::machine;
use sluice_benches::load::sluice::{
    cache_metrics, expect_hits, prime_cache, start_cache_sluice, start_plain_sluice, PinnedSluice,
};
use sluice_benches::load::wrk::write_post_script;
use std::path::Path;
use std::time::Duration;

/// The builds, in the order each round measures them.
const BUILDS: [&str; 2] = ["old", "new"];

pub fn run(old: &Path, new: &Path) -> Result<(), String> {
    let quick = quick();
    let rounds = env_count("BENCH_ROUNDS", if quick { 2 } else { 5 })?;
    let seconds = env_count("BENCH_SECONDS", if quick { 2 } else { 5 })?;
    let bins = [old, new];
    for bin in bins {
        if !bin.is_file() {
            return Err(format!("{}: no sluice binary there", bin.display()));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let (up_port, _upstream) = start_fixed_upstream(d)?;
    let body = chat_body("bench-model", 1024);
    let script = write_post_script(d, "1k.json", &body)?;
    let each = Duration::from_secs(seconds as u64);
    let mut comparison = Comparison {
        machine: machine(),
        old_bin: old.display().to_string(),
        new_bin: new.display().to_string(),
        seconds: seconds as u64,
        scenarios: Vec::new(),
    };

    // (a) A POST through a plain route (no body read) with the default logging.
    let plain = [0, 1].map(|i| {
        let name = format!("sluice-{}-plain", BUILDS[i]);
        start_plain_sluice(d, &name, up_port, bins[i])
    });
    let plain = both_started(plain)?;
    comparison
        .scenarios
        .push(measure("passthrough", &plain, &script, rounds, each)?);
    drop(plain);

    // (b) The same POST answered from the memory tier: primed once, then every request hits.
    let cached = [0, 1].map(|i| {
        let name = format!("{}-cache-hit", BUILDS[i]);
        start_cache_sluice(d, &name, up_port, bins[i])
    });
    let cached = both_started(cached)?;
    let mut before = Vec::new();
    for (build, sluice) in BUILDS.iter().zip(&cached) {
        prime_cache(&format!("cache hit, {build}"), sluice.port, &body)?;
        before.push(cache_metrics(sluice.admin_port)?.0);
    }
    comparison
        .scenarios
        .push(measure("cache hit", &cached, &script, rounds, each)?);
    for ((build, sluice), before) in BUILDS.iter().zip(&cached).zip(&before) {
        let (after, _) = cache_metrics(sluice.admin_port)?;
        expect_hits(&format!("cache hit, {build}"), before, &after)?;
    }

    let out = target_dir()?.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let md = comparison.markdown();
    println!("{md}");
    let file = out.join("compare.md");
    std::fs::write(&file, &md).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("written: {}", file.display());
    Ok(())
}

/// A positive whole number from the environment variable `name`, or `default` when unset.
pub(super) fn env_count(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name}={v}: expected a whole number above 0")),
        },
    }
}

/// Both builds' sluices, or the first one that did not start.
fn both_started(started: [Result<PinnedSluice, String>; 2]) -> Result<[PinnedSluice; 2], String> {
    let [old, new] = started;
    Ok([old?, new?])
}

/// `rounds` rounds of wrk POSTing with `script`, each alternating old and new; the summary.
fn measure(
    scenario: &'static str,
    sluices: &[PinnedSluice; 2],
    script: &Path,
    rounds: usize,
    each: Duration,
) -> Result<ScenarioComparison, String> {
    let systems: [System; 2] = [
        (BUILDS[0], sluices[0].port, None),
        (BUILDS[1], sluices[1].port, None),
    ];
    let runs = closed_loop::rounds(&systems, Some(script), rounds, each)?;
    let mut summaries = Vec::new();
    for (build, rs) in BUILDS.iter().zip(&runs) {
        let results: Vec<_> = rs.iter().map(|(r, _)| *r).collect();
        let m = Summary::of(&results).ok_or_else(|| format!("{scenario}: no rounds"))?;
        eprintln!(
            "{scenario:>12} {build}: best {:>8.0} median {:>8.0} req/s, p50 {:.3} ms p99 {:.3} ms, {} errors",
            m.best_rps, m.median_rps, m.p50_ms, m.p99_ms, m.errors
        );
        summaries.push(m);
    }
    let [old, new] = [summaries[0], summaries[1]];
    Ok(ScenarioComparison { scenario, old, new })
}
