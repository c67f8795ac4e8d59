//! What policies need from a request body, parsed once. Only routes whose matchers or
//! policies need the body pay for this; passthrough routes never read it.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// The fields of an OpenAI-style request body that routing reads.
#[derive(Debug)]
pub struct RequestBody {
    model: Option<String>,
}

/// Reads only the fields routing needs; everything else is validated as JSON and skipped
/// without building values, which keeps large prompts cheap.
#[derive(Deserialize)]
struct Probe {
    #[serde(default, deserialize_with = "string_or_other")]
    model: Option<String>,
}

/// A `model` that is not a string counts as absent, as for a missing field.
fn string_or_other<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Model {
        Text(String),
        Other(IgnoredAny),
    }
    Ok(match Model::deserialize(d)? {
        Model::Text(s) => Some(s),
        Model::Other(_) => None,
    })
}

impl RequestBody {
    /// Parses `bytes` as a JSON object; the error names what is wrong for the 400 message.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice::<Probe>(bytes)
            .map(|p| RequestBody { model: p.model })
            .map_err(|e| e.to_string())
    }

    /// The `model` field, when present and a string.
    #[must_use]
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::RequestBody;

    #[test]
    fn reads_model() {
        let b = RequestBody::parse(
            br#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o","stream":true}"#,
        )
        .unwrap();
        assert_eq!(b.model(), Some("gpt-4o"));
        let b = RequestBody::parse(br#"{"messages":[]}"#).unwrap();
        assert_eq!(b.model(), None);
    }

    #[test]
    fn a_model_that_is_not_a_string_counts_as_absent() {
        let b = RequestBody::parse(br#"{"model":42,"stream":"yes"}"#).unwrap();
        assert_eq!(b.model(), None);
    }

    #[test]
    fn rejects_non_json_and_broken_json_anywhere() {
        let err = RequestBody::parse(b"model=gpt").unwrap_err();
        assert!(err.contains("expected"), "{err}");
        assert!(
            RequestBody::parse(br#"{"model":"a","messages":[{"content":"x"]}"#).is_err(),
            "broken nested JSON must still be a 400"
        );
        assert!(RequestBody::parse(br#"["not", "an", "object"]"#).is_err());
    }
}
