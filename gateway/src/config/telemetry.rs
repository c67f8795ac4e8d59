//! `telemetry:` compiled: where the usage log and trace spans go. Read at start, like the
//! cache tiers.

use super::errors::Errors;
use super::locate::field_path;
use super::needs::Needs;
use super::secret::redact_url;
use super::spec::TelemetrySpec;
use std::path::{Path, PathBuf};

/// Where the usage log's JSON lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageLogTarget {
    Stdout,
    /// Appended to; resolved against the config file's directory.
    File(PathBuf),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Telemetry {
    pub usage_log: Option<UsageLogTarget>,
    /// The OTLP/HTTP traces URL (`<endpoint>/v1/traces`).
    pub otlp_traces: Option<String>,
}

impl Telemetry {
    /// A usage record has every answer's tokens, so with the log on every route meters usage.
    #[must_use]
    pub fn needs(&self) -> Needs {
        if self.usage_log.is_some() {
            Needs::USAGE
        } else {
            Needs::NONE
        }
    }
}

/// Checks `telemetry:`; `dir` is the config file's directory.
pub(super) fn compile_telemetry(
    errors: &mut Errors,
    spec: Option<&TelemetrySpec>,
    dir: &Path,
) -> Telemetry {
    let usage_log = spec
        .and_then(|s| s.usage_log.as_deref())
        .and_then(|path| match path.trim() {
            "" => {
                errors.at(
                    &field_path!["telemetry", "usage_log"],
                    "must be a file path or `-` for stdout",
                );
                None
            }
            "-" => Some(UsageLogTarget::Stdout),
            _ => Some(UsageLogTarget::File(dir.join(path))),
        });
    let otlp_traces = spec.and_then(|s| s.otlp.as_ref()).and_then(|o| {
        let endpoint = o.endpoint.trim().trim_end_matches('/');
        if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            Some(format!("{endpoint}/v1/traces"))
        } else {
            errors.at(
                &field_path!["telemetry", "otlp", "endpoint"],
                format!(
                    "`{}` must start with http:// or https://",
                    redact_url(endpoint)
                ),
            );
            None
        }
    });
    Telemetry {
        usage_log,
        otlp_traces,
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::compile_text;
    use super::*;

    const BASE: &str = "upstreams:\n  u: { endpoints: [{ url: \"http://127.0.0.1:1\" }] }\nroutes:\n  - { name: r, upstream: u }\n";

    #[test]
    fn the_usage_log_goes_to_a_file_beside_the_config_or_stdout() {
        let p = compile_text(&format!(
            "{BASE}telemetry: {{ usage_log: ./usage.jsonl }}\n"
        ))
        .unwrap();
        assert_eq!(
            p.telemetry.usage_log,
            Some(UsageLogTarget::File(PathBuf::from("./usage.jsonl")))
        );
        let p = compile_text(&format!("{BASE}telemetry: {{ usage_log: \"-\" }}\n")).unwrap();
        assert_eq!(p.telemetry.usage_log, Some(UsageLogTarget::Stdout));
        assert_eq!(p.routes[0].needs, Needs::USAGE, "every answer is metered");
        assert_eq!(compile_text(BASE).unwrap().telemetry, Telemetry::default());
        let p = compile_text(&format!(
            "{BASE}telemetry: {{ otlp: {{ endpoint: \"http://127.0.0.1:4318/\" }} }}\n"
        ))
        .unwrap();
        assert_eq!(
            p.telemetry.otlp_traces.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let errs = compile_text(&format!("{BASE}telemetry: {{ usage_log: \"\" }}\n")).err();
        assert_eq!(
            errs.unwrap(),
            ["g.yaml:5:14: telemetry.usage_log: must be a file path or `-` for stdout"]
        );
    }
}
