//! The client side of a connection, before the proxy sees a request: reads each HTTP/1 request
//! head within `server.limits` and hands it to Pingora's proxy, which parses it without another
//! read.
//!
//! Pingora reads request heads itself, before any proxy hook, bounding only each read (60 s)
//! and the head's size (1 MiB), and an idle keep-alive connection waits forever. So
//! [`Listener`] wraps the proxy app: per request on a connection it waits for the first bytes
//! (`keepalive_timeout`; a new connection: `header_timeout` from accept), reads the rest of the
//! head within `header_timeout` while checking size, target length and header count on the
//! bytes as they arrive, and answers 408/414/431 itself. A head that passes goes to the proxy
//! as the session's pipelined prefix (the buffer Pingora would have allocated), with the body
//! read timeout, the send timeout and the requests left on the connection set on the session.
//!
//! Pipelining (RFC 9112 §9.3.2) is on: whatever a client sent past the end of a request (the
//! next requests, whole or in part) comes back from Pingora with the reused stream and is the
//! start of the next head, checked against the same limits, so requests sent back to back are
//! answered one after the other, in order.
//!
//! HTTP/2 (ALPN h2, or h2c when the proxy enables it) and custom protocols are handed to the
//! proxy's own connection loop unchanged.

use crate::config::server_limits::ServerLimits;
use crate::proxy::ActiveRequests;
use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use http::StatusCode;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use sluice_plugins::openai_error::GatewayError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long an idle kept-alive connection may still send a request once shutdown starts.
const LAST_CALL: Duration = Duration::from_secs(1);

/// What Pingora allocates for a request head; most heads fit, larger ones grow it.
const HEAD_BUF: usize = 4096;

/// After a refusal, how long and how much of what the client still sends is read and dropped,
/// so it sees the answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Serves HTTP/1 connections for the proxy app `A`, enforcing [`ServerLimits`] on each
/// request head.
pub struct Listener<A> {
    inner: Arc<A>,
    limits: ServerLimits,
    /// HTTP/1 connections open now: a drain waits for them to be closed by us.
    connections: Arc<ActiveRequests>,
}

impl<A> Listener<A> {
    #[must_use]
    pub fn new(inner: A, limits: ServerLimits, connections: Arc<ActiveRequests>) -> Self {
        Listener {
            inner: Arc::new(inner),
            limits,
            connections,
        }
    }
}

#[async_trait]
impl<A> ServerApp for Listener<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if !self.reads_http1(&stream) {
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        let _open = self.connections.enter();
        let limits = &self.limits;
        let mut next = Next::Fresh(Instant::now() + limits.header_timeout);
        let mut served: u32 = 0;
        let mut user_context = None;
        loop {
            let head = match read_head(&mut stream, limits, next, shutdown).await {
                Ok(head) => head,
                Err(Stop::Close) => return None,
                Err(Stop::Refuse(refusal)) => {
                    refuse(stream, refusal, limits).await;
                    return None;
                }
            };
            served = served.saturating_add(1);
            let mut session = ServerSession::new_http1(stream);
            session.set_pipelined_prefix(head);
            session.set_read_timeout(Some(limits.body_idle_timeout));
            session.set_write_timeout(Some(limits.send_timeout));
            // Bounds Pingora's own reads should it want more of the head than was scanned.
            session.set_keepalive(Some(limits.header_timeout.as_secs().max(1)));
            let reuses = if limits.keepalive_timeout.is_zero() {
                0
            } else {
                limits.keepalive_requests.saturating_sub(served)
            };
            session.set_keepalive_reuses_remaining(Some(reuses));
            session.set_connection_user_context(user_context.take());
            session.set_pipelining_enabled(true);
            let reused = self.inner.process_new_http(session, shutdown).await?;
            let (reused, settings) = reused.consume();
            let mut pipelined = None;
            if let Some(mut settings) = settings {
                user_context = settings.take_user_context();
                pipelined = settings.take_pipelined_prefix();
            }
            stream = reused;
            next = match pipelined.filter(|bytes| !bytes.is_empty()) {
                Some(bytes) => Next::Pipelined(bytes),
                None => Next::Idle(limits.keepalive_timeout),
            };
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

impl<A: HttpServerApp> Listener<A> {
    /// Whether this connection speaks HTTP/1 (h2 and custom protocols keep Pingora's loop).
    fn reads_http1(&self, stream: &Stream) -> bool {
        match stream.selected_alpn_proto() {
            Some(ALPN::H2 | ALPN::Custom(_)) => false,
            _ => {
                let h2c = self.inner.server_options().is_some_and(|o| o.h2c);
                let plain = stream.get_ssl_digest().is_none();
                !(plain && h2c)
            }
        }
    }
}

// === reading a head ===

/// Where the next request's head stands before it is read.
#[derive(Debug)]
enum Next {
    /// A new connection: the whole head by this instant.
    Fresh(Instant),
    /// A kept-alive connection: the first bytes within this long, the rest within
    /// `header_timeout` of them.
    Idle(Duration),
    /// Its first bytes came with the previous request: the rest within `header_timeout`.
    Pipelined(BytesMut),
}

/// Why no head is handed on.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The client closed, failed, sent nothing in time, or the server is shutting down.
    Close,
    Refuse(Refusal),
}

/// A head outside the limits: answered, then the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Timeout,
    UriTooLong,
    HeadTooLarge,
    TooManyHeaders,
}

/// Reads one request head (and whatever arrived with it) within the limits.
async fn read_head(
    stream: &mut Stream,
    limits: &ServerLimits,
    next: Next,
    shutdown: &ShutdownWatch,
) -> Result<BytesMut, Stop> {
    let (buf, deadline) = match next {
        Next::Fresh(deadline) => {
            let wait = deadline.saturating_duration_since(Instant::now());
            (first_bytes(stream, wait, shutdown).await?, deadline)
        }
        Next::Pipelined(bytes) => (bytes, Instant::now() + limits.header_timeout),
        Next::Idle(idle) => {
            if idle.is_zero() {
                return Err(Stop::Close);
            }
            let buf = first_bytes(stream, idle, shutdown).await?;
            (buf, Instant::now() + limits.header_timeout)
        }
    };
    let mut buf = buf;
    let mut scan = HeadScan::default();
    loop {
        if !buf.is_empty() {
            match scan.advance(&buf, limits) {
                Scanned::Complete => return Ok(buf),
                Scanned::Partial => {}
                Scanned::Refused(r) => return Err(Stop::Refuse(r)),
            }
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(timed_out(&buf));
        };
        if buf.len() == buf.capacity() {
            // Double, never far past the limit that stops the read.
            buf.reserve(buf.len().min(limits.max_header_bytes));
        }
        match pingora::time::timeout(left, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(Stop::Close),
            Err(_) => return Err(timed_out(&buf)),
        }
    }
}

/// Waits up to `wait` for a connection's next bytes; closes it silently when none come. Once
/// shutdown starts, a client may already be sending a request on this connection: it gets a
/// last call (answered with `connection: close`) instead of a reset under its feet, and a
/// connection that stays silent is closed then, so a drain does not wait out its timeout.
async fn first_bytes(
    stream: &mut Stream,
    wait: Duration,
    shutdown: &ShutdownWatch,
) -> Result<BytesMut, Stop> {
    let last_call = wait.min(LAST_CALL);
    let wait = if *shutdown.borrow() { last_call } else { wait };
    let mut watch = shutdown.clone();
    let first = tokio::select! {
        biased;
        read = pingora::time::timeout(wait, read_when_readable(stream)) => read,
        _ = watch.changed() => pingora::time::timeout(last_call, read_when_readable(stream)).await,
    };
    match first {
        Ok(Ok(buf)) if !buf.is_empty() => Ok(buf),
        _ => Err(Stop::Close),
    }
}

/// The first bytes, into a buffer allocated only once they are there: an idle keep-alive
/// connection holds none. Streams that cannot wait without reading (TLS) read at once.
async fn read_when_readable(stream: &mut Stream) -> std::io::Result<BytesMut> {
    if let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() {
        l4.readable().await?;
    }
    let mut buf = BytesMut::with_capacity(HEAD_BUF);
    stream.read_buf(&mut buf).await?;
    Ok(buf)
}

/// Out of time: a connection that sent nothing is closed silently (it may be a client's
/// pre-opened spare), one that sent part of a head is told why.
fn timed_out(buf: &[u8]) -> Stop {
    if buf.is_empty() {
        Stop::Close
    } else {
        Stop::Refuse(Refusal::Timeout)
    }
}

/// What a scan of the bytes so far found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    Complete,
    Partial,
    Refused(Refusal),
}

/// An incremental scan of a request head: each byte is looked at once, however the head is
/// split across reads. Lines end in LF or CRLF and leading empty lines are skipped, as in
/// Pingora's parser (httparse).
#[derive(Debug, Default)]
struct HeadScan {
    /// The first byte not scanned yet.
    pos: usize,
    /// Where the current line starts.
    line_start: usize,
    /// Whether the request line is complete.
    request_line: bool,
    headers: usize,
}

/// Scans `bytes` as if they arrived in pieces ending at each of `cuts` (then the rest), as
/// the listener does read by read. Public for the fuzz targets, which check that any split
/// decides what the whole does.
#[must_use]
pub fn scan_arriving(bytes: &[u8], cuts: &[usize], limits: &ServerLimits) -> Scanned {
    let mut ends: Vec<usize> = cuts
        .iter()
        .map(|&c| c.min(bytes.len()))
        .filter(|&c| c > 0)
        .collect();
    ends.sort_unstable();
    ends.push(bytes.len());
    let mut scan = HeadScan::default();
    let mut result = Scanned::Partial;
    for end in ends {
        result = scan.advance(&bytes[..end], limits);
        if result != Scanned::Partial {
            break;
        }
    }
    result
}

impl HeadScan {
    fn advance(&mut self, buf: &[u8], limits: &ServerLimits) -> Scanned {
        while let Some(lf) = buf[self.pos..].iter().position(|&b| b == b'\n') {
            let end = self.pos + lf;
            let line = &buf[self.line_start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.pos = end + 1;
            if !self.request_line {
                if !line.is_empty() {
                    if target_len(line) > limits.max_uri_bytes {
                        return Scanned::Refused(Refusal::UriTooLong);
                    }
                    self.request_line = true;
                }
            } else if line.is_empty() {
                return if self.pos > limits.max_header_bytes {
                    Scanned::Refused(Refusal::HeadTooLarge)
                } else {
                    Scanned::Complete
                };
            } else {
                self.headers += 1;
                if self.headers > limits.max_headers {
                    return Scanned::Refused(Refusal::TooManyHeaders);
                }
            }
            self.line_start = self.pos;
        }
        self.pos = buf.len();
        // A read may end between the line's CR and LF: that CR is not part of the target.
        let partial = &buf[self.line_start..];
        let partial = partial.strip_suffix(b"\r").unwrap_or(partial);
        if !self.request_line && target_len(partial) > limits.max_uri_bytes {
            return Scanned::Refused(Refusal::UriTooLong);
        }
        if buf.len() > limits.max_header_bytes {
            return Scanned::Refused(Refusal::HeadTooLarge);
        }
        Scanned::Partial
    }
}

/// The length of the request target in a (possibly partial) request line
/// `METHOD SP target SP version`.
fn target_len(line: &[u8]) -> usize {
    let Some(start) = line.iter().position(|&b| b == b' ') else {
        return 0;
    };
    let target = &line[start + 1..];
    target
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(target.len())
}

// === answering a refusal ===

impl Refusal {
    fn error(self, limits: &ServerLimits) -> GatewayError {
        let kind = "invalid_request_error";
        match self {
            Refusal::Timeout => GatewayError::new(
                408,
                kind,
                "request_timeout",
                format!(
                    "the request head did not arrive within {} ms",
                    limits.header_timeout.as_millis()
                ),
            ),
            Refusal::UriTooLong => GatewayError::new(
                414,
                kind,
                "uri_too_long",
                format!(
                    "the request target exceeds the limit of {} bytes",
                    limits.max_uri_bytes
                ),
            ),
            Refusal::HeadTooLarge => GatewayError::new(
                431,
                kind,
                "headers_too_large",
                format!(
                    "the request line and headers exceed the limit of {} bytes",
                    limits.max_header_bytes
                ),
            ),
            Refusal::TooManyHeaders => GatewayError::new(
                431,
                kind,
                "too_many_headers",
                format!(
                    "the request has more than {} header fields",
                    limits.max_headers
                ),
            ),
        }
    }
}

/// The whole HTTP/1.1 answer to a refusal: an OpenAI-shaped JSON error, `connection: close`.
fn refusal_response(err: &GatewayError) -> BytesMut {
    let body = err.body();
    let reason = StatusCode::from_u16(err.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(format!("HTTP/1.1 {} {reason}\r\n", err.status).as_bytes());
    out.put_slice(b"content-type: application/json\r\n");
    out.put_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    out.put_slice(b"connection: close\r\ndate: ");
    out.put_slice(get_cached_date().as_bytes());
    out.put_slice(b"\r\n\r\n");
    out.put_slice(&body);
    out
}

/// Writes the refusal, closes the write side, and reads what the client still sends (bounded)
/// before closing: closing with unread bytes would reset the connection and lose the answer.
async fn refuse(mut stream: Stream, refusal: Refusal, limits: &ServerLimits) {
    let err = refusal.error(limits);
    tracing::debug!(
        status = err.status,
        code = err.code,
        "refused a request head"
    );
    let answer = refusal_response(&err);
    let linger = async {
        if stream.write_all(&answer).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        let _ = AsyncWriteExt::shutdown(&mut stream).await;
        let mut sink = BytesMut::with_capacity(HEAD_BUF);
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            sink.clear();
            match stream.read_buf(&mut sink).await {
                Ok(n) if n > 0 => discarded += n,
                _ => break,
            }
        }
    };
    let _ = pingora::time::timeout(LINGER_TIME, linger).await;
}

#[cfg(test)]
mod tests;
