//! The Pingora adapter. Each phase is a few lines that hand a decision to an engine; the
//! request path reads top to bottom like the diagram in ARCHITECTURE.md:
//! route match → (admission, A/B, cache: later) → forward → observe.

mod body;
mod forward;
mod headers;

use crate::config::policy::Route;
use crate::config::Policy;
use crate::reload::PolicyStore;
use async_trait::async_trait;
use body::read_body;
use bytes::Bytes;
pub use forward::Forwarder;
use forward::{ForwardError, RequestBody};
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use sluice_plugins::body::RequestBody as ParsedBody;
use sluice_plugins::openai_error::GatewayError;
use sluice_plugins::router::HeadMatch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests in flight across all routes; shutdown waits for it to reach zero.
#[derive(Debug, Default)]
pub struct ActiveRequests(AtomicUsize);

impl ActiveRequests {
    #[must_use]
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

struct ActiveGuard(Arc<ActiveRequests>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state, from the first phase to `logging`.
pub struct RequestCtx {
    start: Instant,
    policy: Option<Arc<Policy>>,
    route: Option<usize>,
    /// Index of the endpoint last tried, in the route's upstream.
    endpoint: Option<usize>,
    status: Option<u16>,
    /// Whether the status came from an upstream (vs. made by the gateway).
    served: bool,
    ttfb: Option<Duration>,
    bytes_in: usize,
    bytes_out: usize,
    error: Option<String>,
    _active: ActiveGuard,
    _inflight: Option<InflightGauge>,
}

/// Keeps `sluice_inflight_requests{route}` up while the request lives.
struct InflightGauge(prometheus::IntGauge);

impl Drop for InflightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// sluice's `ProxyHttp`.
pub struct Gateway {
    store: Arc<PolicyStore>,
    forwarder: Forwarder,
    active: Arc<ActiveRequests>,
}

impl Gateway {
    #[must_use]
    pub fn new(store: Arc<PolicyStore>, forwarder: Forwarder, active: Arc<ActiveRequests>) -> Self {
        Gateway {
            store,
            forwarder,
            active,
        }
    }

    /// Route match; reads the body only when a matcher or the route's policy needs it.
    async fn match_route(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: &Policy,
    ) -> Result<(usize, RequestBody), ForwardError> {
        let no_route = |session: &Session| {
            let req = session.req_header();
            ForwardError::Respond(GatewayError::no_route(req.method.as_str(), req.uri.path()))
        };
        let req = session.req_header();
        match policy
            .router
            .select_head(&req.method, req.uri.path(), &req.headers)
        {
            HeadMatch::NoRoute => Err(no_route(session)),
            HeadMatch::Route(i) => Ok((
                i,
                if session.is_body_empty() {
                    RequestBody::Empty
                } else {
                    RequestBody::Stream
                },
            )),
            HeadMatch::NeedsBody => {
                let bytes = read_body(session, policy.max_body_bytes).await?;
                ctx.bytes_in = bytes.len();
                // No body (a GET, say) has no model; a body that is there must be JSON.
                let parsed = if bytes.is_empty() {
                    None
                } else {
                    let p = ParsedBody::parse(&bytes)
                        .map_err(|e| ForwardError::Respond(GatewayError::bad_json(&e)))?;
                    Some(p)
                };
                let model = parsed.as_ref().and_then(ParsedBody::model);
                let req = session.req_header();
                policy
                    .router
                    .select_with_model(&req.method, req.uri.path(), &req.headers, model)
                    .map(|i| (i, RequestBody::Buffered(bytes)))
                    .ok_or_else(|| no_route(session))
            }
        }
    }

    /// Marks the request as belonging to `route` for metrics and logs.
    fn enter_route(ctx: &mut RequestCtx, index: usize, route: &Route) {
        ctx.route = Some(index);
        route.metrics.inflight.inc();
        ctx._inflight = Some(InflightGauge(route.metrics.inflight.clone()));
    }

    /// Writes a gateway-made error in OpenAI's shape.
    async fn respond_error(
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: Option<&Route>,
        err: &GatewayError,
    ) {
        let json = Bytes::from(err.body());
        let mut resp = match ResponseHeader::build(err.status, Some(4)) {
            Ok(r) => r,
            Err(_) => return,
        };
        let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
        let _ = resp.insert_header(header::CONTENT_LENGTH, json.len());
        if let Some(route) = route {
            let _ = resp.insert_header(headers::X_SLUICE_ROUTE, route.name.as_str());
        }
        ctx.status = Some(err.status);
        ctx.error = Some(err.message.clone());
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Some(json), true).await;
        }
        if err.status == 413 {
            body::linger(session).await;
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        self.active.0.fetch_add(1, Ordering::AcqRel);
        RequestCtx {
            start: Instant::now(),
            policy: None,
            route: None,
            endpoint: None,
            status: None,
            served: false,
            ttfb: None,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            _active: ActiveGuard(Arc::clone(&self.active)),
            _inflight: None,
        }
    }

    /// sluice answers every request in `request_filter`, so Pingora's own upstream path is unused.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "sluice forwards in request_filter",
        )
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let policy = self.store.load();
        ctx.policy = Some(Arc::clone(&policy));
        let outcome = match self.match_route(session, ctx, &policy).await {
            Ok((index, body)) => {
                let route = &policy.routes[index];
                Self::enter_route(ctx, index, route);
                self.forwarder.forward(session, ctx, route, &body).await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(ForwardError::Respond(err)) => {
                let route = ctx.route.and_then(|i| policy.routes.get(i));
                Self::respond_error(session, ctx, route, &err).await;
                Ok(true)
            }
            Err(ForwardError::Aborted(reason)) => {
                ctx.error = Some(reason.clone());
                // An error (not Ok) makes Pingora close the client connection, so a cut-short
                // stream is not terminated as if it were complete.
                Error::e_explain(ErrorType::HTTPStatus(502), reason)
            }
        }
    }

    async fn fail_to_proxy(
        &self,
        _session: &mut Session,
        _e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        crate::access_log::record(session, ctx);
    }
}

impl RequestCtx {
    /// The route this request was matched to, if any.
    fn route(&self) -> Option<&Route> {
        Some(&self.policy.as_ref()?.routes[self.route?])
    }
}

pub(crate) mod view {
    //! Read access to a finished request's context for the access log.
    use super::RequestCtx;
    use std::time::Duration;

    pub struct Finished<'a> {
        pub route: Option<&'a str>,
        pub upstream: Option<&'a str>,
        pub endpoint: Option<&'a str>,
        pub status: Option<u16>,
        pub served: bool,
        pub duration: Duration,
        pub ttfb: Option<Duration>,
        pub bytes_in: usize,
        pub bytes_out: usize,
        pub error: Option<&'a str>,
    }

    impl RequestCtx {
        /// Records metrics for the finished request and returns what the log line needs.
        pub fn finish(&self) -> Finished<'_> {
            let duration = self.start.elapsed();
            let route = self.route();
            match (route, self.status) {
                (Some(r), Some(status)) => {
                    r.metrics.duration.observe(duration.as_secs_f64());
                    if self.served {
                        r.metrics.served.inc(status)
                    } else {
                        r.metrics.local.inc(status)
                    }
                }
                (None, Some(status)) => {
                    if let Some(p) = &self.policy {
                        p.unrouted.inc(status);
                    }
                }
                (Some(r), None) => r.metrics.duration.observe(duration.as_secs_f64()),
                (None, None) => {}
            }
            Finished {
                route: route.map(|r| r.name.as_str()),
                upstream: route.map(|r| r.upstream.name.as_str()),
                endpoint: route
                    .zip(self.endpoint)
                    .and_then(|(r, i)| r.upstream.endpoints.get(i))
                    .map(|e| e.url.as_str()),
                status: self.status,
                served: self.served,
                duration,
                ttfb: self.ttfb,
                bytes_in: self.bytes_in,
                bytes_out: self.bytes_out,
                error: self.error.as_deref(),
            }
        }
    }
}
