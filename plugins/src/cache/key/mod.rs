//! Canonical cache keys. Two requests that differ only in how their JSON is spelled (key order,
//! number form, Unicode normalization, optionally whitespace in prompt text) must find the same
//! entry, while anything that can change the answer must change the key. The key is an
//! xxh3-128 of the route, path, scope and the canonical form of the fields that matter.

mod canonical;
mod when;

pub use canonical::canonical_json;
pub use when::CacheCondition;

use super::CacheKey;
use canonical::write_object;
use serde_json::{Map, Value};
use std::borrow::Cow;
use xxhash_rust::xxh3::Xxh3;

/// Fields that make up the key by default.
pub const DEFAULT_INCLUDE: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "input",
    "instructions",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "tools",
    "tool_choice",
    "response_format",
    "seed",
    "stop",
    "n",
    "functions",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "reasoning_effort",
];

/// Hashed ahead of everything else, so a change of canonical form is a miss, not a collision.
const DOMAIN: &[u8] = b"sluice.cache.key/v1";

/// The fields whose text `collapse_whitespace` folds.
const TEXT_FIELDS: &[&str] = &["messages", "prompt", "input", "instructions"];

/// Content-part types whose `text` is prompt text (Chat Completions and Responses API).
const TEXT_PART_TYPES: &[&str] = &["text", "input_text", "output_text"];

/// Which body fields make up a route's key, and how their text is normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Sorted and deduplicated, so a field listed twice is hashed once.
    include: Vec<String>,
    collapse_whitespace: bool,
}

/// What besides the body tells two requests apart.
#[derive(Debug, Clone, Copy)]
pub struct KeyContext<'a> {
    pub route: &'a str,
    pub path: &'a str,
    /// hashed API key, header value, or empty for scope none
    pub scope: &'a [u8],
    /// The A/B variant (empty without a split), so variants never share entries.
    pub variant: &'a str,
}
// === impl KeyPolicy ===

impl KeyPolicy {
    /// A policy over `include` (`None`: [`DEFAULT_INCLUDE`]).
    #[must_use]
    pub fn new(include: Option<Vec<String>>, collapse_whitespace: bool) -> KeyPolicy {
        let mut include =
            include.unwrap_or_else(|| DEFAULT_INCLUDE.iter().map(|f| (*f).to_string()).collect());
        include.sort();
        include.dedup();
        KeyPolicy {
            include,
            collapse_whitespace,
        }
    }

    /// The key of a parsed request body for this route, path and scope.
    #[must_use]
    pub fn key(&self, body: &Map<String, Value>, ctx: &KeyContext<'_>) -> CacheKey {
        let mut hasher = Xxh3::new();
        hasher.update(DOMAIN);
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for part in [
            ctx.route.as_bytes(),
            ctx.path.as_bytes(),
            ctx.scope,
            ctx.variant.as_bytes(),
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let mut canonical = Vec::with_capacity(512);
        self.canonical_fields(body, &mut canonical);
        hasher.update(&canonical);
        CacheKey(hasher.digest128())
    }

    /// The canonical form of the object of included fields: the body part of the key.
    fn canonical_fields(&self, body: &Map<String, Value>, out: &mut Vec<u8>) {
        // A field set to null counts as absent: the API reads both as "use the default".
        let fields: Vec<(&str, Cow<'_, Value>)> = self
            .include
            .iter()
            .filter_map(|name| {
                let value = body.get(name).filter(|v| !v.is_null())?;
                let value = if self.collapse_whitespace && TEXT_FIELDS.contains(&name.as_str()) {
                    let mut owned = value.clone();
                    collapse_text(&mut owned);
                    Cow::Owned(owned)
                } else {
                    Cow::Borrowed(value)
                };
                Some((name.as_str(), value))
            })
            .collect();
        write_object(fields.iter().map(|(k, v)| (*k, v.as_ref())), out);
    }
}

/// Folds whitespace in the prompt text of `messages`, `prompt`, `input` or `instructions`.
fn collapse_text(value: &mut Value) {
    match value {
        Value::String(s) => *s = collapse(s),
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(s) => *s = collapse(s),
                    Value::Object(_) => collapse_message(item),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Folds whitespace in a message's string `content` or in the `text` of its text parts.
fn collapse_message(message: &mut Value) {
    match message.get_mut("content") {
        Some(Value::String(s)) => *s = collapse(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                let is_text = part
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| TEXT_PART_TYPES.contains(&t));
                if let (true, Some(Value::String(s))) = (is_text, part.get_mut("text")) {
                    *s = collapse(s);
                }
            }
        }
        _ => {}
    }
}

/// `s` with every run of Unicode whitespace folded to one space and both ends trimmed.
fn collapse(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests;
