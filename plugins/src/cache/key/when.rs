//! `when:` in a route's cache policy: which requests may be cached at all.

use serde_json::{Map, Value};

/// OpenAI's sampling temperature when a request sets none.
const DEFAULT_TEMPERATURE: f64 = 1.0;

/// When a route caches at all (`when:` in the route's cache policy). Default: always.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheCondition {
    /// Cache only requests whose `temperature` (1.0 when absent) is at most this.
    pub max_temperature: Option<f64>,
    /// Cache requests that set a `seed`.
    pub seed: bool,
}

impl CacheCondition {
    /// Whether a request with this body may be served from and stored in the cache.
    #[must_use]
    pub fn admits(&self, body: &Map<String, Value>) -> bool {
        if self.max_temperature.is_none() && !self.seed {
            return true;
        }
        let cool = self.max_temperature.is_some_and(|max| {
            // A temperature that is not a number is not admitted: the upstream will reject it.
            match body.get("temperature") {
                None | Some(Value::Null) => DEFAULT_TEMPERATURE <= max,
                Some(t) => t.as_f64().is_some_and(|t| t <= max),
            }
        });
        let seeded = self.seed && body.get("seed").is_some_and(|s| !s.is_null());
        cool || seeded
    }
}
