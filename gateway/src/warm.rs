//! `sluice cache warm`: pre-fills the cache by sending prompts through a running sluice, so
//! every tier (the gateway's own memory included) holds them before real traffic arrives.
//! Going through the gateway, not around it, keeps one definition of keys and entries.

use crate::config::load_file;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// What to warm and how.
pub struct WarmArgs<'a> {
    pub config: &'a Path,
    pub prompts: &'a Path,
    /// Request path for lines that do not name one.
    pub path: &'a str,
    /// Sent as `Authorization: Bearer`, so entries land in the caller's scope.
    pub api_key: Option<&'a str>,
    pub concurrency: usize,
}

/// Tally of a warm run, by the `x-sluice-cache` each prompt got.
#[derive(Debug, Default)]
pub struct WarmReport {
    pub stored: usize,
    pub already: usize,
    pub failed: usize,
}

/// One line of the prompts file: a request body, or `{"path": ..., "body": {...}}`.
fn request_of(line: &str, default_path: &str) -> Result<(String, Vec<u8>), String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match (value.get("path"), value.get("body")) {
        (Some(serde_json::Value::String(p)), Some(body)) => {
            Ok((p.clone(), body.to_string().into_bytes()))
        }
        _ => Ok((default_path.to_string(), line.as_bytes().to_vec())),
    }
}

/// Sends every prompt through the gateway named by the config's first listen address.
pub fn run(args: &WarmArgs<'_>) -> Result<WarmReport, String> {
    let loaded = load_file(args.config).map_err(|e| e.to_string())?;
    let listen = loaded
        .spec
        .server
        .listen
        .first()
        .ok_or("the config has no server.listen address")?;
    let base = format!("http://{listen}");
    let text = std::fs::read_to_string(args.prompts)
        .map_err(|e| format!("cannot read {}: {e}", args.prompts.display()))?;
    let mut requests = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let req = request_of(line, args.path)
            .map_err(|e| format!("{}:{}: {e}", args.prompts.display(), n + 1))?;
        requests.push(req);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(send_all(&base, requests, args))
}

async fn send_all(
    base: &str,
    requests: Vec<(String, Vec<u8>)>,
    args: &WarmArgs<'_>,
) -> Result<WarmReport, String> {
    let client = reqwest::Client::new();
    let bar = ProgressBar::new(requests.len() as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ({eta})") {
        bar.set_style(style);
    }
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (path, body) in requests {
        let mut req = client
            .post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = args.api_key {
            req = req.bearer_auth(key);
        }
        let permit = Arc::clone(&limit)
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tasks.spawn(async move {
            let _permit = permit;
            let resp = req.send().await.ok()?;
            let cache = resp
                .headers()
                .get("x-sluice-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let ok = resp.status().is_success();
            // Read to the end: a stream is stored only once it completes.
            resp.bytes().await.ok()?;
            ok.then_some(cache).flatten()
        });
    }
    let mut report = WarmReport::default();
    while let Some(result) = tasks.join_next().await {
        match result.ok().flatten().as_deref() {
            Some("miss") => report.stored += 1,
            Some("hit" | "coalesced") => report.already += 1,
            _ => report.failed += 1,
        }
        bar.inc(1);
        bar.set_message(format!(
            "stored {} cached {} failed {}",
            report.stored, report.already, report.failed
        ));
    }
    bar.finish();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::request_of;

    #[test]
    fn lines_are_bodies_or_path_and_body() {
        let (p, b) = request_of(r#"{"model":"m","messages":[]}"#, "/v1/chat/completions").unwrap();
        assert_eq!(p, "/v1/chat/completions");
        assert_eq!(b, br#"{"model":"m","messages":[]}"#);
        let (p, b) =
            request_of(r#"{"path":"/v1/completions","body":{"prompt":"x"}}"#, "/x").unwrap();
        assert_eq!(p, "/v1/completions");
        assert_eq!(b, br#"{"prompt":"x"}"#);
        assert!(request_of("nope", "/x").is_err());
    }
}
