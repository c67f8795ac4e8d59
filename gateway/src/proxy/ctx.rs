//! Per-request state Pingora keeps between its callbacks: the policy snapshot the request runs
//! under, the record logging reads, and the guards that count it while it lives. Phases hand
//! each other nothing through it; the pipeline keeps those hand-offs on its own stack.

use super::record::Record;
use crate::config::policy::Route;
use crate::config::Policy;
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

/// Per-request state.
pub struct RequestCtx {
    pub(super) policy: Option<Arc<Policy>>,
    pub(super) record: Record,
    _active: ActiveGuard,
    inflight: Option<InflightGauge>,
}

impl RequestCtx {
    #[must_use]
    pub fn new(active: ActiveGuard) -> Self {
        RequestCtx {
            policy: None,
            record: Record::new(Instant::now()),
            _active: active,
            inflight: None,
        }
    }

    /// Marks the request as belonging to route `index` for metrics and logs.
    pub(super) fn enter_route(&mut self, index: usize, route: &Route) {
        self.record.route = Some(index);
        if let Some(lane) = route.lanes.first() {
            let inflight = &lane.metrics.inflight;
            inflight.inc();
            self.inflight = Some(InflightGauge(inflight.clone()));
        }
    }
}
