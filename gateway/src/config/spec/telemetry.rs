//! The YAML of `telemetry:`: where per-request usage records and trace spans go.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySpec {
    /// A JSON-lines file (relative to the config file) or `-` for stdout.
    pub usage_log: Option<String>,
    /// Where to export trace spans (OTLP over HTTP).
    pub otlp: Option<OtlpSpec>,
}

/// `otlp: { endpoint: "http://collector:4318" }`: spans are POSTed to `<endpoint>/v1/traces`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSpec {
    pub endpoint: String,
}
