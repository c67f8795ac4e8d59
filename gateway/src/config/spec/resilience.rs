//! The YAML of an upstream's `health:` and `outlier:`.

use crate::config::units::HumanDuration;
use serde::{Deserialize, Serialize};
use sluice_plugins::outlier::OutlierPolicy;
use std::time::Duration;

/// Active health checks: a GET to `path` on every endpoint each `interval`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Defaults to 2 s, or the interval when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Statuses that pass; empty means any 2xx.
    #[serde(default)]
    pub expect_status: Vec<u16>,
    #[serde(default = "default_streak")]
    pub unhealthy_after: u32,
    #[serde(default = "default_streak")]
    pub healthy_after: u32,
}

fn default_path() -> String {
    "/health".into()
}
fn default_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_streak() -> u32 {
    2
}

/// Passive outlier ejection, with Envoy's meaning and defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    #[serde(default = "default_base")]
    pub base_ejection: HumanDuration,
    #[serde(default = "default_max")]
    pub max_ejection: HumanDuration,
    #[serde(default = "default_percent")]
    pub max_ejection_percent: u8,
}

fn default_consecutive() -> u32 {
    OutlierPolicy::default().consecutive_failures
}
fn default_base() -> HumanDuration {
    HumanDuration(OutlierPolicy::default().base_ejection)
}
fn default_max() -> HumanDuration {
    HumanDuration(OutlierPolicy::default().max_ejection)
}
fn default_percent() -> u8 {
    OutlierPolicy::default().max_ejection_percent
}
