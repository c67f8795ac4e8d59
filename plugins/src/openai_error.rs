//! Errors the gateway itself produces, shaped like OpenAI's so SDKs surface them to users.

use serde_json::json;
use std::time::Duration;

/// One error sluice answers with instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    /// OpenAI's `param`: here the name of the limit that refused the request.
    pub param: Option<String>,
    /// When to try again (`retry-after` and `retry-after-ms` headers).
    pub retry_after: Option<Duration>,
}

impl GatewayError {
    #[must_use]
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        GatewayError {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
            retry_after: None,
        }
    }

    /// A request or token limit refused the request; `what` is `requests` or `tokens`.
    #[must_use]
    pub fn rate_limited(limit: &str, what: &str, retry_after: Duration) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for {what} (limit `{limit}`). Please try again in {}.",
                human_duration(retry_after)
            ),
        );
        e.param = Some(limit.to_string());
        e.retry_after = Some(retry_after);
        e
    }

    /// The upstream is at its concurrency limit and its queue is full.
    #[must_use]
    pub fn queue_full(upstream: &str) -> Self {
        let mut e = Self::new(
            503,
            "server_overloaded",
            "queue_full",
            format!("upstream {upstream} is at capacity and its queue is full"),
        );
        e.retry_after = Some(Duration::from_secs(1));
        e
    }

    /// The request waited for a concurrency slot longer than the queue's timeout.
    #[must_use]
    pub fn queue_timeout(upstream: &str, waited: Duration) -> Self {
        let mut e = Self::new(
            503,
            "server_overloaded",
            "queue_timeout",
            format!(
                "upstream {upstream} is at capacity: no slot within {}",
                human_duration(waited)
            ),
        );
        e.retry_after = Some(Duration::from_secs(1));
        e
    }

    #[must_use]
    pub fn bad_json(detail: &str) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            "invalid_json",
            format!("request body is not valid JSON: {detail}"),
        )
    }

    /// 400: `x-sluice-variant` names no variant of the route.
    #[must_use]
    pub fn unknown_variant(asked: &str, known: &[&str]) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            "unknown_variant",
            format!(
                "x-sluice-variant `{asked}` is not a variant of this route (variants: {})",
                known.join(", ")
            ),
        )
    }

    /// 400: the request target cannot be normalized (an encoded slash, `..` above the root...).
    #[must_use]
    pub fn invalid_path(reason: &str) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            "invalid_path",
            format!("request path refused: {reason}"),
        )
    }

    #[must_use]
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "no_route",
            format!("no route matches {method} {path}"),
        )
    }

    #[must_use]
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "body_too_large",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    #[must_use]
    pub fn upstream_failed(upstream: &str, detail: &str) -> Self {
        Self::new(
            502,
            "upstream_error",
            "upstream_failed",
            format!("upstream {upstream} failed: {detail}"),
        )
    }

    #[must_use]
    pub fn no_endpoint(upstream: &str) -> Self {
        Self::new(
            503,
            "upstream_error",
            "no_healthy_upstream",
            format!("upstream {upstream} has no endpoint available"),
        )
    }

    #[must_use]
    pub fn upstream_timeout(upstream: &str, what: &str) -> Self {
        Self::new(
            504,
            "upstream_error",
            "upstream_timeout",
            format!("upstream {upstream} timed out waiting for {what}"),
        )
    }

    /// The JSON body: `{"error":{"message","type","code"}}`.
    #[must_use]
    pub fn body(&self) -> Vec<u8> {
        self.body_with_errors(&[])
    }

    /// The JSON body with an `errors` list of details (e.g. each config problem), when any.
    #[must_use]
    pub fn body_with_errors(&self, errors: &[String]) -> Vec<u8> {
        let mut error = json!({"message": self.message, "type": self.kind, "code": self.code});
        if let Some(param) = &self.param {
            error["param"] = json!(param);
        }
        if !errors.is_empty() {
            error["errors"] = json!(errors);
        }
        json!({ "error": error }).to_string().into_bytes()
    }
}

/// A duration as OpenAI writes it in messages and `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`.
#[must_use]
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{}ms", ms.max(u128::from(d > Duration::ZERO)));
    }
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        let text = format!("{secs:.3}");
        return format!("{}s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    let whole = d.as_secs();
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::{human_duration, GatewayError};
    use std::time::Duration;

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::body_too_large(8);
        assert_eq!(e.status, 413);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "body_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("8 bytes"));
        assert!(v["error"].get("param").is_none());
    }

    #[test]
    fn rate_limited_names_the_limit_and_when_to_retry() {
        let e = GatewayError::rate_limited("per-key", "requests", Duration::from_millis(1500));
        assert_eq!(
            (e.status, e.retry_after),
            (429, Some(Duration::from_millis(1500)))
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        assert_eq!(v["error"]["param"], "per-key");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("requests") && message.contains("1.5s"),
            "{message}"
        );
    }

    #[test]
    fn durations_read_like_openai_headers() {
        let ms = Duration::from_millis;
        assert_eq!(human_duration(ms(0)), "0ms");
        assert_eq!(human_duration(Duration::from_micros(300)), "1ms");
        assert_eq!(human_duration(ms(20)), "20ms");
        assert_eq!(human_duration(ms(1000)), "1s");
        assert_eq!(human_duration(ms(1500)), "1.5s");
        assert_eq!(human_duration(ms(360_000)), "6m0s");
        assert_eq!(human_duration(ms(3_723_000)), "1h2m3s");
    }
}
