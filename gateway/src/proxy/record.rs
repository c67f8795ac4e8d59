//! What the access log and the metrics read about a request: phases report into it through
//! the pipeline, and `logging` turns it into one [`Finished`] record.

use super::trace::Ids;
use crate::config::keys::ClientKey;
use crate::config::Policy;
use crate::observe::{Finished, LoggedBodies, RequestUsage, TryRecord};
use pingora::proxy::Session;
use sluice_plugins::metrics::PhaseTimes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which upstream and endpoint the forwarder tried last, and how soon it answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamTry {
    /// 0 for the route's own upstream, then its fallbacks in order.
    pub hop: usize,
    pub endpoint: Option<usize>,
    pub ttfb: Option<Duration>,
}

/// The request as it will be logged.
#[derive(Debug)]
pub struct Record {
    pub start: Instant,
    /// The route's index in the policy, once routed.
    pub route: Option<usize>,
    /// The route's lane (A/B variant) index, once the split phase chose it.
    pub lane: Option<usize>,
    /// The status the client got and whether an upstream made it.
    pub status: Option<u16>,
    pub served: bool,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// The cache phase's result name; empty when the route does not cache.
    pub cache: &'static str,
    pub upstream: Option<UpstreamTry>,
    pub error: Option<String>,
    /// What the answer used, on a route that meters usage.
    pub usage: Option<RequestUsage>,
    /// Every try at an upstream, in order.
    pub tries: Vec<TryRecord>,
    /// The bodies, on a route that logs them.
    pub bodies: Option<LoggedBodies>,
    /// The request id and trace, stamped before any phase runs.
    pub ids: Option<Ids>,
    /// The gateway key the caller presented, once the auth phase found it.
    pub key: Option<Arc<ClientKey>>,
    /// What each phase of the request path took.
    pub phases: PhaseTimes,
    /// When the answer's first body bytes went to the client.
    pub first_body: Option<Instant>,
    /// The request's `model`, when a phase parsed the body (metered routes have it in `usage`).
    pub model: Option<String>,
}

impl Record {
    #[must_use]
    pub fn new(start: Instant) -> Self {
        Record {
            start,
            route: None,
            lane: None,
            status: None,
            served: false,
            bytes_in: 0,
            bytes_out: 0,
            cache: "",
            upstream: None,
            error: None,
            key: None,
            ids: None,
            usage: None,
            tries: Vec::new(),
            bodies: None,
            phases: PhaseTimes::default(),
            first_body: None,
            model: None,
        }
    }

    /// An answer the gateway or the cache wrote (no upstream made it).
    pub fn answered_locally(&mut self, status: u16, written: usize) {
        self.status = Some(status);
        self.served = false;
        self.bytes_out += written;
    }

    /// The record the access log and the metrics read, resolved against `policy`.
    #[must_use]
    pub fn finished<'a>(&'a self, policy: &'a Policy, session: &'a Session) -> Finished<'a> {
        let req = session.req_header();
        let route = self.route.and_then(|i| policy.routes.get(i));
        let lane = route.zip(self.lane).and_then(|(r, i)| r.lanes.get(i));
        let tried = self.upstream.unwrap_or_default();
        Finished {
            method: req.method.as_str(),
            path: req.uri.path(),
            route,
            lane,
            hop: tried.hop,
            endpoint: lane
                .zip(tried.endpoint)
                .and_then(|(l, e)| l.hop(tried.hop)?.endpoints.get(e))
                .map(|e| e.url.as_str()),
            status: self.status,
            served: self.served,
            duration: self.start.elapsed(),
            ttfb: tried.ttfb,
            bytes_in: self.bytes_in.max(session.body_bytes_read()),
            bytes_out: self.bytes_out,
            cache: self.cache,
            error: self.error.as_deref(),
            key: self.key.as_deref(),
            request_id: self
                .ids
                .as_ref()
                .and_then(|i| i.request_id.to_str().ok())
                .unwrap_or(""),
            trace: self.ids.as_ref().map(|i| &i.trace),
            client_request_id: self.ids.as_ref().is_some_and(|i| i.client_id),
            parent_span: self.ids.as_ref().and_then(|i| i.parent),
            usage: self.usage.as_ref(),
            start: self.start,
            tries: &self.tries,
            bodies: self.bodies.as_ref(),
            phases: &self.phases,
            first_body: self.first_body,
            model: self
                .usage
                .as_ref()
                .map(|u| u.model.as_str())
                .or(self.model.as_deref()),
        }
    }
}
