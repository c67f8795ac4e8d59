//! Reading a config file: `${VAR}` expansion and parsing into [`Spec`] (syntax, types, unknown
//! fields). What the values mean is checked by [`compile`](super::policy::compile), so there is
//! one pass that both checks and builds. Every problem is reported as
//! `file:line:column: field.path: message`.

use super::errors::{error_at, ConfigError, ConfigErrors};
use super::locate::{locate_value, Seg};
use super::secret::redact_urls_in;
use super::spec::Spec;
use super::units;
use std::path::Path;

/// A parsed file: the spec and the text it came from (for locating the errors `compile` finds).
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub file: String,
    pub text: String,
    pub spec: Spec,
}

impl LoadedSpec {
    /// An error at `path` in this file.
    #[must_use]
    pub fn error_at(&self, path: &[Seg], message: impl Into<String>) -> ConfigError {
        error_at(&self.file, &self.text, path, message)
    }
}

/// Reads, expands and parses `path`.
pub fn load_file(path: &Path) -> Result<LoadedSpec, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 1,
            column: 1,
            path: String::new(),
            message: format!("cannot read file: {e}"),
        }])
    })?;
    load_str(&file, &text, &|name| std::env::var(name).ok())
}

/// Like [`load_file`] on text already read; `env` resolves `${VAR}`.
pub fn load_str(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedSpec, ConfigErrors> {
    let expanded = expand_env(file, text, env)?;
    let spec = parse(file, &expanded)?;
    Ok(LoadedSpec {
        file: file.to_string(),
        text: expanded,
        spec,
    })
}

/// Replaces `${VAR}` with the variable's value; an unset variable is an error at its position.
fn expand_env(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigErrors> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start + 2..].find('}') else {
                break;
            };
            let name = &rest[start + 2..start + 2 + len];
            match env(name) {
                Some(value) => out.push_str(&value),
                None => errors.push(ConfigError {
                    file: file.to_string(),
                    line: n + 1,
                    column: line.len() - rest.len() + start + 1,
                    path: String::new(),
                    message: format!("environment variable {name} is not set"),
                }),
            }
            rest = &rest[start + 3 + len..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn parse(file: &str, text: &str) -> Result<Spec, ConfigErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let segs = segments(e.path());
        let inner = e.into_inner();
        let (mut line, mut column) = inner
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let message = inner.to_string();
        let message = match message.rfind(" at line ") {
            Some(cut) => message[..cut].to_string(),
            None => message,
        };
        let path = if path == "." { String::new() } else { path };
        // serde_yaml prefixes the containing map's path; ours is more precise.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => {
                rest.to_string()
            }
            _ => message,
        };
        // serde_yaml places errors raised by our unit parsers at the enclosing map's first key;
        // the value is where the user has to look.
        if units::is_unit_error(&message) {
            if let Some(at) = locate_value(text, &segs) {
                (line, column) = at;
            }
        }
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            path,
            // serde quotes the value it could not take, which may be a URL with a password.
            message: redact_urls_in(&message),
        }])
    })
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
upstreams:
  local:
    endpoints:
      - url: http://127.0.0.1:8001
    set_headers: { authorization: \"Bearer ${TOKEN}\" }
routes:
  - name: chat
    match: { path_prefix: /v1/chat, methods: [POST], model: \"gpt-4*\" }
    upstream: local
";

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "sekrit".to_string())
    }

    #[test]
    fn good_file_loads_with_env_expanded_and_defaults() {
        let l = load_str("g.yaml", GOOD, &env).unwrap();
        assert_eq!(
            l.spec.upstreams["local"].set_headers["authorization"],
            "Bearer sekrit"
        );
        assert_eq!(l.spec.server.max_body_bytes.0, 10 * 1024 * 1024);
        assert_eq!(l.spec.routes[0].matcher.model.as_deref(), Some("gpt-4*"));
        assert!(
            l.spec.upstreams["local"].tls.verify,
            "certificates are verified unless turned off"
        );
    }

    #[test]
    fn misspelled_field_names_field_and_line() {
        let bad = GOOD.replace("    upstream: local", "    upstrem: local");
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "g.yaml:9:5: routes[0].upstrem: unknown field `upstrem`, expected one of"
            ),
            "{e}"
        );
    }

    #[test]
    fn unset_variable_is_located() {
        let e = load_str("g.yaml", GOOD, &|_| None).unwrap_err().to_string();
        assert_eq!(e, "g.yaml:5:43: environment variable TOKEN is not set");
    }

    #[test]
    fn load_only_parses_meaning_is_checked_by_compile() {
        let odd = GOOD.replace("http://127.0.0.1:8001", "ftp://127.0.0.1:8001");
        assert!(load_str("g.yaml", &odd, &env).is_ok());
    }

    #[test]
    fn bad_duration_in_flow_style_points_at_the_value() {
        let bad = GOOD.replace(
            "    set_headers",
            "    timeouts: { connect: 2 parsecs }\n    set_headers",
        );
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "g.yaml:5:26: upstreams.local.timeouts.connect: invalid duration unit in `2 parsecs`"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_in_block_style_points_at_the_value() {
        let bad = format!("server:\n  threads: 1\n  grace_period: 5 seconds\n{GOOD}");
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("g.yaml:3:17: server.grace_period: invalid duration unit in `5 seconds`"),
            "{e}"
        );
    }

    #[test]
    fn bad_size_in_block_style_points_at_the_value() {
        let bad = format!(
            "server:\n  listen: [\"127.0.0.1:8080\"]\n  threads: 1\n  max_body_bytes: 10 parsecs\n{GOOD}"
        );
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("g.yaml:4:19: server.max_body_bytes: invalid size unit in `10 parsecs`"),
            "{e}"
        );
        // The first key of its map too, where serde_yaml's own position would coincide.
        let bad = format!("server:\n  max_body_bytes: lots\n{GOOD}");
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("g.yaml:2:19: server.max_body_bytes: invalid size `lots`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_keeps_serdes_position() {
        let bad = format!("server:\n  listen: [\"127.0.0.1:8080\"]\n  threads: many\n{GOOD}");
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("g.yaml:3:12: server.threads: invalid type"),
            "{e}"
        );
    }
}
