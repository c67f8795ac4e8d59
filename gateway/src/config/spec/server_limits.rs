//! The YAML of `server.limits`; what each bound is for is in [`crate::config::server_limits`].

use crate::config::units::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The YAML of `server.limits`; every field has a default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLimitsSpec {
    /// From the first byte of a request head to its end; later → 408 and close.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// Request line plus headers; more → 431 and close.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// The request target (path and query); longer → 414 and close.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: ByteSize,
    /// Header lines in one request; more → 431 and close.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Longest wait for the next piece of a request body; longer → the connection is dropped.
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: HumanDuration,
    /// Longest wait for a client to take the next piece of a response; longer → the response
    /// is aborted, its upstream connection closed.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: HumanDuration,
    /// How long an idle keep-alive connection waits for its next request (0: no keep-alive).
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: HumanDuration,
    /// Requests served on one connection; the last answer carries `connection: close`.
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Read buffer of each accepted connection (0: unbuffered).
    #[serde(default = "default_read_buffer")]
    pub read_buffer: ByteSize,
    /// Write buffer of each accepted connection (0: unbuffered).
    #[serde(default = "default_write_buffer")]
    pub write_buffer: ByteSize,
}

impl Default for ServerLimitsSpec {
    fn default() -> Self {
        ServerLimitsSpec {
            header_timeout: default_header_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_uri_bytes: default_max_uri_bytes(),
            max_headers: default_max_headers(),
            body_idle_timeout: default_body_idle_timeout(),
            send_timeout: default_send_timeout(),
            keepalive_timeout: default_keepalive_timeout(),
            keepalive_requests: default_keepalive_requests(),
            read_buffer: default_read_buffer(),
            write_buffer: default_write_buffer(),
        }
    }
}

// nginx: client_header_timeout 60s; shorter here, since a complete LLM request head is one
// small write and only a hostile or broken client needs more than a few seconds.
fn default_header_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
// nginx: large_client_header_buffers 4 8k.
fn default_max_header_bytes() -> ByteSize {
    ByteSize(32 * 1024)
}
// nginx: one large_client_header_buffers buffer (8k) holds the request line.
fn default_max_uri_bytes() -> ByteSize {
    ByteSize(8 * 1024)
}
// nginx has no count limit; 100 is Go's and Apache's order of magnitude (LimitRequestFields).
fn default_max_headers() -> usize {
    100
}
// nginx: client_body_timeout 60s (also Pingora's read timeout).
fn default_body_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
// nginx: send_timeout 60s.
fn default_send_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
// nginx: keepalive_timeout 75s.
fn default_keepalive_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(75))
}
// nginx: keepalive_requests 1000.
fn default_keepalive_requests() -> u32 {
    1000
}
// Pingora's 64 KiB was ~80% of an idle connection's memory. Heads are read into a 4 KiB buffer
// and bodies into 64 KiB ones, which bypass any smaller read buffer: measured, 0 and 4 KiB make
// the same syscalls (docs/server.md).
fn default_read_buffer() -> ByteSize {
    ByteSize(0)
}
// Pingora's default: one MSS, so small writes coalesce.
fn default_write_buffer() -> ByteSize {
    ByteSize(1460)
}
