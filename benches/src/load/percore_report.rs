//! The report of `loadbench percore`: every system alone on one core, its throughput, latency
//! and CPU-seconds per 1,000 requests, and the ratios that say what sluice costs next to nginx,
//! nginx's own cache and stock Pingora, and what its access lines cost.

use super::comparison::Summary;
use serde_json::{json, Value};
use std::fmt::Write;

/// The row names the ratios look up.
pub const NGINX: &str = "nginx proxy";
pub const NGINX_CACHE: &str = "nginx proxy_cache hit";
pub const PINGORA: &str = "stock Pingora";
pub const SLUICE_PASSTHROUGH: &str = "sluice passthrough";
pub const SLUICE_BODY: &str = "sluice body route";
pub const SLUICE_CACHE: &str = "sluice cache hit";

pub const GET: &str = "GET";
pub const POST_1K: &str = "POST 1 KB";

/// One system in one scenario, over all rounds.
#[derive(Debug, Clone)]
pub struct Row {
    pub system: &'static str,
    pub method: &'static str,
    /// For sluice: whether it wrote access lines (`None` for the others).
    pub access_lines: Option<bool>,
    pub summary: Summary,
    /// The median over the rounds of the system's CPU-seconds per 1,000 requests completed.
    pub cpu_s_per_1k: f64,
}

impl Row {
    fn label(&self) -> String {
        row_label(self.system, self.access_lines)
    }
}

/// A row's name in the table: the system, and for sluice whether it wrote access lines.
#[must_use]
pub fn row_label(system: &str, access_lines: Option<bool>) -> String {
    match access_lines {
        Some(true) => format!("{system}, access lines"),
        Some(false) => format!("{system}, no access lines"),
        None => system.to_string(),
    }
}

/// A ratio between two rows: best req/s and CPU per request, `a` over `b`.
#[derive(Debug, Clone)]
pub struct Ratio {
    pub what: String,
    pub rps: f64,
    pub cpu: f64,
}

/// Everything one `loadbench percore` run measured.
#[derive(Debug, Clone, Default)]
pub struct Percore {
    pub machine: String,
    pub rounds: usize,
    pub seconds: u64,
    pub rows: Vec<Row>,
}

impl Percore {
    fn find(&self, system: &str, method: &str, access: Option<bool>) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.system == system && r.method == method && r.access_lines == access)
    }

    /// Each row over nginx proxy with the same method.
    fn over_nginx(&self, row: &Row) -> Option<Ratio> {
        let n = self.find(NGINX, row.method, None)?;
        Some(ratio(format!("{} × {NGINX}", row.label()), row, n))
    }

    /// The comparisons the run is for: sluice × stock Pingora, sluice cache × nginx cache, and
    /// the access lines' cost (`rps` is 1 − with/without, `cpu` is with/without − 1).
    #[must_use]
    pub fn ratios(&self) -> Vec<Ratio> {
        let mut out = Vec::new();
        for access in [Some(true), Some(false)] {
            let pairs = [
                (SLUICE_PASSTHROUGH, GET, PINGORA, GET),
                (SLUICE_CACHE, POST_1K, NGINX_CACHE, POST_1K),
            ];
            for (a, am, b, bm) in pairs {
                if let (Some(x), Some(y)) = (self.find(a, am, access), self.find(b, bm, None)) {
                    out.push(ratio(format!("{} × {b}", x.label()), x, y));
                }
            }
        }
        for (system, method) in [
            (SLUICE_PASSTHROUGH, GET),
            (SLUICE_BODY, POST_1K),
            (SLUICE_CACHE, POST_1K),
        ] {
            if let (Some(on), Some(off)) = (
                self.find(system, method, Some(true)),
                self.find(system, method, Some(false)),
            ) {
                out.push(Ratio {
                    what: format!("access-line cost, {system}"),
                    rps: 1.0 - on.summary.best_rps / off.summary.best_rps,
                    cpu: on.cpu_s_per_1k / off.cpu_s_per_1k - 1.0,
                });
            }
        }
        out
    }

    /// The report as Markdown: how it was measured, the table, the ratios.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Per core: sluice, nginx and stock Pingora\n\nMachine: {}. Each system under test runs alone on CPU 0 (`taskset -c 0` on the process, so all its threads are there; sluice and stock Pingora with 1 worker thread, nginx with `worker_processes 1`); wrk (1 thread, 32 connections) and the upstream (nginx `return 200` with a fixed ~300-byte completion) run on CPU 1. Rounds: {} × {} s; each round measures every scenario once, in turn, so drift hits all alike. p50 and p99 are wrk's, the medians over the rounds. CPU is the utime + stime of the system's process (and nginx's worker) from `/proc/PID/stat` across each wrk run, per 1,000 requests completed, the median over the rounds. Ratios are of best req/s and of CPU per request; \"× nginx proxy\" is against nginx proxying the same method. Cache rows are checked to be hits before and after (nginx: `X-Cache-Status: HIT`; sluice: its cache counters). \"No access lines\" is sluice with `RUST_LOG=warn`, checked to have written none.\n",
            self.machine, self.rounds, self.seconds
        );
        let _ = writeln!(
            s,
            "| system | method | best req/s | median req/s | p50 ms | p99 ms | CPU-s / 1k req | req/s × nginx proxy | CPU × nginx proxy | errors |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &self.rows {
            let (x_rps, x_cpu) = self
                .over_nginx(r)
                .map_or((String::new(), String::new()), |x| {
                    (format!("{:.2}", x.rps), format!("{:.2}", x.cpu))
                });
            let m = &r.summary;
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.4} | {x_rps} | {x_cpu} | {} |",
                r.label(),
                r.method,
                m.best_rps,
                m.median_rps,
                m.p50_ms,
                m.p99_ms,
                r.cpu_s_per_1k,
                m.errors
            );
        }
        let _ = writeln!(
            s,
            "\n| comparison | best req/s | CPU per request |\n|---|---|---|"
        );
        for x in self.ratios() {
            if x.what.starts_with("access-line cost") {
                let _ = writeln!(
                    s,
                    "| {} | {:.1}% fewer | {:+.1}% |",
                    x.what,
                    100.0 * x.rps,
                    100.0 * x.cpu
                );
            } else {
                let _ = writeln!(s, "| {} | {:.2}× | {:.2}× |", x.what, x.rps, x.cpu);
            }
        }
        s
    }

    /// The rows and ratios as JSON.
    #[must_use]
    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let m = &r.summary;
                let nginx = self.over_nginx(r);
                json!({
                    "system": r.system,
                    "method": r.method,
                    "access_lines": r.access_lines,
                    "rounds": m.rounds,
                    "best_rps": m.best_rps,
                    "median_rps": m.median_rps,
                    "p50_ms": m.p50_ms,
                    "p99_ms": m.p99_ms,
                    "errors": m.errors,
                    "cpu_s_per_1k": r.cpu_s_per_1k,
                    "rps_x_nginx_proxy": nginx.as_ref().map(|x| x.rps),
                    "cpu_x_nginx_proxy": nginx.as_ref().map(|x| x.cpu),
                })
            })
            .collect();
        let ratios: Vec<Value> = self
            .ratios()
            .iter()
            .map(|x| json!({ "what": x.what, "rps": x.rps, "cpu": x.cpu }))
            .collect();
        json!({
            "machine": self.machine,
            "rounds": self.rounds,
            "seconds": self.seconds,
            "rows": rows,
            "ratios": ratios,
        })
    }
}

fn ratio(what: String, a: &Row, b: &Row) -> Ratio {
    Ratio {
        what,
        rps: a.summary.best_rps / b.summary.best_rps,
        cpu: a.cpu_s_per_1k / b.cpu_s_per_1k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::wrk::WrkResult;

    fn row(system: &'static str, method: &'static str, access: Option<bool>, rps: f64) -> Row {
        let r = WrkResult {
            rps,
            p50_ms: 1.0,
            p99_ms: 2.0,
            errors: 0,
            requests: 0,
        };
        Row {
            system,
            method,
            access_lines: access,
            summary: Summary::of(&[r]).expect("one round"),
            cpu_s_per_1k: 1000.0 / rps,
        }
    }

    #[test]
    fn ratios_pair_the_rows_they_name() {
        let p = Percore {
            machine: "test".into(),
            rounds: 1,
            seconds: 5,
            rows: vec![
                row(NGINX, GET, None, 100.0),
                row(PINGORA, GET, None, 80.0),
                row(SLUICE_PASSTHROUGH, GET, Some(true), 40.0),
                row(SLUICE_PASSTHROUGH, GET, Some(false), 56.0),
            ],
        };
        let md = p.markdown();
        assert!(
            md.contains("| sluice passthrough, access lines | GET | 40 | 40 | 1.000 | 2.000 | 25.0000 | 0.40 | 2.50 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| sluice passthrough, no access lines × stock Pingora | 0.70× | 1.43× |"),
            "{md}"
        );
        assert!(
            md.contains("| access-line cost, sluice passthrough | 28.6% fewer | +40.0% |"),
            "{md}"
        );
        assert_eq!(p.json()["rows"][1]["rps_x_nginx_proxy"], 0.8);
    }
}
