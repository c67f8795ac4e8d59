//! Per-request state, from the first phase to `logging`, and the count of requests in flight.

use super::forward::Attempt;
use super::limits::Reserved;
use super::respond::ForwardError;
use crate::config::policy::{Lane, Route};
use crate::config::Policy;
use crate::observe::Finished;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::proxy::Session;
use serde_json::{Map, Value};
use sluice_plugins::limits::gate::GatePermit;
use sluice_plugins::openai_error::GatewayError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Requests in flight across all routes; shutdown waits for it to reach zero.
#[derive(Debug, Default)]
pub struct ActiveRequests(AtomicUsize);

impl ActiveRequests {
    #[must_use]
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Counts a request in until the guard drops.
    #[must_use]
    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(Arc::clone(self))
    }
}

/// One request counted in [`ActiveRequests`].
pub struct ActiveGuard(Arc<ActiveRequests>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps `sluice_inflight_requests{route}` up while the request lives.
struct InflightGauge(prometheus::IntGauge);

impl Drop for InflightGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The request body as the phases and the forwarder get it.
#[derive(Debug, Default)]
pub enum RequestBody {
    /// No body (GET and the like).
    #[default]
    Empty,
    /// Read whole (a phase needed it); replayable on retry.
    Buffered(Bytes),
    /// Not read: streamed from the client to the upstream as it arrives.
    Stream,
}

/// Per-request state.
pub struct RequestCtx {
    pub(super) start: Instant,
    pub(super) policy: Option<Arc<Policy>>,
    pub(super) route: Option<usize>,
    /// The route's lane once the split phase ran: the A/B variant's index, 0 without a split.
    pub(super) lane: Option<usize>,
    pub(super) body: RequestBody,
    /// The body as a JSON object, parsed once for every phase that reads it.
    json: Option<Map<String, Value>>,
    /// Headers phases add to whatever answer the client gets.
    pub(super) response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Tokens reserved in the route's budgets until the response ends.
    pub(super) reserved: Option<Reserved>,
    /// sluice asked the upstream for a usage chunk the client did not ask for.
    pub(super) strip_usage: bool,
    /// The tokens a cache answer stands for (charged when a budget counts hits).
    pub(super) hit_tokens: u64,
    /// The upstream's concurrency slot, held until the response ends.
    pub(super) permit: Option<GatePermit>,
    /// What the forwarder did, if it ran.
    pub(super) attempt: Option<Attempt>,
    /// The status the client got and whether an upstream made it.
    pub(super) status: Option<u16>,
    pub(super) served: bool,
    pub(super) bytes_in: usize,
    pub(super) bytes_out: usize,
    pub(super) cache: &'static str,
    /// The recorder the forward phase attaches for a cacheable miss.
    pub(super) recording: Option<super::cache::CacheRecorder>,
    pub(super) error: Option<String>,
    _active: ActiveGuard,
    _inflight: Option<InflightGauge>,
}

impl RequestCtx {
    #[must_use]
    pub fn new(active: ActiveGuard) -> Self {
        RequestCtx {
            start: Instant::now(),
            policy: None,
            route: None,
            lane: None,
            body: RequestBody::Empty,
            json: None,
            response_headers: Vec::new(),
            reserved: None,
            strip_usage: false,
            hit_tokens: 0,
            permit: None,
            attempt: None,
            status: None,
            served: false,
            bytes_in: 0,
            bytes_out: 0,
            cache: "",
            recording: None,
            error: None,
            _active: active,
            _inflight: None,
        }
    }

    /// Marks the request as belonging to route `index` for metrics and logs.
    pub(super) fn enter_route(&mut self, index: usize, route: &Route) {
        self.route = Some(index);
        let inflight = &route.lane(0).metrics.inflight;
        inflight.inc();
        self._inflight = Some(InflightGauge(inflight.clone()));
    }

    /// The body as a JSON object (`None` without a read body); 400 when it is not one.
    pub(super) fn json(&mut self) -> Result<Option<&Map<String, Value>>, ForwardError> {
        Ok(self.json_mut()?.map(|j| &*j))
    }

    /// [`Self::json`] for a phase that rewrites the body (it writes the bytes back too).
    pub(super) fn json_mut(&mut self) -> Result<Option<&mut Map<String, Value>>, ForwardError> {
        if self.json.is_none() {
            let RequestBody::Buffered(bytes) = &self.body else {
                return Ok(None);
            };
            let parsed = serde_json::from_slice(bytes)
                .map_err(|e| ForwardError::Respond(GatewayError::bad_json(&e.to_string())))?;
            self.json = Some(parsed);
        }
        Ok(self.json.as_mut())
    }

    /// Lets `edit` change the body's JSON object and, when it says it did, writes the bytes the
    /// upstream gets back from it; `Ok(false)` without a read body.
    pub(super) fn rewrite_json(
        &mut self,
        edit: impl FnOnce(&mut Map<String, Value>) -> bool,
    ) -> Result<bool, ForwardError> {
        let Some(body) = self.json_mut()? else {
            return Ok(false);
        };
        if !edit(body) {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ForwardError::Respond(GatewayError::bad_json(&e.to_string())))?;
        self.body = RequestBody::Buffered(bytes.into());
        Ok(true)
    }

    /// The route this request was matched to, if any.
    pub(super) fn route(&self) -> Option<&Route> {
        self.policy.as_ref()?.routes.get(self.route?)
    }

    /// The lane (variant) of the matched route this request takes, once assigned.
    pub(super) fn lane(&self) -> Option<&Lane> {
        Some(self.route()?.lane(self.lane?))
    }

    /// The lane's index for the phases after the split (which always assigns one).
    pub(super) fn lane_index(&self) -> usize {
        self.lane.unwrap_or(0)
    }

    /// Takes in what the forwarder did.
    pub(super) fn record_attempt(&mut self, attempt: Attempt) {
        if let Some(status) = attempt.status {
            self.status = Some(status);
            self.served = true;
        }
        self.bytes_out += attempt.bytes_out;
        self.attempt = Some(attempt);
    }

    /// The record the access log and the metrics read.
    pub(super) fn finished<'a>(&'a self, session: &'a Session) -> Finished<'a> {
        let req = session.req_header();
        let route = self.route();
        let lane = self.lane();
        let attempt = self.attempt.as_ref();
        Finished {
            method: req.method.as_str(),
            path: req.uri.path(),
            route,
            lane,
            hop: attempt.map_or(0, |a| a.hop),
            endpoint: lane
                .zip(attempt)
                .and_then(|(l, a)| l.hop(a.hop)?.endpoints.get(a.endpoint?))
                .map(|e| e.url.as_str()),
            status: self.status,
            served: self.served,
            duration: self.start.elapsed(),
            ttfb: attempt.and_then(|a| a.ttfb),
            bytes_in: self.bytes_in.max(session.body_bytes_read()),
            bytes_out: self.bytes_out,
            cache: self.cache,
            error: self.error.as_deref(),
        }
    }
}
