//! Sends a request to one of the route's upstream endpoints over Pingora's pooled
//! `Connector` and streams the answer back. Forwarding ourselves (instead of Pingora's
//! proxy loop) lets a body read for routing reach the upstream whole at any size, and lets
//! POSTs be retried on another endpoint with the body replayed.

use super::body::client_body_error;
use super::headers::{client_response, upstream_request};
use super::RequestCtx;
use crate::config::policy::{Route, Upstream};
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::ErrorType;
use sluice_plugins::openai_error::GatewayError;
use std::cell::OnceCell;
use std::time::Instant;
// Pingora's timer registers lazily and on a shared wheel: no per-request tokio timer wake-up.
use pingora::time::timeout;

/// The request body as the forwarder gets it.
pub enum RequestBody {
    /// No body (GET and the like).
    Empty,
    /// Read whole for routing; replayable on retry.
    Buffered(Bytes),
    /// Not read: streamed from the client to the upstream as it arrives.
    Stream,
}

/// Why forwarding stopped short.
#[derive(Debug)]
pub enum ForwardError {
    /// Nothing was sent to the client yet: answer with this error.
    Respond(GatewayError),
    /// The response was under way (or the client went away): drop the client connection.
    Aborted(String),
}

/// A failed try at one endpoint.
enum TryError {
    /// May be tried again elsewhere if the retry policy (`allowed`) says so; `stale` marks a
    /// pooled connection the upstream had closed, which is always worth one more try.
    Retry {
        error: GatewayError,
        allowed: bool,
        stale: bool,
    },
    Final(ForwardError),
}

impl TryError {
    /// The upstream failed in a way no retry helps: answer 502.
    fn failed(upstream: &str, detail: &str) -> Self {
        TryError::Final(ForwardError::Respond(GatewayError::upstream_failed(
            upstream, detail,
        )))
    }
}

/// Forwards requests over a connection pool per worker thread, so a pooled connection is
/// reused by the thread (and so the runtime) that opened it, whatever the runtime flavour.
pub struct Forwarder {
    options: ConnectorOptions,
}

thread_local! {
    static CONNECTOR: OnceCell<&'static Connector> = const { OnceCell::new() };
}

impl Forwarder {
    #[must_use]
    pub fn new(options: ConnectorOptions) -> Self {
        Forwarder { options }
    }

    /// This thread's connector, created on first use and kept for the life of the thread.
    fn connector(&self) -> &'static Connector {
        CONNECTOR.with(|c| {
            *c.get_or_init(|| Box::leak(Box::new(Connector::new(Some(self.options.clone())))))
        })
    }

    /// Tries endpoints until one answers or the retry policy gives up.
    pub async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        body: &RequestBody,
    ) -> Result<(), ForwardError> {
        let up = &route.upstream;
        let mut tried = Vec::new();
        let mut retries_left = up.retry.attempts;
        let mut stale_retry_left = true;
        let mut body_streamed = false;
        let streams_body = matches!(body, RequestBody::Stream);
        loop {
            let idx = up
                .balancer
                .pick(&tried)
                .ok_or_else(|| ForwardError::Respond(GatewayError::no_endpoint(&up.name)))?;
            // A status is retried only with a body still in hand; a streamed one is gone by then.
            let can_retry = retries_left > 0 && !streams_body;
            match self
                .try_endpoint(
                    session,
                    ctx,
                    route,
                    idx,
                    body,
                    can_retry,
                    &mut body_streamed,
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(TryError::Final(e)) => return Err(e),
                Err(TryError::Retry {
                    error,
                    allowed,
                    stale,
                }) => {
                    let replayable = !streams_body || !body_streamed;
                    if stale && stale_retry_left && replayable {
                        stale_retry_left = false;
                    } else if allowed && retries_left > 0 && replayable {
                        retries_left -= 1;
                        tried.push(idx);
                    } else {
                        return Err(ForwardError::Respond(error));
                    }
                    tracing::debug!(upstream = %up.name, endpoint = %up.endpoints[idx].url, reason = %error.message, "retrying");
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        idx: usize,
        body: &RequestBody,
        can_retry: bool,
        body_streamed: &mut bool,
    ) -> Result<(), TryError> {
        let up: &Upstream = &route.upstream;
        let endpoint = &up.endpoints[idx];
        let connector = self.connector();
        ctx.endpoint = Some(idx);
        let _inflight = up.balancer.stats(idx).map(|s| s.start());
        let connect_failed = |error| TryError::Retry {
            error,
            allowed: up.retry.on_connect,
            stale: false,
        };

        let peer = endpoint
            .peer()
            .await
            .map_err(|m| connect_failed(GatewayError::upstream_failed(&up.name, &m)))?;
        let (mut conn, reused) = connector
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
        up.connections.record(reused);
        // A reused connection the upstream already closed fails on first use: try once more.
        let broken = |what: &str, e: pingora::BError| TryError::Retry {
            error: GatewayError::upstream_failed(
                &up.name,
                &format!("{what}: {}", e.etype().as_str()),
            ),
            allowed: up.retry.on_status(502),
            stale: reused,
        };

        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let body_len = match body {
            RequestBody::Buffered(b) => Some(b.len()),
            _ => None,
        };
        let req = upstream_request(session.req_header(), up, endpoint, client_ip, body_len)
            .map_err(|e| TryError::failed(&up.name, &e.to_string()))?;
        let sent = Instant::now();
        conn.write_request_header(Box::new(req))
            .await
            .map_err(|e| broken("writing request", e))?;
        match body {
            RequestBody::Empty => conn
                .finish_request_body()
                .await
                .map_err(|e| broken("writing request", e))?,
            RequestBody::Buffered(b) => conn
                .write_request_body(b.clone(), true)
                .await
                .map_err(|e| broken("writing body", e))?,
            RequestBody::Stream => {
                *body_streamed = true;
                stream_request_body(session, &mut conn, &up.name).await?;
            }
        }

        let header = timeout(up.timeouts.first_byte, read_final_header(&mut conn)).await;
        match header {
            Err(_) => {
                return Err(TryError::Retry {
                    error: GatewayError::upstream_timeout(&up.name, "the first byte"),
                    allowed: up.retry.on_timeout,
                    stale: false,
                })
            }
            Ok(Err(e)) => return Err(broken("reading response", e)),
            Ok(Ok(())) => {}
        }
        let ttfb = sent.elapsed();
        if let Some(stats) = up.balancer.stats(idx) {
            stats.observe(ttfb, Instant::now());
        }
        route.metrics.ttfb.observe(ttfb.as_secs_f64());
        ctx.ttfb = Some(ttfb);

        let Some(upstream_resp) = conn.response_header() else {
            return Err(TryError::failed(&up.name, "no response header"));
        };
        let status = upstream_resp.status.as_u16();
        if can_retry && up.retry.on_status(status) {
            return Err(TryError::Retry {
                error: GatewayError::upstream_failed(&up.name, &format!("status {status}")),
                allowed: true,
                stale: false,
            });
        }
        let head = session.req_header().method == http::Method::HEAD;
        let resp = client_response(upstream_resp, &route.name, &endpoint.url, head)
            .map_err(|e| TryError::failed(&up.name, &e.to_string()))?;
        let aborted = |m: String| TryError::Final(ForwardError::Aborted(m));
        let client_gone =
            |e: pingora::BError| aborted(format!("client went away: {}", e.etype().as_str()));
        session
            .write_response_header(Box::new(resp), false)
            .await
            .map_err(|e| aborted(format!("writing response header: {e}")))?;
        ctx.status = Some(status);
        ctx.served = true;

        loop {
            let chunk = match timeout(up.timeouts.idle, conn.read_response_body()).await {
                Err(_) => {
                    return Err(aborted(format!(
                        "upstream {} idle for {:?} mid-response",
                        up.name, up.timeouts.idle
                    )))
                }
                Ok(Err(e)) => {
                    return Err(aborted(format!(
                        "upstream {} failed mid-response: {}",
                        up.name,
                        e.etype().as_str()
                    )))
                }
                Ok(Ok(chunk)) => chunk,
            };
            let Some(chunk) = chunk else { break };
            ctx.bytes_out += chunk.len();
            session
                .write_response_body(Some(chunk), false)
                .await
                .map_err(client_gone)?;
        }
        session
            .write_response_body(None, true)
            .await
            .map_err(client_gone)?;
        if conn.response_done() {
            connector
                .release_http_session(conn, peer.as_ref(), Some(up.idle_timeout))
                .await;
        }
        Ok(())
    }
}

/// Copies the client's body to the upstream as it arrives.
async fn stream_request_body(
    session: &mut Session,
    conn: &mut HttpSession,
    upstream: &str,
) -> Result<(), TryError> {
    super::body::continue_if_expected(session)
        .await
        .map_err(TryError::Final)?;
    loop {
        let chunk = session
            .read_request_body()
            .await
            .map_err(|e| TryError::Final(client_body_error(&e)))?;
        let end = chunk.is_none();
        let data = chunk.unwrap_or_default();
        if !data.is_empty() || end {
            conn.write_request_body(data, end).await.map_err(|e| {
                TryError::failed(upstream, &format!("writing body: {}", e.etype().as_str()))
            })?;
        }
        if end {
            return Ok(());
        }
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
