//! Closed-loop throughput with `wrk`, and parsing its report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Requests completed in the run.
    pub requests: u64,
}

/// A wrk Lua script that POSTs the contents of `body_file`.
#[must_use]
pub fn post_script(body_file: &Path) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nlocal f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\n",
        body_file.display()
    )
}

/// Writes `body` to `<dir>/<name>` and, beside it, the wrk script that POSTs it; the script's path.
pub fn write_post_script(dir: &Path, name: &str, body: &[u8]) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    let script = dir.join(format!("{name}.lua"));
    std::fs::write(&script, post_script(&path))
        .map_err(|e| format!("{}: {e}", script.display()))?;
    Ok(script)
}

/// Runs wrk pinned to `cpus` with one thread and `connections` connections.
pub fn run(
    url: &str,
    connections: usize,
    duration: Duration,
    script: Option<&Path>,
    cpus: &str,
) -> Result<WrkResult, String> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpus, "wrk", "-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)));
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk output:\n{text}"))
}

/// Reads requests/s, the 50th/99th percentiles, error counts and requests completed from
/// wrk's report.
#[must_use]
pub fn parse(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => r.rps = v.parse().ok()?,
            (Some(n), Some("requests")) => r.requests = n.parse().unwrap_or(r.requests),
            (Some("50%"), Some(v)) => r.p50_ms = to_ms(v)?,
            (Some("99%"), Some(v)) => r.p99_ms = to_ms(v)?,
            (Some("Non-2xx"), _) => r.errors += line.rsplit(' ').next()?.parse::<u64>().ok()?,
            (Some("Socket"), Some("errors:")) => {
                r.errors += line
                    .split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (r.rps > 0.0).then_some(r)
}

fn to_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_wrk_report() {
        let out = "Running 2s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   800.00us  100.00us   2.00ms   90.00%\n  Latency Distribution\n     50%  789.00us\n     75%  850.00us\n     90%    1.01ms\n     99%    1.50ms\n  60000 requests in 2.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 5\nRequests/sec:  30000.50\nTransfer/sec:     10.00MB\n";
        let r = parse(out).unwrap();
        assert!((r.rps - 30000.5).abs() < 1e-6);
        assert!((r.p50_ms - 0.789).abs() < 1e-9);
        assert!((r.p99_ms - 1.5).abs() < 1e-9);
        assert_eq!(r.errors, 8);
        assert_eq!(r.requests, 60000);
        assert!(parse("garbage").is_none());
    }
}
