//! Gateway-issued client keys: `keys:` compiled into a table looked up by the sha256 of what a
//! caller presents, and each route's `auth:`. Only hashes are kept, so neither the config nor
//! `/admin/config` holds a usable key.

use super::errors::Errors;
use super::limits::{
    attach, check_limits, CheckedLimit, LimitCommon, LimitKey, LimitScope, RouteLimits,
    TokenGauges, TokenLimit,
};
use super::locate::{field_path, Seg};
use super::needs::Needs;
use super::shared::SharedState;
use super::spec::{AuthSpec, BudgetSpec, KeySpec};
use prometheus::{Counter, Gauge};
use sha2::{Digest, Sha256};
use sluice_plugins::glob::Glob;
use sluice_plugins::limits::Rate;
use sluice_plugins::metrics::RouteLimitMetrics;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub use super::spec::AuthSpec as Auth;

/// One key as the request path checks it.
#[derive(Debug)]
pub struct ClientKey {
    /// What it may spend, when it has a budget.
    pub budget: Option<KeyBudget>,
    /// Its own request rates and token budgets over every route it calls.
    pub limits: Option<KeyLimits>,
    pub name: String,
    pub team: Option<String>,
    /// `None`: every route.
    pub routes: Option<HashSet<String>>,
    /// `None`: every model.
    pub models: Option<Vec<Glob>>,
    /// As configured, for `/admin/keys`.
    pub model_patterns: Option<Vec<String>>,
}

/// A key's dollar budget: a token bucket whose units are micro-dollars (GCRA, refilling over
/// `per`), in Redis when `redis:` is configured, so every instance spends from one budget.
pub struct KeyBudget {
    pub usd: f64,
    pub per: Duration,
    /// One token limit, `budget`, keyed by the route label `key:NAME`.
    pub limits: RouteLimits,
    /// The bucket's scope in Redis and in the limit metrics: `key:NAME`.
    pub scope: String,
    /// `sluice_key_spend_usd_total{key,team}`.
    pub spend: Counter,
    /// `sluice_key_budget_remaining_usd{key,team}`, for a budget this instance keeps.
    pub remaining: Option<Gauge>,
}

impl KeyBudget {
    /// The budget, what this instance charged to it since it started, and what is left: read
    /// from the local bucket, so only for a budget that is not in Redis (`null` there).
    fn admin_view(&self) -> serde_json::Value {
        let shared = self.limits.any_shared();
        let left = self.left_usd().filter(|_| !shared);
        serde_json::json!({
            "usd": self.usd,
            "per_seconds": self.per.as_secs(),
            "shared": shared,
            "spent_usd": self.spend.get(),
            "left_usd": left,
        })
    }
}

impl KeyBudget {
    /// What the local bucket has left, in US dollars.
    fn left_usd(&self) -> Option<f64> {
        let bucket = &self.limits.tokens.first()?.local;
        #[allow(clippy::cast_precision_loss)] // micro-dollars stay far below 2^52
        Some(bucket.peek(0, std::time::Instant::now()).remaining as f64 / MICROS_PER_USD)
    }

    /// Sets the remaining-budget gauge of a budget this instance keeps.
    pub fn refresh_gauge(&self) {
        if let Some((gauge, left)) = self.remaining.as_ref().zip(self.left_usd()) {
            gauge.set(left);
        }
    }
}

impl std::fmt::Debug for KeyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyBudget")
            .field("usd", &self.usd)
            .field("per", &self.per)
            .finish_non_exhaustive()
    }
}

/// A key's `limits:`, scoped `key:NAME`.
pub struct KeyLimits {
    pub scope: String,
    pub limits: RouteLimits,
    pub metrics: RouteLimitMetrics,
}

impl std::fmt::Debug for KeyLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLimits")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Micro-dollars per US dollar: the budget bucket's unit.
pub const MICROS_PER_USD: f64 = 1e6;

impl ClientKey {
    /// The key's own limits as the limits phase takes them, if it has any.
    #[must_use]
    pub fn limit_scope(&self) -> Option<LimitScope<'_>> {
        let l = self.limits.as_ref()?;
        Some(LimitScope {
            name: &l.scope,
            limits: &l.limits,
            metrics: &l.metrics,
        })
    }

    /// Whether the key may use route `name`.
    #[must_use]
    pub fn allows_route(&self, name: &str) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(name))
    }

    /// Whether the key may ask for `model` (a request without one passes only an open key).
    #[must_use]
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        match (&self.models, model) {
            (None, _) => true,
            (Some(globs), Some(model)) => globs.iter().any(|g| g.matches(model)),
            (Some(_), None) => false,
        }
    }
}

/// Every key, by the sha256 of the key string.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Arc<ClientKey>>,
    /// In config order, for `/admin/keys`.
    pub all: Vec<Arc<ClientKey>>,
}

impl Keys {
    /// The key whose hash is the sha256 of `presented`.
    #[must_use]
    pub fn find(&self, presented: &[u8]) -> Option<&Arc<ClientKey>> {
        if self.by_hash.is_empty() {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(presented).into();
        self.by_hash.get(&hash)
    }

    /// `GET /admin/keys`: each key's name, team, routes and model globs (never its hash).
    #[must_use]
    pub fn admin_view(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .all
            .iter()
            .map(|k| {
                let mut routes: Option<Vec<&String>> =
                    k.routes.as_ref().map(|r| r.iter().collect());
                if let Some(r) = routes.as_mut() {
                    r.sort();
                }
                serde_json::json!({
                    "name": k.name,
                    "team": k.team,
                    "routes": routes,
                    "models": k.model_patterns,
                    "budget": k.budget.as_ref().map(KeyBudget::admin_view),
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// What a route with `auth` needs from a request: a model rule is checked on the body, a
    /// budget is reserved from it and charged from the answer's usage.
    #[must_use]
    pub fn needs(&self, auth: Auth) -> Needs {
        if auth == Auth::None {
            return Needs::NONE;
        }
        let limits = self.all.iter().filter_map(|k| k.limits.as_ref());
        let limit_needs = limits.fold(Needs::NONE, |n, l| n | l.limits.needs());
        if self.all.iter().any(|k| k.budget.is_some()) {
            return Needs::USAGE;
        }
        limit_needs | Needs::body_if(self.all.iter().any(|k| k.models.is_some()))
    }

    /// Whether any key's budget or limit lives in Redis.
    #[must_use]
    pub fn any_shared(&self) -> bool {
        self.all.iter().any(|k| {
            k.budget.as_ref().is_some_and(|b| b.limits.any_shared())
                || k.limits.as_ref().is_some_and(|l| l.limits.any_shared())
        })
    }
}

/// `sha256:` and the lower-case hex of the key string's sha256: the form `hash:` takes.
#[must_use]
pub fn hash_line(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A fresh key: `sk-sluice-` and 256 random bits from the OS, base64url.
pub fn new_key() -> Result<String, String> {
    use base64::Engine;
    let mut bits = [0u8; 32];
    getrandom::fill(&mut bits).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bits);
    Ok(format!("sk-sluice-{text}"))
}

/// A key that passed every check, waiting for its budget's bucket and metrics.
pub(super) struct CheckedKey {
    hash: [u8; 32],
    key: ClientKey,
    /// (usd, per, rate in micro-dollars)
    budget: Option<(f64, Duration, Rate)>,
    limits: Vec<CheckedLimit>,
}

/// Checks `keys:`; `routes` are the route names the file defines.
pub(super) fn check_keys(
    errors: &mut Errors,
    specs: &[KeySpec],
    routes: &HashSet<&str>,
    has_redis: bool,
) -> Vec<CheckedKey> {
    let mut checked: Vec<CheckedKey> = Vec::new();
    let mut hashes = HashSet::new();
    let mut names = HashSet::new();
    for (i, spec) in specs.iter().enumerate() {
        let at = |field: &str| field_path!["keys", i, field];
        let before = errors.count();
        if let Err(m) = check_label(&spec.name) {
            errors.at(&at("name"), m);
        } else if !names.insert(spec.name.as_str()) {
            errors.at(&at("name"), format!("duplicate key name `{}`", spec.name));
        }
        if let Some(Err(m)) = spec.team.as_deref().map(check_label) {
            errors.at(&at("team"), m);
        }
        let hash = parse_hash(&spec.hash).map_err(|m| errors.at(&at("hash"), m));
        if let Ok(hash) = hash {
            if !hashes.insert(hash) {
                errors.at(&at("hash"), "the same hash as an earlier key");
            }
        }
        for (r, route) in spec.routes.iter().flatten().enumerate() {
            if !routes.contains(route.as_str()) {
                errors.at(
                    &field_path!["keys", i, "routes", r],
                    format!("unknown route `{route}`"),
                );
            }
        }
        for (m, model) in spec.models.iter().flatten().enumerate() {
            if model.trim().is_empty() {
                errors.at(&field_path!["keys", i, "models", m], "must not be empty");
            }
        }
        let budget = spec
            .budget
            .as_ref()
            .and_then(|b| check_budget(errors, &field_path!["keys", i, "budget"], b));
        let limits = check_limits(errors, &field_path!["keys", i], &spec.limits, has_redis);
        let (Ok(hash), true) = (hash, errors.count() == before) else {
            continue;
        };
        let key = ClientKey {
            budget: None,
            limits: None,
            name: spec.name.clone(),
            team: spec.team.clone(),
            routes: spec.routes.as_ref().map(|r| r.iter().cloned().collect()),
            models: spec
                .models
                .as_ref()
                .map(|m| m.iter().map(|g| Glob::new(g)).collect()),
            model_patterns: spec.models.clone(),
        };
        checked.push(CheckedKey {
            hash,
            key,
            budget,
            limits,
        });
    }
    checked
}

fn check_budget(errors: &mut Errors, at: &[Seg], b: &BudgetSpec) -> Option<(f64, Duration, Rate)> {
    let before = errors.count();
    if !(b.usd.is_finite() && b.usd > 0.0 && b.usd <= 1e9) {
        errors.at(
            &field_path![at; "usd"],
            "must be more than 0 (and at most 1e9)",
        );
    }
    if b.per.0.is_zero() {
        errors.at(&field_path![at; "per"], "must be more than 0");
    }
    if errors.count() > before {
        return None;
    }
    let micros = (b.usd * MICROS_PER_USD).ceil() as u64;
    match Rate::per(micros.max(1), b.per.0, micros.max(1)) {
        Some(rate) => Some((b.usd, b.per.0, rate)),
        None => {
            errors.at(at, "too much money for too short a period to enforce");
            None
        }
    }
}

/// Builds the keys, their budgets on buckets that survive reloads; `shared` budgets (with
/// `redis:`) live in Redis.
pub(super) fn attach_keys(checked: Vec<CheckedKey>, state: &SharedState, shared: bool) -> Keys {
    let mut keys = Keys::default();
    for CheckedKey {
        hash,
        mut key,
        budget,
        limits,
    } in checked
    {
        let scope = format!("key:{}", key.name);
        key.limits =
            attach(&scope, limits, &state.limit_buckets, &state.metrics).map(|l| KeyLimits {
                metrics: state.metrics.route_limits(&scope),
                scope: scope.clone(),
                limits: l,
            });
        let team = key.team.as_deref().unwrap_or("");
        key.budget = budget.map(|(usd, per, rate)| {
            let metrics = state.metrics.limit(&scope, BUDGET_LIMIT);
            let gauges = TokenGauges {
                keys: metrics.keys.clone(),
                remaining: None,
            };
            let local =
                state
                    .limit_buckets
                    .tokens((scope.clone(), BUDGET_LIMIT.to_string()), rate, gauges);
            let limit = TokenLimit {
                common: LimitCommon {
                    name: BUDGET_LIMIT.to_string(),
                    key: LimitKey::Route,
                    rate,
                    shared,
                    metrics,
                },
                default_max_tokens: 0,
                charge_cache_hits: false,
                local,
            };
            KeyBudget {
                usd,
                per,
                limits: RouteLimits {
                    requests: Vec::new(),
                    tokens: vec![limit],
                },
                spend: state.metrics.key_spend(&key.name, team),
                remaining: (!shared).then(|| state.metrics.key_budget_remaining(&key.name, team)),
                scope,
            }
        });
        let key = Arc::new(key);
        keys.by_hash.insert(hash, Arc::clone(&key));
        keys.all.push(key);
    }
    keys
}

/// The name of a key's budget in the limit metrics.
pub const BUDGET_LIMIT: &str = "budget";

/// A key or team name: it becomes a metric label value and a log field, so it stays short
/// and plain.
fn check_label(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err(format!(
            "`{name}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        ));
    }
    Ok(())
}

fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let hex_digits = text
        .strip_prefix("sha256:")
        .ok_or("must start with `sha256:` (as `sluice keys new` prints)")?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut hash)
        .map_err(|_| "must be `sha256:` and 64 hex digits".to_string())?;
    Ok(hash)
}

/// The `auth:` of route `base` is checked against `keys:`: requiring keys needs some.
pub(super) fn check_auth(errors: &mut Errors, base: &[Seg], auth: AuthSpec, keys: &[KeySpec]) {
    if auth == AuthSpec::Required && keys.is_empty() {
        errors.at(
            &field_path![base; "auth"],
            "`required` needs the top-level `keys:` (no caller could pass)",
        );
    }
}

#[cfg(test)]
mod tests;
