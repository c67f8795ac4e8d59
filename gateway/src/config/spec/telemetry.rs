//! The YAML of `telemetry:`: where per-request usage records go.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// A JSON-lines file (relative to the config file) or `-` for stdout.
    pub usage_log: Option<String>,
}
