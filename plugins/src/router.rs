//! Route selection: first match wins over path prefix, methods, headers and a glob on the
//! body's `model`. Matching is split in two steps so that a request's body is read only
//! when the first route that could match actually needs it.

use crate::glob::Glob;
use http::header::HeaderName;
use http::{HeaderMap, Method};

/// What one route matches on. Empty `methods` and `headers` match anything.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub path_prefix: String,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, String)>,
    pub model: Option<Glob>,
}

impl RouteMatcher {
    /// Whether the request line and headers match (the body is not considered).
    #[must_use]
    pub fn matches_head(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        path.starts_with(&self.path_prefix)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|(name, want)| {
                headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.as_bytes() == want.as_bytes())
            })
    }

    /// Whether the body's model (None when absent) satisfies the model glob.
    #[must_use]
    pub fn matches_model(&self, model: Option<&str>) -> bool {
        match (&self.model, model) {
            (None, _) => true,
            (Some(glob), Some(m)) => glob.matches(m),
            (Some(_), None) => false,
        }
    }
}

/// The outcome of matching without the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadMatch {
    /// This route matches whatever the body says.
    Route(usize),
    /// A route needs the body's model to decide; read the body and call [`Router::select_with_model`].
    NeedsBody,
    NoRoute,
}

/// An ordered route table.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<RouteMatcher>,
}

impl Router {
    #[must_use]
    pub fn new(routes: Vec<RouteMatcher>) -> Self {
        Router { routes }
    }

    /// First step: match on the request head alone.
    #[must_use]
    pub fn select_head(&self, method: &Method, path: &str, headers: &HeaderMap) -> HeadMatch {
        for (i, r) in self.routes.iter().enumerate() {
            if r.matches_head(method, path, headers) {
                return if r.model.is_some() {
                    HeadMatch::NeedsBody
                } else {
                    HeadMatch::Route(i)
                };
            }
        }
        HeadMatch::NoRoute
    }

    /// Second step, once the body is parsed: first route matching head and model.
    #[must_use]
    pub fn select_with_model(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        model: Option<&str>,
    ) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.matches_head(method, path, headers) && r.matches_model(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn route(
        prefix: &str,
        methods: &[Method],
        headers: &[(&str, &str)],
        model: Option<&str>,
    ) -> RouteMatcher {
        RouteMatcher {
            path_prefix: prefix.into(),
            methods: methods.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.to_string()))
                .collect(),
            model: model.map(Glob::new),
        }
    }

    fn table() -> Router {
        Router::new(vec![
            route("/v1/chat", &[Method::POST], &[("x-team", "a")], None),
            route("/v1/chat", &[Method::POST], &[], Some("gpt-4*")),
            route("/v1/chat", &[Method::POST], &[], None),
            route("/", &[], &[], None),
        ])
    }

    #[test]
    fn header_route_wins_first() {
        let mut h = HeaderMap::new();
        h.insert("x-team", HeaderValue::from_static("a"));
        assert_eq!(
            table().select_head(&Method::POST, "/v1/chat/completions", &h),
            HeadMatch::Route(0)
        );
    }

    #[test]
    fn model_route_needs_body_then_decides() {
        let h = HeaderMap::new();
        let t = table();
        assert_eq!(
            t.select_head(&Method::POST, "/v1/chat/completions", &h),
            HeadMatch::NeedsBody
        );
        assert_eq!(
            t.select_with_model(&Method::POST, "/v1/chat/completions", &h, Some("gpt-4o")),
            Some(1)
        );
        assert_eq!(
            t.select_with_model(&Method::POST, "/v1/chat/completions", &h, Some("llama3")),
            Some(2)
        );
        assert_eq!(
            t.select_with_model(&Method::POST, "/v1/chat/completions", &h, None),
            Some(2)
        );
    }

    #[test]
    fn method_mismatch_falls_through_to_catch_all() {
        let h = HeaderMap::new();
        assert_eq!(
            table().select_head(&Method::GET, "/v1/chat/completions", &h),
            HeadMatch::Route(3)
        );
        assert_eq!(
            table().select_head(&Method::GET, "/v1/models", &h),
            HeadMatch::Route(3)
        );
    }

    #[test]
    fn no_route_when_nothing_matches() {
        let t = Router::new(vec![route("/v1", &[], &[], None)]);
        assert_eq!(
            t.select_head(&Method::GET, "/health", &HeaderMap::new()),
            HeadMatch::NoRoute
        );
    }
}
