//! `GET /admin/stats`: the status page's figures, from samples of sluice's own metrics taken
//! when the page asks (nothing is sampled while nobody looks).

use crate::reload::PolicyStore;
use sluice_plugins::ab::exposition;
use sluice_plugins::live_stats::{History, LiveStats};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The first request waits this long for a second sample, so its rates cover a real window.
const FIRST_WINDOW: Duration = Duration::from_secs(1);

pub struct Sampler {
    origin: Instant,
    history: Mutex<History>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            origin: Instant::now(),
            history: Mutex::default(),
        }
    }
}

impl Sampler {
    /// The figures now: a new sample when the last is old enough; the very first request
    /// waits one window for a second sample.
    pub async fn stats(&self, store: &PolicyStore) -> LiveStats {
        let first = self.lock().is_empty();
        let stats = self.sample(store);
        if first {
            tokio::time::sleep(FIRST_WINDOW).await;
            return self.sample(store).unwrap_or_else(|| self.lock().latest());
        }
        stats.unwrap_or_else(|| self.lock().latest())
    }

    /// Adds a sample unless the last one is too recent (several pages polling).
    fn sample(&self, store: &PolicyStore) -> Option<LiveStats> {
        let now_s = self.origin.elapsed().as_secs_f64();
        if !self.lock().wants_sample(now_s) {
            return None;
        }
        crate::observe::refresh_gauges(&store.load(), Instant::now());
        let text = store.shared().metrics.encode();
        // sluice's own exposition always parses; an empty sample is the safe answer if not.
        let scrape = exposition::parse(&text).unwrap_or_default();
        Some(self.lock().add(now_s, scrape))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
