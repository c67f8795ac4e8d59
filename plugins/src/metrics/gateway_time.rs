//! Where a request's time goes inside sluice: the time the gateway itself spent (everything but
//! waiting for the upstream), per route, and the phases it spent it in.

use super::Metrics;
use prometheus::{Histogram, HistogramOpts, HistogramVec};
use std::time::Duration;

/// Finer than the request buckets: gateway time is microseconds, unless a queue holds it.
pub const GATEWAY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A phase of the request path that the gateway times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Route,
    BodyRead,
    Split,
    Limits,
    CacheLookup,
    QueueWait,
    ForwardSetup,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Route,
        Phase::BodyRead,
        Phase::Split,
        Phase::Limits,
        Phase::CacheLookup,
        Phase::QueueWait,
        Phase::ForwardSetup,
    ];

    /// The `phase` label.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::Route => "route",
            Phase::BodyRead => "body_read",
            Phase::Split => "split",
            Phase::Limits => "limits",
            Phase::CacheLookup => "cache_lookup",
            Phase::QueueWait => "queue_wait",
            Phase::ForwardSetup => "forward_setup",
        }
    }
}

/// What one request spent in each phase it went through (a phase it skipped stays `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes([Option<Duration>; 7]);

impl PhaseTimes {
    /// Adds `spent` to `phase` (a phase may run twice, e.g. limits of a route and of a key).
    pub fn add(&mut self, phase: Phase, spent: Duration) {
        let slot = &mut self.0[phase as usize];
        *slot = Some(slot.unwrap_or_default() + spent);
    }

    #[must_use]
    pub fn get(&self, phase: Phase) -> Option<Duration> {
        self.0[phase as usize]
    }
}

#[derive(Clone)]
pub(super) struct GatewayFamilies {
    total: HistogramVec,
    phases: HistogramVec,
}

impl GatewayFamilies {
    pub(super) fn new() -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(GATEWAY_BUCKETS.to_vec())
        };
        Ok(GatewayFamilies {
            total: HistogramVec::new(
                opts(
                    "sluice_gateway_seconds",
                    "Time sluice itself spent on a request: all of it but waiting for the upstream",
                ),
                &["route"],
            )?,
            phases: HistogramVec::new(
                opts(
                    "sluice_gateway_phase_seconds",
                    "Time spent in each phase of the request path, by route and phase",
                ),
                &["route", "phase"],
            )?,
        })
    }

    pub(super) fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.total.clone()), Box::new(self.phases.clone())]
    }
}

/// One route's gateway-time handles, resolved when a policy is compiled.
#[derive(Clone)]
pub struct GatewayTimeMetrics {
    total: Histogram,
    phases: [Histogram; 7],
}

impl GatewayTimeMetrics {
    /// Records one request: its gateway time and each phase it went through.
    pub fn observe(&self, gateway: Duration, phases: &PhaseTimes) {
        self.total.observe(gateway.as_secs_f64());
        for (histogram, spent) in self.phases.iter().zip(phases.0) {
            if let Some(spent) = spent {
                histogram.observe(spent.as_secs_f64());
            }
        }
    }
}

impl Metrics {
    /// The gateway-time handles of `route`.
    #[must_use]
    pub fn gateway_time(&self, route: &str) -> GatewayTimeMetrics {
        let g = &self.gateway;
        GatewayTimeMetrics {
            total: g.total.with_label_values(&[route]),
            phases: Phase::ALL.map(|p| g.phases.with_label_values(&[route, p.name()])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Phase, PhaseTimes};
    use crate::metrics::Metrics;
    use std::time::Duration;

    #[test]
    fn phases_add_up_and_skipped_ones_stay_unrecorded() {
        let mut t = PhaseTimes::default();
        t.add(Phase::Limits, Duration::from_micros(30));
        t.add(Phase::Limits, Duration::from_micros(20));
        t.add(Phase::Route, Duration::from_micros(5));
        assert_eq!(t.get(Phase::Limits), Some(Duration::from_micros(50)));
        assert_eq!(t.get(Phase::CacheLookup), None);

        let m = Metrics::new("0").unwrap();
        m.gateway_time("chat")
            .observe(Duration::from_micros(400), &t);
        let text = m.encode();
        assert!(
            text.contains(r#"sluice_gateway_seconds_count{route="chat"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sluice_gateway_phase_seconds_sum{phase="limits",route="chat"} 0.00005"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_gateway_phase_seconds_count{phase="route",route="chat"} 1"#)
        );
        assert!(text.contains(
            r#"sluice_gateway_phase_seconds_count{phase="cache_lookup",route="chat"} 0"#
        ));
    }
}
