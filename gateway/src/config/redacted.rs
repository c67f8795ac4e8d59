//! The running spec as `GET /admin/config` shows it: every credential replaced.

use super::secret::{redact_url, REDACTED};
use super::spec::Spec;
use serde_json::Value;

/// The spec as JSON with every credential replaced: header values sent upstream (API keys),
/// and the userinfo of endpoint and Redis URLs. Header names stay, to show what is set.
#[must_use]
pub fn redacted_view(spec: &Spec) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(ups) = v.get_mut("upstreams").and_then(Value::as_object_mut) {
        for up in ups.values_mut() {
            redact_values(up.get_mut("set_headers"));
            let endpoints = up.get_mut("endpoints").and_then(Value::as_array_mut);
            for ep in endpoints.into_iter().flatten() {
                redact_url_at(ep.get_mut("url"));
            }
        }
    }
    if let Some(routes) = v.get_mut("routes").and_then(Value::as_array_mut) {
        for route in routes {
            let variants = route
                .pointer_mut("/split/variants")
                .and_then(Value::as_array_mut);
            for variant in variants.into_iter().flatten() {
                redact_values(variant.get_mut("headers"));
            }
        }
    }
    redact_url_at(v.pointer_mut("/redis/url"));
    if let Some(seeds) = v
        .pointer_mut("/redis/cluster")
        .and_then(Value::as_array_mut)
    {
        for seed in seeds {
            redact_url_at(Some(seed));
        }
    }
    v
}

/// Replaces every value of a `name: value` map.
fn redact_values(map: Option<&mut Value>) {
    if let Some(map) = map.and_then(Value::as_object_mut) {
        for value in map.values_mut() {
            *value = Value::String(REDACTED.into());
        }
    }
}

fn redact_url_at(url: Option<&mut Value>) {
    if let Some(url) = url {
        if let Some(text) = url.as_str() {
            *url = Value::String(redact_url(text));
        }
    }
}
