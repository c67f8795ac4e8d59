//! What a finished request was, as one record: the access log and the metrics both read it,
//! so neither learns how the proxy is built and logging records nothing as a side effect.

use crate::config::policy::Route;
use crate::config::Policy;
use std::time::Duration;

/// One request, from the first byte in to the last byte out.
pub struct Finished<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a Route>,
    pub endpoint: Option<&'a str>,
    /// The status the client got, if a response head was sent.
    pub status: Option<u16>,
    /// Whether that status came from an upstream (vs. made by the gateway or a cache hit).
    pub served: bool,
    pub duration: Duration,
    pub ttfb: Option<Duration>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// `hit`, `miss`, `bypass`, `coalesced`, or empty when the route does not cache.
    pub cache: &'static str,
    pub error: Option<&'a str>,
}

/// Records a finished request in the route's (or the unrouted) metrics.
pub fn record_metrics(f: &Finished<'_>, policy: &Policy) {
    match (f.route, f.status) {
        (Some(r), status) => {
            r.metrics.duration.observe(f.duration.as_secs_f64());
            if let Some(status) = status {
                if f.served {
                    r.metrics.served.inc(status);
                } else {
                    r.metrics.local.inc(status);
                }
            }
        }
        (None, Some(status)) => policy.unrouted.inc(status),
        (None, None) => {}
    }
}
