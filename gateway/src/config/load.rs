//! Reading a config file: `${VAR}` expansion, parsing into [`Spec`] and validation. Every
//! problem is reported as `file:line:column: field.path: message`, all at once.

use super::locate::{locate, render, Seg};
use super::spec::{RetryOnSpec, Spec};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// All problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// A parsed, validated file: the spec and the text it came from (for locating later errors).
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

fn error_at(file: &str, text: &str, path: &[Seg], message: impl Into<String>) -> ConfigError {
    let (line, column) = locate(text, path);
    ConfigError {
        file: file.to_string(),
        line,
        column,
        path: render(path),
        message: message.into(),
    }
}

/// Reads, expands, parses and validates `path`.
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
    let loaded = LoadedSpec {
        file: file.to_string(),
        text: expanded,
        spec,
    };
    let errors = validate(&loaded);
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigErrors(errors))
    }
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
        let inner = e.into_inner();
        let (line, column) = inner
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
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            path,
            message,
        }])
    })
}

fn key(s: &str) -> Seg {
    Seg::Key(s.to_string())
}

/// Checks what serde cannot: references, uniqueness, URLs, addresses, header syntax.
fn validate(loaded: &LoadedSpec) -> Vec<ConfigError> {
    let spec = &loaded.spec;
    let mut errors = Vec::new();
    let mut err = |path: Vec<Seg>, msg: String| errors.push(loaded.error_at(&path, msg));

    if spec.server.listen.is_empty() {
        err(
            vec![key("server"), key("listen")],
            "must list at least one address".into(),
        );
    }
    for (i, addr) in spec.server.listen.iter().enumerate() {
        if addr.parse::<SocketAddr>().is_err() {
            err(
                vec![key("server"), key("listen"), Seg::Index(i)],
                format!("`{addr}` is not an address like 127.0.0.1:8080"),
            );
        }
    }
    if spec.server.threads == 0 {
        err(
            vec![key("server"), key("threads")],
            "must be at least 1".into(),
        );
    }
    if let Some(admin) = &spec.admin {
        match admin.listen.parse::<SocketAddr>() {
            Err(_) => err(
                vec![key("admin"), key("listen")],
                format!("`{}` is not an address like 127.0.0.1:9090", admin.listen),
            ),
            Ok(addr) if !addr.ip().is_loopback() && admin.token_env.is_none() => err(
                vec![key("admin"), key("listen")],
                "admin listens beyond loopback: set admin.token_env to require a bearer token"
                    .into(),
            ),
            Ok(_) => {}
        }
    }

    for (name, up) in &spec.upstreams {
        let base = || vec![key("upstreams"), key(name)];
        if up.endpoints.is_empty() {
            err(
                [base(), vec![key("endpoints")]].concat(),
                "must list at least one endpoint".into(),
            );
        }
        for (i, ep) in up.endpoints.iter().enumerate() {
            let at =
                |field: &str| [base(), vec![key("endpoints"), Seg::Index(i), key(field)]].concat();
            if let Err(msg) = super::policy::parse_endpoint_url(&ep.url) {
                err(at("url"), msg);
            }
            if ep.weight == 0 {
                err(at("weight"), "must be at least 1".into());
            }
        }
        for (h, v) in &up.set_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(
                    [base(), vec![key("set_headers"), key(h)]].concat(),
                    format!("`{h}` is not a valid header name"),
                );
            } else if http::HeaderValue::from_str(v).is_err() {
                err(
                    [base(), vec![key("set_headers"), key(h)]].concat(),
                    "value is not a valid header value".into(),
                );
            }
        }
        for (i, on) in up.retry.on.iter().enumerate() {
            let ok = match on {
                RetryOnSpec::Status(code) => (400..=599).contains(code),
                RetryOnSpec::Event(e) => e == "connect" || e == "timeout",
            };
            if !ok {
                err(
                    [base(), vec![key("retry"), key("on"), Seg::Index(i)]].concat(),
                    "expected `connect`, `timeout` or a status code 400-599".into(),
                );
            }
        }
    }

    if spec.routes.is_empty() {
        err(vec![key("routes")], "must define at least one route".into());
    }
    let mut seen = HashSet::new();
    for (i, route) in spec.routes.iter().enumerate() {
        let at = |fields: &[&str]| {
            let mut p = vec![key("routes"), Seg::Index(i)];
            p.extend(fields.iter().map(|f| key(f)));
            p
        };
        if route.name.is_empty() {
            err(at(&["name"]), "must not be empty".into());
        } else if !seen.insert(route.name.as_str()) {
            err(
                at(&["name"]),
                format!("duplicate route name `{}`", route.name),
            );
        }
        if !spec.upstreams.contains_key(&route.upstream) {
            let known: Vec<&str> = spec.upstreams.keys().map(String::as_str).collect();
            err(
                at(&["upstream"]),
                format!(
                    "unknown upstream `{}` (defined: {})",
                    route.upstream,
                    known.join(", ")
                ),
            );
        }
        if !route.matcher.path_prefix.starts_with('/') {
            err(at(&["match", "path_prefix"]), "must start with `/`".into());
        }
        for m in &route.matcher.methods {
            if http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).is_err() {
                err(
                    at(&["match", "methods"]),
                    format!("`{m}` is not an HTTP method"),
                );
            }
        }
        for h in route.matcher.headers.keys() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(
                    at(&["match", "headers"]),
                    format!("`{h}` is not a valid header name"),
                );
            }
        }
    }
    errors
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
    fn semantic_errors_are_all_reported_with_positions() {
        let bad = format!(
            "{GOOD}  - name: chat\n    upstream: nowhere\n  - name: x\n    match: {{ methods: [\"BAD METHOD\"] }}\n    upstream: local\n"
        );
        let bad = bad.replace("http://127.0.0.1:8001", "ftp://127.0.0.1:8001");
        let errs = load_str("g.yaml", &bad, &env).unwrap_err().0;
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("g.yaml:4:9: upstreams.local.endpoints[0].url:")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("g.yaml:10:5: routes[1].name: duplicate route name `chat`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e
                    .starts_with("g.yaml:11:5: routes[1].upstream: unknown upstream `nowhere`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("g.yaml:13:5: routes[2].match.methods:")
                    || e.starts_with("g.yaml:13:14: routes[2].match.methods:")),
            "{text:?}"
        );
    }

    #[test]
    fn bad_duration_is_located() {
        let bad = GOOD.replace(
            "    set_headers",
            "    timeouts: { connect: 2 parsecs }\n    set_headers",
        );
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(e.starts_with("g.yaml:5:"), "{e}");
        assert!(e.contains("upstreams.local.timeouts.connect"), "{e}");
        assert!(e.contains("invalid duration unit"), "{e}");
    }

    #[test]
    fn public_admin_without_token_is_refused() {
        let bad = format!("admin:\n  listen: 0.0.0.0:9090\n{GOOD}");
        let e = load_str("g.yaml", &bad, &env).unwrap_err().to_string();
        assert!(
            e.starts_with("g.yaml:2:3: admin.listen: admin listens beyond loopback"),
            "{e}"
        );
    }
}
