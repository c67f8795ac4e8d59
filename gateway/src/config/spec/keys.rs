//! The YAML of the gateway's client keys (`keys:`) and of a route's `auth:`.

use super::limits::LimitSpec;
use crate::config::units::HumanDuration;
use serde::{Deserialize, Serialize};

/// One client key, known by the sha256 of the key string: the key itself is never stored.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Shown in metrics, logs and `/admin/keys`.
    pub name: String,
    pub team: Option<String>,
    /// `sha256:` and 64 hex digits, as `sluice keys new` prints.
    pub hash: String,
    /// The routes it may use; absent: every route.
    pub routes: Option<Vec<String>>,
    /// Globs on the request's `model`; absent: every model.
    pub models: Option<Vec<String>>,
    /// What the key may spend in a period, at `pricing:` prices.
    pub budget: Option<BudgetSpec>,
    /// Its own request rates and token budgets over every route it calls, beside each route's.
    #[serde(default)]
    pub limits: Vec<LimitSpec>,
}

/// `budget: { usd: 50, per: 30d }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    pub usd: f64,
    pub per: HumanDuration,
}

/// A route's `auth:`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthSpec {
    /// Every caller needs a known key.
    Required,
    /// A caller without a key passes; one with an unknown key does not.
    Optional,
    /// Anyone passes; a known key is still recognized (its name keys limits and the cache).
    #[default]
    None,
}
