//! `server.limits`: what a client connection may cost before the proxy sees a request. Pingora's
//! HTTP/1 server only bounds each read (60 s) and the head (1 MiB), so a client trickling header
//! lines or sending a 100 KB head ties up a connection and memory; these bounds, close to
//! nginx's defaults, are enforced by [`crate::listener`] while it reads each request head.

use super::errors::{ConfigErrors, Errors};
use super::load::LoadedSpec;
use super::locate::field_path;
use super::spec::ServerLimitsSpec;
use super::units::{ByteSize, HumanDuration};
use std::time::Duration;

/// Pingora's HTTP/1 parser refuses heads above this size and with more headers than
/// [`MAX_HEADERS`], so larger limits could never be reached.
pub const MAX_HEADER_BYTES: u64 = 1_048_575;
pub const MAX_HEADERS: usize = 256;
/// Beyond this a buffer per connection defeats the point of these limits.
const MAX_BUFFER: u64 = 1024 * 1024;
/// Longer waits are no limit at all, and deadlines far in the future overflow `Instant`.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `server.limits` checked and in the units the listener works in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    pub body_idle_timeout: Duration,
    pub send_timeout: Duration,
    /// Zero: every answer closes its connection.
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub read_buffer: usize,
    pub write_buffer: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits::from_spec(&ServerLimitsSpec::default())
    }
}

impl ServerLimits {
    /// Checks `server.limits` of `loaded` and converts it; every problem is reported, located.
    pub fn compile(loaded: &LoadedSpec) -> Result<ServerLimits, ConfigErrors> {
        let mut errors = Errors::new(&loaded.file, &loaded.text);
        check(&mut errors, &loaded.spec.server.limits);
        errors.finish(ServerLimits::from_spec(&loaded.spec.server.limits))
    }

    /// Converts without checking (out-of-range values are clamped, so this never panics).
    #[must_use]
    pub fn from_spec(spec: &ServerLimitsSpec) -> ServerLimits {
        let bytes = |b: ByteSize| usize::try_from(b.0).unwrap_or(usize::MAX);
        let time = |d: HumanDuration| d.0.min(MAX_TIMEOUT);
        ServerLimits {
            header_timeout: time(spec.header_timeout),
            max_header_bytes: bytes(spec.max_header_bytes).min(MAX_HEADER_BYTES as usize),
            max_uri_bytes: bytes(spec.max_uri_bytes),
            max_headers: spec.max_headers.min(MAX_HEADERS),
            body_idle_timeout: time(spec.body_idle_timeout),
            send_timeout: time(spec.send_timeout),
            keepalive_timeout: time(spec.keepalive_timeout),
            keepalive_requests: spec.keepalive_requests.max(1),
            read_buffer: bytes(spec.read_buffer).min(MAX_BUFFER as usize),
            write_buffer: bytes(spec.write_buffer).min(MAX_BUFFER as usize),
        }
    }
}

/// Records every out-of-range value of `server.limits` at its field.
pub(crate) fn check(errors: &mut Errors, spec: &ServerLimitsSpec) {
    let at = |field: &str| field_path!["server", "limits", field];
    for (field, value) in [
        ("header_timeout", spec.header_timeout),
        ("body_idle_timeout", spec.body_idle_timeout),
        ("send_timeout", spec.send_timeout),
    ] {
        if value.0.is_zero() {
            errors.at(&at(field), "must be more than 0");
        }
    }
    for (field, value) in [
        ("header_timeout", spec.header_timeout),
        ("body_idle_timeout", spec.body_idle_timeout),
        ("send_timeout", spec.send_timeout),
        ("keepalive_timeout", spec.keepalive_timeout),
    ] {
        if value.0 > MAX_TIMEOUT {
            errors.at(&at(field), "must be at most 24h");
        }
    }
    let head = spec.max_header_bytes.0;
    if !(1024..=MAX_HEADER_BYTES).contains(&head) {
        errors.at(
            &at("max_header_bytes"),
            format!(
                "must be between 1KiB and {MAX_HEADER_BYTES} bytes (Pingora's own cap), not {head}"
            ),
        );
    }
    let uri = spec.max_uri_bytes.0;
    if uri < 64 {
        errors.at(&at("max_uri_bytes"), "must be at least 64 bytes");
    } else if uri >= head {
        errors.at(
            &at("max_uri_bytes"),
            format!("must be less than max_header_bytes ({head}), which includes the request line"),
        );
    }
    if !(1..=MAX_HEADERS).contains(&spec.max_headers) {
        errors.at(
            &at("max_headers"),
            format!("must be between 1 and {MAX_HEADERS} (Pingora's parser holds no more)"),
        );
    }
    if spec.keepalive_requests == 0 {
        errors.at(
            &at("keepalive_requests"),
            "must be at least 1 (for no keep-alive, set keepalive_timeout: 0)",
        );
    }
    for (field, value) in [
        ("read_buffer", spec.read_buffer),
        ("write_buffer", spec.write_buffer),
    ] {
        if value.0 > MAX_BUFFER {
            errors.at(&at(field), "must be at most 1MiB (0 turns buffering off)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_str;

    const ROUTES: &str = "\
upstreams:
  up:
    endpoints: [ { url: \"http://127.0.0.1:8001\" } ]
routes:
  - { name: all, upstream: up }
";

    fn compile(yaml: &str) -> Result<ServerLimits, String> {
        let text = format!("{yaml}{ROUTES}");
        let loaded = load_str("g.yaml", &text, &|_| None).map_err(|e| e.to_string())?;
        ServerLimits::compile(&loaded).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_nginx_like() {
        let l = compile("").unwrap();
        assert_eq!(l, ServerLimits::default());
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.max_header_bytes, 32 * 1024);
        assert_eq!(l.max_uri_bytes, 8 * 1024);
        assert_eq!(l.max_headers, 100);
        assert_eq!(l.body_idle_timeout, Duration::from_secs(60));
        assert_eq!(l.send_timeout, Duration::from_secs(60));
        assert_eq!(l.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(l.keepalive_requests, 1000);
        assert_eq!((l.read_buffer, l.write_buffer), (0, 1460));
    }

    #[test]
    fn fields_parse_with_units() {
        let l = compile(
            "server:\n  limits:\n    header_timeout: 2s\n    max_header_bytes: 16KiB\n    \
             max_uri_bytes: 2KiB\n    max_headers: 50\n    keepalive_timeout: 0\n    \
             keepalive_requests: 3\n    read_buffer: 8KiB\n    send_timeout: 500ms\n",
        )
        .unwrap();
        assert_eq!(l.header_timeout, Duration::from_secs(2));
        assert_eq!(l.send_timeout, Duration::from_millis(500));
        assert_eq!((l.max_header_bytes, l.max_uri_bytes), (16384, 2048));
        assert_eq!((l.max_headers, l.keepalive_requests), (50, 3));
        assert_eq!(l.keepalive_timeout, Duration::ZERO);
        assert_eq!((l.read_buffer, l.write_buffer), (8192, 1460));
    }

    #[test]
    fn every_bad_value_is_reported_at_its_line() {
        let e = compile(
            "server:\n  limits:\n    header_timeout: 0s\n    max_header_bytes: 2MiB\n    \
             max_headers: 300\n    keepalive_requests: 0\n    read_buffer: 4MiB\n    \
             keepalive_timeout: 48h\n    send_timeout: 0s\n",
        )
        .unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 7, "{e}");
        for want in [
            "g.yaml:3:5: server.limits.header_timeout: must be more than 0",
            "g.yaml:4:5: server.limits.max_header_bytes: must be between 1KiB",
            "g.yaml:5:5: server.limits.max_headers: must be between 1 and 256",
            "g.yaml:6:5: server.limits.keepalive_requests: must be at least 1",
            "g.yaml:7:5: server.limits.read_buffer: must be at most 1MiB",
            "g.yaml:8:5: server.limits.keepalive_timeout: must be at most 24h",
            "g.yaml:9:5: server.limits.send_timeout: must be more than 0",
        ] {
            assert!(lines.iter().any(|l| l.starts_with(want)), "{want} in\n{e}");
        }
    }

    #[test]
    fn uri_limit_must_fit_in_the_head() {
        let e =
            compile("server:\n  limits:\n    max_header_bytes: 4KiB\n    max_uri_bytes: 8KiB\n")
                .unwrap_err();
        assert!(
            e.starts_with(
                "g.yaml:4:5: server.limits.max_uri_bytes: must be less than max_header_bytes"
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_and_malformed_fields_are_parse_errors() {
        let e = compile("server:\n  limits:\n    header_timout: 5s\n").unwrap_err();
        assert!(
            e.starts_with("g.yaml:3:5: server.limits.header_timout: unknown field `header_timout`"),
            "{e}"
        );
        let e = compile("server:\n  limits:\n    header_timeout: soon\n").unwrap_err();
        assert!(
            e.starts_with("g.yaml:3:21: server.limits.header_timeout: invalid duration"),
            "{e}"
        );
    }
}
