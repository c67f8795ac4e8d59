//! The report as the text `sluice report` prints by default: a table of routes, the
//! upstreams' endpoints, then the findings with what to do.

use super::{Finding, Report, RouteSummary, UpstreamSummary};
use std::fmt::Write;

impl Report {
    /// The human-readable report.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        routes(&mut out, &self.routes);
        upstreams(&mut out, &self.upstreams);
        findings(&mut out, &self.findings);
        out
    }
}

/// Seconds as "1.25 s", "36 ms" or "4.9 ms"; "-" when unknown.
fn secs(s: Option<f64>) -> String {
    let Some(s) = s else { return "-".into() };
    let ms = s * 1000.0;
    if ms >= 999.5 {
        format!("{s:.2} s")
    } else if ms >= 9.95 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn share(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{:.0}%", s * 100.0))
}

fn routes(out: &mut String, routes: &[RouteSummary]) {
    if routes.is_empty() {
        out.push_str("no routes in the metrics\n");
        return;
    }
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6} {:>8} {:>6} {:>9} {:>6}",
        "route",
        "requests",
        "req/s",
        "p50",
        "p99",
        "upstream",
        "gateway",
        "queue",
        "gw p99",
        "cache",
        "saved",
        "429"
    );
    for r in routes {
        let rps = r.rps.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
        let saved = if r.cache_lookups == 0 {
            "-".into()
        } else {
            format!("{:.1} s", r.cache_saved_s)
        };
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>6} {:>8} {:>6} {:>9} {:>6}",
            r.route,
            r.requests,
            rps,
            secs(r.p50_s),
            secs(r.p99_s),
            share(r.upstream_share),
            share(r.gateway_share),
            share(r.queue_share),
            secs(r.gateway_p99_s),
            share(r.cache_hit_rate),
            saved,
            r.rate_limited
        );
    }
}

fn upstreams(out: &mut String, upstreams: &[UpstreamSummary]) {
    for u in upstreams {
        let queue = match u.queue_wait_p99_s {
            Some(p99) => format!(" (queued {}, wait p99 {})", u.queued, secs(Some(p99))),
            None => String::new(),
        };
        let _ = writeln!(out, "\nupstream {}{queue}", u.upstream);
        for e in &u.endpoints {
            let down = if e.healthy == Some(false) {
                ", unhealthy"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {}: {} tries, {} failed, latency estimate {}, {} ejections{down}",
                e.endpoint,
                e.requests,
                e.errors,
                secs(e.ewma_s),
                e.ejections
            );
        }
    }
}

fn findings(out: &mut String, findings: &[Finding]) {
    if findings.is_empty() {
        out.push_str("\nno findings\n");
        return;
    }
    out.push_str("\nfindings\n");
    for f in findings {
        let _ = writeln!(
            out,
            "  {} {}: {}\n    what to do: {}",
            f.severity.name(),
            f.kind.name(),
            f.message,
            f.suggestion
        );
    }
}
