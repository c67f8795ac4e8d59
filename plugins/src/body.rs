//! What policies need from a request body, parsed once. Only routes whose matchers or
//! policies need the body pay for this; passthrough routes never read it.

use serde_json::Value;

/// The parsed JSON body of an OpenAI-style request.
#[derive(Debug)]
pub struct RequestBody {
    json: Value,
}

impl RequestBody {
    /// Parses `bytes` as JSON; the error names what is wrong for the 400 message.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes)
            .map(|json| RequestBody { json })
            .map_err(|e| e.to_string())
    }

    /// The `model` field, when present and a string.
    #[must_use]
    pub fn model(&self) -> Option<&str> {
        self.json.get("model").and_then(Value::as_str)
    }

    /// Whether the client asked for an SSE stream.
    #[must_use]
    pub fn is_stream(&self) -> bool {
        self.json
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::RequestBody;

    #[test]
    fn reads_model_and_stream() {
        let b = RequestBody::parse(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(b.model(), Some("gpt-4o"));
        assert!(b.is_stream());
        let b = RequestBody::parse(br#"{"messages":[]}"#).unwrap();
        assert_eq!(b.model(), None);
        assert!(!b.is_stream());
    }

    #[test]
    fn rejects_non_json() {
        let err = RequestBody::parse(b"model=gpt").unwrap_err();
        assert!(err.contains("expected"), "{err}");
    }
}
