//! `loadbench soak`: a steady open-loop mix through one sluice (one thread on CPU 0; the
//! generator and mock-llm on CPU 1) for `SOAK_SECONDS` (default 600; `BENCH_QUICK=1`: 60):
//! plain POSTs, streamed POSTs, cached POSTs over a few repeated prompts and POSTs to a route
//! whose request limit a share of them exceeds (429s counted apart, not as errors). Every
//! interval (a minute; a sixth of runs under 5 minutes) it records sluice's peak RSS and
//! median open files (read each second), requests, errors and p99, then checks RSS and open files stay within 5% of the second
//! interval's value (the first is warm-up). Writes `target/bench/soak.md` and prints it.

use super::compare::env_count;
use super::quick;
use super::standalone::{publish, release_bins, setup_generator, start_mock};
use bytes::Bytes;
use sluice_benches::load::procs::{open_fds, rss_kib};
use sluice_benches::load::sluice::{cache_metrics, one_endpoint, start_pinned};
use sluice_benches::load::soak::{self, Class, Interval, Ledger};
use std::fmt::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Routes by model: streamed, cached, limited (300 requests/s for everyone), and the rest plain.
const ROUTES: &str = "  - name: stream\n    match: { methods: [POST], model: \"stream-*\" }\n    upstream: up\n  - name: chat\n    match: { methods: [POST], model: \"cached-*\" }\n    upstream: up\n    cache: { ttl: 10m, key: { scope: none } }\n  - name: limited\n    match: { methods: [POST], model: \"limited-*\" }\n    upstream: up\n    limits:\n      - { name: rps, key: route, requests_per_second: 300 }\n  - name: plain\n    upstream: up\n";
/// Drift allowed after warm-up.
const FLAT: f64 = 0.05;

/// sluice's RSS and open files are read this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the samples of one interval found: RSS at its highest, open files at their median
/// (a sample catches whatever requests are in flight; a leak moves the median too).
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

pub fn run() -> Result<(), String> {
    let seconds = env_count("SOAK_SECONDS", if quick() { 60 } else { 600 })? as u64;
    let every = if seconds >= 300 {
        60
    } else {
        (seconds / 6).max(1)
    };
    let intervals = seconds.div_ceil(every) as usize;
    let bins = release_bins()?;
    let machine = setup_generator(16_384)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();

    // Streams of 16 tokens 5 ms apart: ~80 ms each.
    let (mock_port, mock) = start_mock(d, &bins.mock, 16, 5, "mock-llm")?;
    let sluice = start_pinned(
        d,
        "sluice-soak",
        &bins.sluice,
        &one_endpoint(mock_port),
        ROUTES,
    )?;
    check_config(&bins.sluice, &d.join("sluice-soak.yaml"))?;
    let pid = sluice.proc.pid();

    let classes = mix();
    let names: Vec<&str> = classes.iter().map(|c| c.name).collect();
    let total_rate: f64 = classes.iter().map(|c| c.rate).sum();
    eprintln!("soak: {total_rate:.0} req/s for {seconds} s, sampled every {every} s");
    let every = Duration::from_secs(every);
    let ledger = Ledger::new(every, intervals, classes.len())?;
    let start = Instant::now() + Duration::from_millis(500);
    let sender = {
        let (ledger, addr) = (Arc::clone(&ledger), format!("127.0.0.1:{}", sluice.port));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let duration = Duration::from_secs(seconds);
        std::thread::spawn(move || {
            let path = "/v1/chat/completions".to_string();
            let start = tokio::time::Instant::from_std(start);
            rt.block_on(soak::run(addr, path, classes, start, duration, ledger));
        })
    };

    let mut samples = Vec::new();
    for k in 1..=intervals {
        let at = every * k as u32;
        let (mut rss, mut fds) = (0, Vec::new());
        while Instant::now() < start + at {
            let left = (start + at).saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(SAMPLE_EVERY));
            rss = rss.max(rss_kib(pid).ok_or("sluice exited during the soak")?);
            fds.push(open_fds(pid)?);
            // A zombie has no RSS: the upstream is gone and every request to it will fail.
            if rss_kib(mock.pid()).is_none() {
                return Err(format!(
                    "mock-llm exited {} s into the soak",
                    start.elapsed().as_secs()
                ));
            }
        }
        fds.sort_unstable();
        let s = Sample {
            at,
            rss_kib: rss,
            fds: fds.get(fds.len() / 2).copied().unwrap_or(0),
        };
        let so_far = ledger.intervals();
        let i = &so_far[k - 1];
        eprintln!(
            "soak {:>5} s: RSS {:.1} MiB, {} open files, {} requests ({} 429), {} errors, p99 {:.2} ms",
            at.as_secs(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            i.ok + i.limited + i.errors,
            i.limited,
            i.errors,
            i.latency.value_at_quantile(0.99) as f64 / 1000.0
        );
        samples.push(s);
    }
    sender
        .join()
        .map_err(|_| "the soak's sender thread panicked")?;
    let (cache, _) = cache_metrics(sluice.admin_port)?;
    let hits = cache.get("hit").copied().unwrap_or(0.0);
    let md = markdown(
        &machine,
        seconds,
        total_rate,
        &samples,
        &ledger.intervals(),
        &names,
        &ledger.class_totals(),
        hits,
    );
    publish("soak.md", &md)?;
    Ok(())
}

/// The mix, 2,000 requests/s in all.
fn mix() -> Vec<Class> {
    let bodies = |model: &str, stream: bool, prompts: usize| {
        let v: Vec<Bytes> = (0..prompts)
            .map(|i| {
                Bytes::from(format!(
                    r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"Prompt number {i}: say something."}}]}}"#
                ))
            })
            .collect();
        Arc::new(v)
    };
    vec![
        Class {
            name: "plain",
            rate: 800.0,
            connections: 16,
            bodies: bodies("plain-bench", false, 1000),
            first_byte: false,
        },
        Class {
            name: "streamed",
            rate: 200.0,
            connections: 32,
            bodies: bodies("stream-bench", true, 1000),
            first_byte: true,
        },
        Class {
            name: "cached",
            rate: 600.0,
            connections: 16,
            bodies: bodies("cached-bench", false, 20),
            first_byte: false,
        },
        Class {
            name: "limited",
            rate: 400.0,
            connections: 16,
            bodies: bodies("limited-bench", false, 1000),
            first_byte: false,
        },
    ]
}

/// `sluice check` accepts the config the soak runs.
fn check_config(sluice_bin: &Path, config: &Path) -> Result<(), String> {
    let out = Command::new(sluice_bin)
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .map_err(|e| format!("sluice check: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sluice check rejects the soak config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// PASS when every value from the second interval on is within [`FLAT`] of the second's.
fn flat(values: &[f64]) -> (f64, &'static str) {
    let Some((&base, rest)) = values.get(1..).and_then(<[f64]>::split_first) else {
        return (0.0, "n/a (under 2 intervals)");
    };
    let drift = rest
        .iter()
        .map(|v| (v - base).abs() / base.max(1e-9))
        .fold(0.0, f64::max);
    (drift, if drift <= FLAT { "PASS" } else { "FAIL" })
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    machine: &str,
    seconds: u64,
    rate: f64,
    samples: &[Sample],
    intervals: &[Interval],
    names: &[&str],
    totals: &[soak::Totals],
    hits: f64,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Soak: a steady mix through sluice\n\n{machine}; {rate:.0} req/s open loop for {seconds} s (plain, streamed, cached, limited); sluice alone on CPU 0 with one worker, the generator and mock-llm on CPU 1. Latency is from the scheduled send to the last byte (streams: the first).\n");
    let _ = writeln!(s, "| t (s) | peak RSS MiB | open files (median) | requests | 429 | errors | p99 ms |\n|---|---|---|---|---|---|---|");
    for (sample, i) in samples.iter().zip(intervals) {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {} | {} | {} | {:.2} |",
            sample.at.as_secs(),
            sample.rss_kib as f64 / 1024.0,
            sample.fds,
            i.ok + i.limited + i.errors,
            i.limited,
            i.errors,
            i.latency.value_at_quantile(0.99) as f64 / 1000.0
        );
    }
    let _ = writeln!(s, "\n| class | 2xx | 429 | errors |\n|---|---|---|---|");
    for (name, [ok, limited, errors]) in names.iter().zip(totals) {
        let _ = writeln!(s, "| {name} | {ok} | {limited} | {errors} |");
    }
    let _ = writeln!(s, "\ncache hits (sluice's /metrics): {hits:.0}\n");
    let rss: Vec<f64> = samples.iter().map(|x| x.rss_kib as f64).collect();
    let fds: Vec<f64> = samples.iter().map(|x| x.fds as f64).collect();
    let p99: Vec<f64> = intervals
        .iter()
        .map(|i| i.latency.value_at_quantile(0.99) as f64 / 1000.0)
        .collect();
    for (metric, values) in [("RSS", &rss), ("open files", &fds)] {
        let (drift, verdict) = flat(values);
        let _ = writeln!(
            s,
            "- {metric}: at most {:.1}% off the second interval's value (flat within 5%: {verdict})",
            drift * 100.0
        );
    }
    let (drift, _) = flat(&p99);
    let _ = writeln!(
        s,
        "- p99: at most {:.1}% off the second interval's (reported, not checked)",
        drift * 100.0
    );
    let errors: u64 = totals.iter().map(|t| t[2]).sum();
    let _ = writeln!(
        s,
        "- errors: {errors} ({})",
        if errors == 0 { "PASS" } else { "FAIL" }
    );
    s
}
