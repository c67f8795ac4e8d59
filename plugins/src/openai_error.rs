//! Errors the gateway itself produces, shaped like OpenAI's so SDKs surface them to users.

use serde_json::json;

/// One error sluice answers with instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
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
        }
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
        if !errors.is_empty() {
            error["errors"] = json!(errors);
        }
        json!({ "error": error }).to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::GatewayError;

    #[test]
    fn body_is_openai_shaped() {
        let e = GatewayError::body_too_large(8);
        assert_eq!(e.status, 413);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "body_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("8 bytes"));
    }
}
