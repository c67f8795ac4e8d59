//! One try at one endpoint, in four steps: connect (pooled), send the request, await the
//! response head (first-byte timeout), relay the body into the [`Tee`] (idle timeout).

use super::Attempt;
use crate::config::policy::{Lane, Route, Upstream};
use crate::observe::TryRecord;
use crate::proxy::body::{Outgoing, StreamedBody};
use crate::proxy::headers::{
    client_response, upstream_request, UpstreamRequest, X_SLUICE_FALLBACK,
};
use crate::proxy::sink::{StreamEnd, Tee};
use crate::proxy::stop::Stop;
use crate::proxy::trace::TRACEPARENT;
use http::{HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use sluice_plugins::balance::requested_wait;
use sluice_plugins::metrics::TryFailure;
use sluice_plugins::openai_error::GatewayError;
use sluice_plugins::outlier::OutlierPolicy;
use sluice_plugins::trace_context::TraceParent;
use std::sync::Arc;
use std::time::Instant;
// Pingora's timer registers lazily and on a shared wheel: no per-request tokio timer wake-up.
use pingora::time::timeout;

/// What one try needs to know.
pub(super) struct TryRequest<'a> {
    pub route: &'a Route,
    /// The variant's lane of the route, whose handles count the try.
    pub lane: &'a Lane,
    /// Which of the lane's upstreams `up` is: 0 its own, then its fallbacks.
    pub hop: usize,
    /// The route's upstream or one of its fallbacks.
    pub up: &'a Upstream,
    pub idx: usize,
    /// Whether a retryable status may be turned into another try (instead of relayed).
    pub can_retry_status: bool,
    /// This try's span id (odd, so never 0): the parent in the `traceparent` it sends.
    pub span: u64,
    /// The request's trace, whose child this try is.
    pub trace: Option<&'a TraceParent>,
}

/// A failed try at one endpoint.
pub(super) enum TryError {
    Retry(Retryable),
    /// No other try can mend it; with the endpoint's share of the blame, if any.
    Final(Stop, Option<TryFailure>),
}

/// A failure that may be tried again elsewhere if the retry policy (`allowed`) says so.
pub(super) struct Retryable {
    pub error: GatewayError,
    pub allowed: bool,
    /// A pooled connection the upstream had closed, which is always worth one more try.
    pub stale: bool,
    /// The retry budget was already spent on it.
    pub budgeted: bool,
    /// How the endpoint failed; `None` when it is not at fault (a 429).
    pub kind: Option<TryFailure>,
}

impl TryError {
    /// The upstream failed in a way no retry helps: answer 502.
    fn failed(upstream: &str, detail: &str) -> Self {
        TryError::Final(
            GatewayError::upstream_failed(upstream, detail).into(),
            Some(TryFailure::Reset),
        )
    }

    /// The client went away (not the endpoint's fault).
    fn client_gone(why: String) -> Self {
        TryError::Final(Stop::Aborted(why), None)
    }

    fn retry(error: GatewayError, allowed: bool, kind: TryFailure) -> Retryable {
        Retryable {
            error,
            allowed,
            stale: false,
            budgeted: false,
            kind: Some(kind),
        }
    }
}

/// A connection to the endpoint, and whether it came from the pool.
struct Connected {
    conn: HttpSession,
    peer: Arc<HttpPeer>,
    reused: bool,
}

/// One try, counted in the endpoint's metrics and judged by outlier detection.
pub(super) async fn try_endpoint(
    connector: &Connector,
    session: &mut Session,
    req: &TryRequest<'_>,
    body: &mut Outgoing<'_>,
    tee: &mut Tee<'_>,
    attempt: &mut Attempt,
) -> Result<(), TryError> {
    attempt.status = None;
    let start = Instant::now();
    let result = try_once(connector, session, req, body, tee, attempt).await;
    let failure = match &result {
        Ok(()) => attempt
            .status
            .filter(|s| *s >= 500)
            .map(|_| TryFailure::Status5xx),
        Err(TryError::Retry(r)) => r.kind,
        Err(TryError::Final(_, kind)) => *kind,
    };
    attempt.tries.push(TryRecord {
        hop: req.hop,
        endpoint: req.idx,
        span: req.span,
        start,
        end: Instant::now(),
        status: attempt.status,
        failure: failure.map(TryFailure::name),
    });
    judge(req, failure);
    result
}

/// Counts one try's outcome at its endpoint; a failure may eject it.
fn judge(req: &TryRequest<'_>, failure: Option<TryFailure>) {
    let up = req.up;
    let endpoint = &up.endpoints[req.idx];
    endpoint.metrics.requests.inc();
    let Some(kind) = failure else {
        OutlierPolicy::record_success(up.balancer.all_stats(), req.idx);
        return;
    };
    endpoint.metrics.failed(kind);
    let Some(outlier) = &up.outlier else {
        // No ejection, but the streak still feeds the `healthy` gauge.
        if let Some(stats) = up.balancer.stats(req.idx) {
            stats.record_failed_try();
        }
        return;
    };
    if let Some(length) = outlier.record_failure(up.balancer.all_stats(), req.idx, Instant::now()) {
        endpoint.metrics.ejections.inc();
        tracing::warn!(upstream = %up.name, endpoint = %endpoint.url, seconds = length.as_secs_f64(), reason = kind.name(), "endpoint ejected");
    }
}

async fn try_once(
    connector: &Connector,
    session: &mut Session,
    req: &TryRequest<'_>,
    body: &mut Outgoing<'_>,
    tee: &mut Tee<'_>,
    attempt: &mut Attempt,
) -> Result<(), TryError> {
    let up: &Upstream = req.up;
    let _inflight = up.balancer.stats(req.idx).map(|s| s.start());
    let mut c = connect(connector, up, req.idx).await?;
    let sent = Instant::now();
    send(session, &mut c, req, body).await?;
    await_head(&mut c.conn, up, c.reused).await?;
    let ttfb = sent.elapsed();
    if let Some(stats) = up.balancer.stats(req.idx) {
        stats.observe(ttfb, Instant::now());
    }
    req.lane.ttfb(req.hop).observe(ttfb.as_secs_f64());
    attempt.tried.ttfb = Some(ttfb);

    let Some(upstream_resp) = c.conn.response_header() else {
        return Err(TryError::failed(&up.name, "no response header"));
    };
    let status = upstream_resp.status.as_u16();
    if matches!(status, 429 | 503) {
        let header = |name: &str| {
            upstream_resp
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
        };
        let wait = requested_wait(header("retry-after"), header("retry-after-ms"));
        if let Some((stats, wait)) = up.balancer.stats(req.idx).zip(wait) {
            stats.cool_for(wait, Instant::now());
        }
    }
    // The budget is spent here, while the answer can still be relayed if it says no.
    if req.can_retry_status && up.retry.on_status(status) && body.replayable() {
        if up.spend_retry(Instant::now()) {
            return Err(TryError::Retry(Retryable {
                budgeted: true,
                kind: (status >= 500).then_some(TryFailure::Status5xx),
                ..TryError::retry(
                    GatewayError::upstream_failed(&up.name, &format!("status {status}")),
                    true,
                    TryFailure::Status5xx,
                )
            }));
        }
        tracing::debug!(upstream = %up.name, status, "status relayed, not retried: the retry budget is exhausted");
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    let endpoint = &up.endpoints[req.idx];
    let mut resp = client_response(upstream_resp, &req.route.name, &endpoint.url, head_only)
        .map_err(|e| TryError::failed(&up.name, &e.to_string()))?;
    if req.hop > 0 {
        resp.insert_header(X_SLUICE_FALLBACK, up.name.as_str())
            .map_err(|e| TryError::failed(&up.name, &e.to_string()))?;
    }
    tee.head(session, resp)
        .await
        .map_err(TryError::client_gone)?;
    attempt.status = Some(status);
    relay(session, &mut c.conn, up, tee).await?;
    if c.conn.response_done() {
        connector
            .release_http_session(c.conn, c.peer.as_ref(), Some(up.idle_timeout))
            .await;
    }
    Ok(())
}

/// A pooled or new connection to endpoint `idx`.
async fn connect(connector: &Connector, up: &Upstream, idx: usize) -> Result<Connected, TryError> {
    let connect_failed = |error| {
        TryError::Retry(TryError::retry(
            error,
            up.retry.on_connect,
            TryFailure::Connect,
        ))
    };
    let endpoint = &up.endpoints[idx];
    let peer = endpoint
        .peer(Instant::now())
        .await
        .map_err(|m| connect_failed(GatewayError::upstream_failed(&up.name, &m)))?;
    let (conn, reused) = connector
        .get_http_session(peer.as_ref())
        .await
        .map_err(|e| {
            connect_failed(match e.etype() {
                ErrorType::ConnectTimedout => {
                    GatewayError::upstream_timeout(&up.name, "a connection")
                }
                _ => GatewayError::upstream_failed(
                    &up.name,
                    &format!("connect: {}", e.etype().as_str()),
                ),
            })
        })?;
    endpoint.metrics.connections.record(reused);
    Ok(Connected { conn, peer, reused })
}

/// Writes the request head and body.
async fn send(
    session: &mut Session,
    c: &mut Connected,
    req: &TryRequest<'_>,
    body: &mut Outgoing<'_>,
) -> Result<(), TryError> {
    let up = req.up;
    let reused = c.reused;
    // A reused connection the upstream already closed fails on first use: try once more.
    let broken = |what: &str, e: pingora::BError| {
        TryError::Retry(Retryable {
            stale: reused,
            ..TryError::retry(
                GatewayError::upstream_failed(&up.name, &format!("{what}: {}", e.etype().as_str())),
                up.retry.on_status(502),
                TryFailure::Reset,
            )
        })
    };
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let body_len = match body {
        Outgoing::Whole(b) => Some(b.len()),
        _ => None,
    };
    let to = UpstreamRequest {
        upstream: up,
        endpoint: &up.endpoints[req.idx],
        client_ip,
        body_len,
        identity: req.route.cache.is_some(),
        variant_headers: &req.lane.headers,
    };
    let mut head = upstream_request(session.req_header(), &to)
        .map_err(|e| TryError::failed(&up.name, &e.to_string()))?;
    // The endpoint's parent span is this try's, in the request's trace.
    if let Some(trace) = req.trace {
        let value = HeaderValue::from_bytes(&trace.with_span(req.span).header_bytes());
        if let Ok(value) = value {
            let _ = head.insert_header(HeaderName::from_static(TRACEPARENT), value);
        }
    }
    c.conn
        .write_request_header(Box::new(head))
        .await
        .map_err(|e| broken("writing request", e))?;
    match body {
        Outgoing::Empty => c
            .conn
            .finish_request_body()
            .await
            .map_err(|e| broken("writing request", e)),
        Outgoing::Whole(b) => c
            .conn
            .write_request_body((*b).clone(), true)
            .await
            .map_err(|e| broken("writing body", e)),
        Outgoing::Streamed(s) => stream_request_body(session, &mut c.conn, s)
            .await?
            .map_err(|e| broken("writing body", e)),
    }
}

/// Copies the client's body to the upstream (what was kept of it first): a client failure is
/// final, an upstream write error is handed back.
async fn stream_request_body(
    session: &mut Session,
    conn: &mut HttpSession,
    body: &mut StreamedBody,
) -> Result<pingora::Result<()>, TryError> {
    body.rewind();
    loop {
        let chunk = body
            .next_chunk(session)
            .await
            .map_err(|e| TryError::Final(e, None))?;
        let end = chunk.is_none();
        let data = chunk.unwrap_or_default();
        if !data.is_empty() || end {
            if let Err(e) = conn.write_request_body(data, end).await {
                return Ok(Err(e));
            }
        }
        if end {
            return Ok(Ok(()));
        }
    }
}

/// Waits for the final response head within the first-byte timeout.
async fn await_head(conn: &mut HttpSession, up: &Upstream, reused: bool) -> Result<(), TryError> {
    match timeout(up.timeouts.first_byte, read_final_header(conn)).await {
        Err(_) => Err(TryError::Retry(TryError::retry(
            GatewayError::upstream_timeout(&up.name, "the first byte"),
            up.retry.on_timeout,
            TryFailure::Timeout,
        ))),
        Ok(Err(e)) => Err(TryError::Retry(Retryable {
            stale: reused,
            ..TryError::retry(
                GatewayError::upstream_failed(
                    &up.name,
                    &format!("reading response: {}", e.etype().as_str()),
                ),
                up.retry.on_status(502),
                TryFailure::Reset,
            )
        })),
        Ok(Ok(())) => Ok(()),
    }
}

/// Reads the upstream's response header, passing over informational ones (100, 103).
async fn read_final_header(conn: &mut HttpSession) -> pingora::Result<()> {
    loop {
        conn.read_response_header().await?;
        match conn.response_header().map(|h| h.status.as_u16()) {
            Some(status) if (100..200).contains(&status) && status != 101 => continue,
            _ => return Ok(()),
        }
    }
}

/// Copies the response body into the tee, chunk by chunk, within the idle timeout.
async fn relay(
    session: &mut Session,
    conn: &mut HttpSession,
    up: &Upstream,
    tee: &mut Tee<'_>,
) -> Result<(), TryError> {
    loop {
        let failed = match timeout(up.timeouts.idle, conn.read_response_body()).await {
            Err(_) => format!(
                "upstream {} idle for {:?} mid-response",
                up.name, up.timeouts.idle
            ),
            Ok(Err(e)) => format!(
                "upstream {} failed mid-response: {}",
                up.name,
                e.etype().as_str()
            ),
            Ok(Ok(Some(chunk))) => {
                tee.chunk(session, chunk)
                    .await
                    .map_err(TryError::client_gone)?;
                continue;
            }
            Ok(Ok(None)) => {
                return tee
                    .end(session, StreamEnd::Complete)
                    .await
                    .map_err(TryError::client_gone)
            }
        };
        tee.abort(session, &failed).await;
        return Err(TryError::Final(
            Stop::Aborted(failed),
            Some(TryFailure::Aborted),
        ));
    }
}
