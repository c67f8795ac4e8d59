//! Behaviour knobs: command-line defaults, overridden per request by `x-mock-*` headers.

use clap::Args;
use http::HeaderMap;
use std::time::Duration;

/// Defaults for every request.
#[derive(Args, Debug, Clone)]
pub struct Defaults {
    /// Delay before the response header (ms). Header: x-mock-latency-ms.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay between streamed tokens (ms). Header: x-mock-token-delay-ms.
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,
    /// Tokens in a completion. Header: x-mock-tokens.
    #[arg(long, default_value_t = 16)]
    pub tokens: usize,
    /// Status code to answer with (non-2xx gives an OpenAI-shaped error). Header: x-mock-status.
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// `retry-after` seconds to send with an error status. Header: x-mock-retry-after.
    #[arg(long)]
    pub retry_after: Option<u64>,
    /// Cut the connection after this many SSE chunks. Header: x-mock-abort-after.
    #[arg(long)]
    pub abort_after: Option<usize>,
    /// Never report `usage`: not in JSON answers, not as the stream's usage chunk (even when
    /// `stream_options.include_usage` asks for it). Header: x-mock-no-usage (1/true or 0/false).
    #[arg(long)]
    pub no_usage: bool,
    /// Status of `GET /health` (the rest still answers as usual), to fail active health
    /// checks of an endpoint whose API works. No header: probes send none.
    #[arg(long, default_value_t = 200)]
    pub health_status: u16,
}

/// The knobs in force for one request.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub latency: Duration,
    pub token_delay: Duration,
    pub tokens: usize,
    pub status: u16,
    pub retry_after: Option<u64>,
    pub abort_after: Option<usize>,
    pub no_usage: bool,
}

fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A yes/no header: `1`/`true` or `0`/`false` (anything else: not set).
fn flag(headers: &HeaderMap, name: &str) -> Option<bool> {
    match headers.get(name)?.to_str().ok()?.trim() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

impl Knobs {
    #[must_use]
    pub fn from_request(d: &Defaults, h: &HeaderMap) -> Self {
        Knobs {
            latency: Duration::from_millis(header(h, "x-mock-latency-ms").unwrap_or(d.latency_ms)),
            token_delay: Duration::from_millis(
                header(h, "x-mock-token-delay-ms").unwrap_or(d.token_delay_ms),
            ),
            tokens: header(h, "x-mock-tokens").unwrap_or(d.tokens),
            status: header(h, "x-mock-status").unwrap_or(d.status),
            retry_after: header(h, "x-mock-retry-after").or(d.retry_after),
            abort_after: header(h, "x-mock-abort-after").or(d.abort_after),
            no_usage: flag(h, "x-mock-no-usage").unwrap_or(d.no_usage),
        }
    }
}
