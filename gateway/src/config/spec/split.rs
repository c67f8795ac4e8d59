//! The YAML of a route's `split:` (A/B variants) and of the top-level `pricing:`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// `split:` on a route: variants with weights, how a user sticks to one, and overrides.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Part of every assignment hash: a new salt starts a new experiment (everyone reshuffled).
    #[serde(default)]
    pub salt: String,
    /// `api_key`, `header:NAME`, `cookie:NAME` or `body:user`; absent: a draw per request.
    pub sticky: Option<String>,
    /// Honour `x-sluice-variant: NAME` from the client.
    #[serde(default)]
    pub allow_override: bool,
    pub variants: Vec<VariantSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    pub weight: u32,
    /// Where this variant's requests go; default: the route's upstream.
    pub upstream: Option<String>,
    /// Body fields replaced before the cache key and the upstream see the body.
    #[serde(default)]
    pub set: Map<String, Value>,
    /// Request headers added for the upstream.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One model's price in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    pub input: f64,
    pub output: f64,
}
