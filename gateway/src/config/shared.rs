//! [`SharedState`]: what outlives every policy generation (metric families, endpoint stats,
//! local limit buckets, admission gates), found again by name when a reload compiles.

use super::limit_buckets::LimitBuckets;
use sluice_plugins::balance::EndpointStats;
use sluice_plugins::limits::gate::ConcurrencyGate;
use sluice_plugins::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// State shared by every policy generation.
pub struct SharedState {
    pub metrics: Metrics,
    endpoint_stats: Mutex<HashMap<(String, String), Arc<EndpointStats>>>,
    /// Local limit buckets, by route and limit.
    pub limit_buckets: LimitBuckets,
    /// Admission gates, by upstream.
    gates: Mutex<HashMap<String, Arc<ConcurrencyGate>>>,
}

impl SharedState {
    #[must_use]
    pub fn new(metrics: Metrics) -> Self {
        SharedState {
            metrics,
            endpoint_stats: Mutex::new(HashMap::new()),
            limit_buckets: LimitBuckets::default(),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The upstream's gate with these limits (a reload changes them in place, so requests
    /// waiting in the queue keep their places).
    pub(super) fn gate_for(
        &self,
        upstream: &str,
        max: usize,
        queue_max: usize,
    ) -> Arc<ConcurrencyGate> {
        let mut gates = self.gates.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = gates.get(upstream) {
            gate.set_limits(max, queue_max);
            return Arc::clone(gate);
        }
        let gate = ConcurrencyGate::new(max, queue_max, Some(self.metrics.queue(upstream).depth));
        gates.insert(upstream.to_string(), Arc::clone(&gate));
        gate
    }

    pub(super) fn stats_for(&self, upstream: &str, url: &str) -> Arc<EndpointStats> {
        let Ok(mut map) = self.endpoint_stats.lock() else {
            return Arc::new(EndpointStats::new(Instant::now()));
        };
        Arc::clone(
            map.entry((upstream.to_string(), url.to_string()))
                .or_insert_with(|| Arc::new(EndpointStats::new(Instant::now()))),
        )
    }
}
