//! The admin listener: `/metrics`, `/healthz`, `/readyz`, the status page at `/`, and
//! `/admin/*` (behind the bearer token when `admin.token_env` is set).

mod stats;

use crate::bind::Readiness;
use crate::reload::PolicyStore;
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use sluice_plugins::cache::PromptCache;
use sluice_plugins::openai_error::GatewayError;
use std::sync::Arc;
use std::time::Instant;

/// Serves the admin endpoints.
pub struct AdminApp {
    store: Arc<PolicyStore>,
    token: Option<String>,
    readiness: Arc<Readiness>,
    cache: Option<Arc<PromptCache>>,
    sampler: stats::Sampler,
}

/// The status page: one self-contained document (no external scripts, fonts or images) that
/// polls `/admin/stats` every second.
const STATUS_PAGE: &str = include_str!("status.html");

impl AdminApp {
    #[must_use]
    pub fn new(
        store: Arc<PolicyStore>,
        token: Option<String>,
        readiness: Arc<Readiness>,
        cache: Option<Arc<PromptCache>>,
    ) -> Self {
        AdminApp {
            store,
            token,
            readiness,
            cache,
            sampler: stats::Sampler::default(),
        }
    }

    /// `POST /admin/cache/purge` with `{}` (everything) or `{"route": "chat"}`.
    async fn purge(&self, body: &[u8]) -> (StatusCode, Vec<u8>) {
        let bad = |m: &str| {
            (
                StatusCode::BAD_REQUEST,
                admin_error(400, "invalid_request", m).body(),
            )
        };
        let route = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(serde_json::Value::Object(o)) => match o.get("route") {
                    None => None,
                    Some(serde_json::Value::String(r)) => Some(r.clone()),
                    Some(_) => return bad("`route` must be a string"),
                },
                _ => return bad("body must be a JSON object: {} or {\"route\": \"NAME\"}"),
            }
        };
        if let Some(name) = &route {
            let policy = self.store.load();
            if !policy.routes.iter().any(|r| &r.name == name) {
                let known: Vec<&str> = policy.routes.iter().map(|r| r.name.as_str()).collect();
                let message = format!("no route named `{name}`; routes: {}", known.join(", "));
                return (
                    StatusCode::NOT_FOUND,
                    admin_error(404, "route_not_found", &message).body(),
                );
            }
        }
        let Some(cache) = &self.cache else {
            return (
                StatusCode::OK,
                json!({"removed": 0, "tiers": {}}).to_string().into_bytes(),
            );
        };
        let n = cache.store.purge(route.as_deref()).await;
        tracing::info!(
            route = route.as_deref().unwrap_or("*"),
            memory = n.memory,
            redis = n.redis,
            disk = n.disk,
            "cache purged"
        );
        let body = json!({
            "removed": n.memory.max(n.redis).max(n.disk),
            "tiers": {"memory": n.memory, "redis": n.redis, "disk": n.disk},
        });
        (StatusCode::OK, body.to_string().into_bytes())
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        bearer_matches(session.get_header_bytes(http::header::AUTHORIZATION), token)
    }

    fn route(
        &self,
        method: &Method,
        path: &str,
        session: &ServerSession,
    ) -> (StatusCode, &'static str, Vec<u8>) {
        let text = "text/plain; charset=utf-8";
        let json_type = "application/json";
        let Some(allowed) = allowed_method(path) else {
            return (
                StatusCode::NOT_FOUND,
                json_type,
                admin_error(404, "not_found", "no such admin endpoint").body(),
            );
        };
        if path.starts_with("/admin/") && !self.authorized(session) {
            return (
                StatusCode::UNAUTHORIZED,
                json_type,
                admin_error(401, "unauthorized", "admin token missing or wrong").body(),
            );
        }
        // HEAD is GET without the body (Pingora leaves the body out), as HTTP requires.
        let method = if *method == Method::HEAD && allowed == Method::GET {
            &Method::GET
        } else {
            method
        };
        if *method != allowed {
            let message = format!("{path} takes {allowed}");
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                json_type,
                admin_error(405, "method_not_allowed", &message).body(),
            );
        }
        match (method, path) {
            (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", {
                crate::observe::refresh_gauges(&self.store.load(), Instant::now());
                self.store.shared().metrics.encode().into_bytes()
            }),
            (&Method::GET, "/healthz") => (StatusCode::OK, text, b"ok\n".to_vec()),
            (&Method::GET, "/") => (
                StatusCode::OK,
                "text/html; charset=utf-8",
                STATUS_PAGE.as_bytes().to_vec(),
            ),
            (&Method::GET, "/readyz") => {
                if self.readiness.is_draining() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        text,
                        b"draining\n".to_vec(),
                    )
                } else if self.readiness.is_ready() {
                    (StatusCode::OK, text, b"ready\n".to_vec())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        text,
                        b"starting\n".to_vec(),
                    )
                }
            }
            (&Method::GET, "/admin/config") => {
                let body =
                    serde_json::to_vec_pretty(&self.store.load().redacted).unwrap_or_default();
                (StatusCode::OK, json_type, body)
            }
            (&Method::GET, "/admin/keys") => {
                let body = serde_json::to_vec_pretty(&self.store.load().keys.admin_view())
                    .unwrap_or_default();
                (StatusCode::OK, json_type, body)
            }
            (&Method::POST, "/admin/reload") => match self.store.reload("admin") {
                Ok(()) => (
                    StatusCode::OK,
                    json_type,
                    json!({"status": "reloaded"}).to_string().into_bytes(),
                ),
                Err(errors) => {
                    let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                    let err = GatewayError::new(
                        400,
                        "invalid_config",
                        "invalid_config",
                        "config rejected, running policy kept",
                    );
                    (
                        StatusCode::BAD_REQUEST,
                        json_type,
                        err.body_with_errors(&list),
                    )
                }
            },
            _ => (
                StatusCode::NOT_FOUND,
                json_type,
                admin_error(404, "not_found", "no such admin endpoint").body(),
            ),
        }
    }
}

/// The one method each admin path takes; `None` for an unknown path.
fn allowed_method(path: &str) -> Option<Method> {
    match path {
        "/" | "/metrics" | "/healthz" | "/readyz" | "/admin/config" | "/admin/keys"
        | "/admin/stats" => Some(Method::GET),
        "/admin/reload" | "/admin/cache/purge" => Some(Method::POST),
        _ => None,
    }
}

/// Whether an `Authorization` value carries `token` as a bearer credential. The scheme is
/// case-insensitive (RFC 9110); the token is compared in time independent of where it differs.
fn bearer_matches(header: &[u8], token: &str) -> bool {
    let Some(space) = header.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, rest) = header.split_at(space);
    let given = rest.trim_ascii_start();
    scheme.eq_ignore_ascii_case(b"bearer")
        && given.len() == token.len()
        && given
            .iter()
            .zip(token.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn admin_error(status: u16, code: &'static str, message: &str) -> GatewayError {
    GatewayError::new(status, "admin_error", code, message)
}

/// Admin bodies are small JSON documents; more than this is cut off.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

async fn read_body(session: &mut ServerSession) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        if body.len() + chunk.len() > ADMIN_BODY_LIMIT {
            let _ = session.drain_request_body().await;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    body
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = read_body(session).await;
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let get = method == Method::GET || method == Method::HEAD;
        let (status, content_type, body) =
            if method == Method::POST && path == "/admin/cache/purge" && self.authorized(session) {
                let (status, body) = self.purge(&body).await;
                (status, "application/json", body)
            } else if get && path == "/admin/stats" && self.authorized(session) {
                let stats = self.sampler.stats(&self.store).await;
                let body = serde_json::to_vec(&stats).unwrap_or_default();
                (StatusCode::OK, "application/json", body)
            } else {
                self.route(&method, &path, session)
            };
        let mut builder = Response::builder().status(status);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            if let Some(allowed) = allowed_method(&path) {
                let allow = if allowed == Method::GET {
                    "GET, HEAD"
                } else {
                    allowed.as_str()
                };
                builder = builder.header(http::header::ALLOW, allow);
            }
        }
        builder
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_token_exact() {
        assert!(bearer_matches(b"Bearer s3cret", "s3cret"));
        assert!(bearer_matches(b"bearer s3cret", "s3cret"));
        assert!(bearer_matches(b"BEARER  s3cret", "s3cret"));
        assert!(!bearer_matches(b"Bearer s3cre", "s3cret"));
        assert!(!bearer_matches(b"Bearer s3cretX", "s3cret"));
        assert!(!bearer_matches(b"Basic s3cret", "s3cret"));
        assert!(!bearer_matches(b"s3cret", "s3cret"));
        assert!(!bearer_matches(b"", "s3cret"));
    }

    #[test]
    fn each_admin_path_takes_one_method() {
        assert_eq!(allowed_method("/metrics"), Some(Method::GET));
        assert_eq!(allowed_method("/admin/cache/purge"), Some(Method::POST));
        assert_eq!(allowed_method("/admin/nope"), None);
    }
}
