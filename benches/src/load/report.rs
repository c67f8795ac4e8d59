//! The benchmark report: a Markdown table (printed and written to `target/bench/report.md`)
//! and an SVG chart, with every figure also given as a ratio against direct and nginx.

use super::openloop::OpenLoopResult;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// One closed-loop measurement (median of the rounds).
#[derive(Debug, Clone)]
pub struct ClosedRow {
    pub scenario: &'static str,
    pub threads: usize,
    pub system: &'static str,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub rss_mib: Option<f64>,
}

/// One open-loop measurement at a share of nginx's capacity.
#[derive(Debug, Clone)]
pub struct OpenRow {
    pub load_pct: u32,
    pub rate: f64,
    pub system: &'static str,
    pub result: OpenLoopResult,
}

/// The prompt mix against a slow upstream, direct or through a caching sluice (cold cache).
#[derive(Debug, Clone)]
pub struct CacheMixRow {
    pub system: &'static str,
    /// Share of the mix's requests that repeat an earlier prompt: the hit rate's upper bound.
    pub repeat_share: f64,
    pub result: OpenLoopResult,
    /// `sluice_cache_requests_total` during the run, by `result` (empty for direct).
    pub requests: BTreeMap<String, f64>,
    /// `sluice_cache_saved_seconds_total` gained during the run.
    pub saved_seconds: f64,
}

impl CacheMixRow {
    fn count(&self, result: &str) -> f64 {
        self.requests.get(result).copied().unwrap_or(0.0)
    }

    /// Share of the cache's requests answered without the upstream (hits and coalesced).
    #[must_use]
    pub fn hit_rate(&self) -> f64 {
        let total: f64 = self.requests.values().sum();
        if total <= 0.0 {
            return 0.0;
        }
        (self.count("hit") + self.count("coalesced")) / total
    }
}

/// The machine line of a report: cores and CPU model.
#[must_use]
pub fn machine() -> String {
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

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub machine: String,
    pub quick: bool,
    pub idle_rss_mib: f64,
    pub closed: Vec<ClosedRow>,
    pub open: Vec<OpenRow>,
    pub ttfb: Vec<(&'static str, OpenLoopResult)>,
    pub mix: Option<(f64, OpenLoopResult)>,
    pub cache_mix: Vec<CacheMixRow>,
    /// The slow mock-llm's answer delay in the cached prompt-mix scenario.
    pub mix_latency_ms: u64,
    /// Idle keep-alive client connections, per system.
    pub idle: Vec<(&'static str, crate::load::idle::IdleResult)>,
}

impl Report {
    fn closed_rps(&self, scenario: &str, threads: usize, system: &str) -> Option<f64> {
        self.closed
            .iter()
            .find(|r| {
                r.scenario == scenario
                    && r.system == system
                    && (r.threads == threads || system == "direct")
            })
            .map(|r| r.rps)
    }

    fn open_for(&self, pct: u32, system: &str) -> Option<&OpenLoopResult> {
        self.open
            .iter()
            .find(|r| r.load_pct == pct && r.system == system)
            .map(|r| &r.result)
    }

    /// The report as Markdown.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# sluice load benchmark\n\nMachine: {}. Mode: {}. wrk (1 thread, 32 connections) and the upstream (nginx `return 200` with a fixed completion; mock-llm for streaming) share CPU 1; the proxy under test runs on CPU 0 (1 thread) or CPUs 0-1 (2 threads). Each figure is the median of the rounds; systems alternate within a round.\n", self.machine, if self.quick { "quick (BENCH_QUICK=1)" } else { "full" });
        let _ = writeln!(s, "## Targets\n");
        let pass = |ok: bool| if ok { "met" } else { "NOT met" };
        for threads in [1, 2] {
            if let (Some(sl), Some(ng)) = (
                self.closed_rps("GET passthrough", threads, "sluice"),
                self.closed_rps("GET passthrough", threads, "nginx"),
            ) {
                let _ = writeln!(
                    s,
                    "- passthrough, {threads} thread(s): sluice {:.2}× nginx (target ≥ 1.0: {})",
                    sl / ng,
                    pass(sl >= ng)
                );
            }
        }
        if let (Some(body), Some(pass_rps)) = (
            self.closed_rps("POST 1KB", 1, "sluice"),
            self.closed_rps("GET passthrough", 1, "sluice"),
        ) {
            let _ = writeln!(
                s,
                "- body-reading route, 1 KB prompt: {:.2}× passthrough (target ≥ 0.9: {})",
                body / pass_rps,
                pass(body >= 0.9 * pass_rps)
            );
        }
        if let (Some(sl), Some(d)) = (self.open_for(50, "sluice"), self.open_for(50, "direct")) {
            let (a50, a99) = (sl.p50_ms - d.p50_ms, sl.p99_ms - d.p99_ms);
            let _ = writeln!(s, "- added latency at 50% load: p50 {a50:+.3} ms (target ≤ 0.10: {}), p99 {a99:+.3} ms (target ≤ 0.30: {})", pass(a50 <= 0.10), pass(a99 <= 0.30));
        }
        if let (Some(sl), Some(ng)) = (
            self.closed_rps("cache hit", 1, "sluice"),
            self.closed_rps("cache hit", 1, "nginx"),
        ) {
            let _ = writeln!(
                s,
                "- cache hit, 1 KB prompt: sluice {:.2}× nginx proxying the same POST (target ≥ 2.0: {})",
                sl / ng,
                pass(sl >= 2.0 * ng)
            );
        }
        if let (Some(limited), Some(plain)) = (
            self.closed_rps("POST 1KB + limits", 1, "sluice"),
            self.closed_rps("POST 1KB", 1, "sluice"),
        ) {
            let _ = writeln!(
                s,
                "- a request limit and a token budget on every request: {:.2}× the same route without limits",
                limited / plain
            );
        }
        let _ = writeln!(
            s,
            "- idle RSS: {:.1} MiB (target ≤ 40: {})\n",
            self.idle_rss_mib,
            pass(self.idle_rss_mib <= 40.0)
        );

        let _ = writeln!(s, "## Closed loop (wrk)\n\n| scenario | threads | system | req/s | × direct | × nginx | p50 ms | p99 ms | errors | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.closed {
            let ratio = |base: Option<f64>| base.map_or("".into(), |b| format!("{:.2}", r.rps / b));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {} | {:.3} | {:.3} | {} | {} |",
                r.scenario,
                r.threads,
                r.system,
                r.rps,
                ratio(self.closed_rps(r.scenario, r.threads, "direct")),
                ratio(self.closed_rps(r.scenario, r.threads, "nginx")),
                r.p50_ms,
                r.p99_ms,
                r.errors,
                r.rss_mib.map_or("".into(), |m| format!("{m:.1}"))
            );
        }
        let _ = writeln!(s, "\n## Open loop (fixed rate, latency from the scheduled send time), GET, 1 thread\n\n| load | rate/s | system | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | errors |\n|---|---|---|---|---|---|---|---|---|");
        for r in &self.open {
            let d = self.open_for(r.load_pct, "direct");
            let added = |f: fn(&OpenLoopResult) -> f64| {
                d.map_or("".into(), |d| format!("{:+.3}", f(&r.result) - f(d)))
            };
            let _ = writeln!(
                s,
                "| {}% | {:.0} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
                r.load_pct,
                r.rate,
                r.system,
                r.result.p50_ms,
                r.result.p99_ms,
                r.result.p999_ms,
                added(|x| x.p50_ms),
                added(|x| x.p99_ms),
                r.result.errors
            );
        }
        if !self.ttfb.is_empty() {
            let _ = writeln!(s, "\n## Streaming: time to first token (SSE, 16 tokens 2 ms apart, open loop)\n\n| system | p50 ms | p99 ms | added p50 | added p99 |\n|---|---|---|---|---|");
            let direct = self
                .ttfb
                .iter()
                .find(|(n, _)| *n == "direct")
                .map(|(_, r)| *r);
            for (name, r) in &self.ttfb {
                let (a50, a99) = direct.map_or((String::new(), String::new()), |d| {
                    (
                        format!("{:+.3}", r.p50_ms - d.p50_ms),
                        format!("{:+.3}", r.p99_ms - d.p99_ms),
                    )
                });
                let _ = writeln!(
                    s,
                    "| {name} | {:.3} | {:.3} | {a50} | {a99} |",
                    r.p50_ms, r.p99_ms
                );
            }
        }
        if !self.idle.is_empty() {
            let _ = writeln!(s, "\n## Idle keep-alive client connections (one GET each, then idle)\n\n| system | connections | KiB per connection (RSS growth) | still served after |\n|---|---|---|---|");
            for (system, r) in &self.idle {
                let _ = writeln!(
                    s,
                    "| {system} | {} | {:.1} | {} |",
                    r.connections, r.kib_per_connection, r.served_after
                );
            }
        }
        if let Some((share, r)) = &self.mix {
            let _ = writeln!(
                s,
                "\n## Prompt mix through sluice (Zipf repeats, 30% streaming, 200 B-16 KB prompts, open loop)\n\n{} requests at {:.0}/s: p50 {:.3} ms, p99 {:.3} ms, {} errors. Repeat share (the most a response cache could hit): {:.1}%.",
                r.sent, r.achieved_rps, r.p50_ms, r.p99_ms, r.errors, share * 100.0
            );
        }
        if !self.cache_mix.is_empty() {
            let _ = writeln!(
                s,
                "\n## Prompt mix + cache (the mix above; mock-llm answers after {} ms; cold cache, `scope: none`, open loop)\n\n| system | requests | rate/s | p50 ms | p99 ms | errors | hit rate | repeat share | hits | coalesced | misses | bypass | upstream s saved |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|",
                self.mix_latency_ms
            );
            for r in &self.cache_mix {
                let cached = !r.requests.is_empty();
                let n = |v: f64| {
                    if cached {
                        format!("{v:.0}")
                    } else {
                        String::new()
                    }
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {:.1}% | {} | {} | {} | {} | {} |",
                    r.system,
                    r.result.sent,
                    r.result.achieved_rps,
                    r.result.p50_ms,
                    r.result.p99_ms,
                    r.result.errors,
                    if cached { format!("{:.1}%", r.hit_rate() * 100.0) } else { String::new() },
                    r.repeat_share * 100.0,
                    n(r.count("hit")),
                    n(r.count("coalesced")),
                    n(r.count("miss")),
                    n(r.count("bypass")),
                    if cached { format!("{:.1}", r.saved_seconds) } else { String::new() },
                );
            }
        }
        s
    }

    /// Draws throughput and open-loop p99 per system into an SVG.
    pub fn chart(&self, path: &Path) -> Result<(), String> {
        register_font()?;
        let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(560);
        let bars: Vec<&ClosedRow> = self
            .closed
            .iter()
            .filter(|r| r.threads == 1 || r.system == "direct")
            .collect();
        let max_rps = bars.iter().map(|r| r.rps).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&left)
            .caption("Closed loop req/s (1 thread)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(90)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..bars.len() as f64, 0f64..max_rps)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len())
            .x_label_formatter(&|x| {
                bars.get(*x as usize).map_or(String::new(), |r| {
                    format!("{} {}", r.system, short(r.scenario))
                })
            })
            .x_label_style(
                ("sans-serif", 10)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            )
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, r)| {
                let color = system_color(r.system);
                Rectangle::new(
                    [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, r.rps)],
                    color.filled(),
                )
            }))
            .map_err(|e| e.to_string())?;

        let pcts: Vec<u32> = self
            .open
            .iter()
            .filter(|r| r.system == "direct")
            .map(|r| r.load_pct)
            .collect();
        let max_p99 = self
            .open
            .iter()
            .map(|r| r.result.p99_ms)
            .fold(0.1, f64::max)
            * 1.2;
        let mut lat = ChartBuilder::on(&right)
            .caption("Open loop p99 latency (ms) vs load", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u32..100u32, 0f64..max_p99)
            .map_err(|e| e.to_string())?;
        lat.configure_mesh()
            .x_desc("% of nginx capacity")
            .draw()
            .map_err(|e| e.to_string())?;
        for system in ["direct", "nginx", "sluice"] {
            let points: Vec<(u32, f64)> = pcts
                .iter()
                .filter_map(|p| self.open_for(*p, system).map(|r| (*p, r.p99_ms)))
                .collect();
            let color = system_color(system);
            lat.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(system)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            lat.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        lat.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

fn short(scenario: &str) -> &str {
    match scenario {
        "GET passthrough" => "GET",
        "POST 1KB" => "1KB",
        "POST 256KB" => "256KB",
        "cache hit" => "hit",
        "POST 1KB + limits" => "1KB+lim",
        other => other,
    }
}

fn system_color(system: &str) -> RGBColor {
    match system {
        "direct" => RGBColor(120, 120, 120),
        "nginx" => RGBColor(0, 150, 57),
        _ => RGBColor(33, 102, 172),
    }
}

/// plotters' ab_glyph backend needs a font registered by hand; DejaVu ships with Debian.
fn register_font() -> Result<(), String> {
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, leaked)
        .map_err(|_| format!("{FONT}: not a usable font"))
}
