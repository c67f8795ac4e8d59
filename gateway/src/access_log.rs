//! Logging: the tracing subscriber (text or JSON) and one access line per request. The line
//! carries the path without its query string and no headers, so keys never reach the log.

use crate::proxy::RequestCtx;
use pingora::proxy::Session;

/// Output format of the process's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Records metrics for a finished request and writes its access line.
pub fn record(session: &Session, ctx: &RequestCtx) {
    let f = ctx.finish();
    let req = session.req_header();
    tracing::info!(
        target: "access",
        method = %req.method,
        path = req.uri.path(),
        route = f.route.unwrap_or(""),
        upstream = f.upstream.unwrap_or(""),
        endpoint = f.endpoint.unwrap_or(""),
        status = f.status.unwrap_or(0),
        served_by = if f.served { "upstream" } else { "gateway" },
        duration_ms = f.duration.as_secs_f64() * 1000.0,
        ttfb_ms = f.ttfb.map_or(0.0, |t| t.as_secs_f64() * 1000.0),
        bytes_in = f.bytes_in.max(session.body_bytes_read()),
        bytes_out = f.bytes_out,
        cache = "",
        variant = "",
        error = f.error.unwrap_or(""),
        "request"
    );
}
