//! Canonical cache keys. Two requests that differ only in how their JSON is spelled (key order,
//! number form, Unicode normalization, optionally whitespace in prompt text) must find the same
//! entry, while anything that can change the answer must change the key. The key is an
//! xxh3-128 of the route, path, scope and the canonical form of the fields that matter.

use super::CacheKey;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
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

/// Every integer up to 2^53 is exact in an f64, so such an integral float prints as that integer.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

/// OpenAI's sampling temperature when a request sets none.
const DEFAULT_TEMPERATURE: f64 = 1.0;

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

/// When a route caches at all (`when:` in the route's cache policy). Default: always.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheCondition {
    /// Cache only requests whose `temperature` (1.0 when absent) is at most this.
    pub max_temperature: Option<f64>,
    /// Cache requests that set a `seed`.
    pub seed: bool,
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

// === canonical JSON ===

/// Writes `value` in canonical form (RFC 8785 style) to `out`.
pub fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map.iter().map(|(k, v)| (k.as_str(), v)), out),
    }
}

/// An object with NFC keys in UTF-16 order, whatever order (or map type) they arrive in.
fn write_object<'a>(fields: impl Iterator<Item = (&'a str, &'a Value)>, out: &mut Vec<u8>) {
    let mut fields: Vec<(Cow<'a, str>, &'a Value)> = fields.map(|(k, v)| (nfc(k), v)).collect();
    fields.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    out.push(b'{');
    let mut first = true;
    for (i, (key, value)) in fields.iter().enumerate() {
        // Keys equal after NFC: the last one wins, as when parsing a document with a repeated key.
        if fields.get(i + 1).is_some_and(|next| next.0 == *key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_string(key, out);
        out.push(b':');
        canonical_json(value, out);
    }
    out.push(b'}');
}

/// One number form: integral values up to 2^53 as integers, other floats as serde_json's
/// shortest round-trip form (`0.1`, `1e-7`, `1e+300`).
fn write_number(n: &Number, out: &mut Vec<u8>) {
    let text = match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u.to_string(),
        (None, Some(i), _) => i.to_string(),
        (None, None, Some(f)) if f.fract() == 0.0 && f.abs() <= MAX_EXACT_INTEGER => {
            (f as i64).to_string()
        }
        _ => n.to_string(),
    };
    out.extend_from_slice(text.as_bytes());
}

/// A JSON string of the NFC form of `s`, escaped exactly as serde_json escapes.
fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let s = nfc(s);
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `s` in Unicode NFC, borrowed when it already is (the common case).
fn nfc(s: &str) -> Cow<'_, str> {
    if is_nfc_quick(s.chars()) == IsNormalized::Yes {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.nfc().collect())
    }
}

// === impl CacheCondition ===

impl CacheCondition {
    /// Whether a request with this body may be served from and stored in the cache.
    #[must_use]
    pub fn admits(&self, body: &Map<String, Value>) -> bool {
        if self.max_temperature.is_none() && !self.seed {
            return true;
        }
        let cool = self.max_temperature.is_some_and(|max| {
            // A temperature that is not a number is not admitted: the upstream will reject it.
            match body.get("temperature") {
                None | Some(Value::Null) => DEFAULT_TEMPERATURE <= max,
                Some(t) => t.as_f64().is_some_and(|t| t <= max),
            }
        });
        let seeded = self.seed && body.get("seed").is_some_and(|s| !s.is_null());
        cool || seeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashSet;

    const CTX: KeyContext<'static> = KeyContext {
        route: "chat",
        path: "/v1/chat/completions",
        scope: b"",
        variant: "",
    };

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn key_of(policy: &KeyPolicy, v: Value) -> CacheKey {
        policy.key(&obj(v), &CTX)
    }

    fn canon(v: &Value) -> String {
        let mut out = Vec::new();
        canonical_json(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn key_order_does_not_matter() {
        let p = KeyPolicy::new(None, false);
        let a =
            parse(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let b =
            parse(r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"m"}"#);
        assert_eq!(key_of(&p, a), key_of(&p, b));
    }

    #[test]
    fn numbers_have_one_form() {
        for (texts, want) in [
            (&["0", "0.0", "0e0", "-0.0", "-0"][..], "0"),
            (&["1e2", "100.0", "100", "100e0"][..], "100"),
            (&["-3", "-3.0", "-0.3e1"][..], "-3"),
            (&["1.5", "15e-1"][..], "1.5"),
            (&["9007199254740992.0"][..], "9007199254740992"),
            (&["18446744073709551615"][..], "18446744073709551615"),
            (&["-9223372036854775808"][..], "-9223372036854775808"),
            (&["1e300", "1E+300"][..], "1e+300"),
            // Found by the canonical_json fuzz target: without correctly rounded parsing the
            // integer and its own canonical form were one bit apart.
            (
                &["1111111111111111111111", "1.1111111111111111e+21"][..],
                "1.1111111111111111e+21",
            ),
        ] {
            for text in texts {
                assert_eq!(canon(&parse(text)), want, "{text}");
            }
        }
        let p = KeyPolicy::new(None, false);
        let keys: HashSet<_> = ["0", "0.0", "0e0"]
            .iter()
            .map(|t| key_of(&p, parse(&format!(r#"{{"model":"m","temperature":{t}}}"#))))
            .collect();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn strings_are_nfc_and_escaped_as_serde_json_does() {
        assert_eq!(canon(&json!("\u{e9}")), canon(&json!("e\u{301}")));
        assert_eq!(canon(&json!({"e\u{301}": 1})), "{\"\u{e9}\":1}");
        let p = KeyPolicy::new(None, false);
        let nfc = json!({"model": "m", "messages": [{"role": "user", "content": "caf\u{e9}"}]});
        let nfd = json!({"model": "m", "messages": [{"role": "user", "content": "cafe\u{301}"}]});
        assert_eq!(key_of(&p, nfc), key_of(&p, nfd));
        let tricky = json!("q\" b\\ n\n t\t r\r c\u{1} d\u{7f} b\u{8} f\u{c} \u{1f600} /");
        assert_eq!(canon(&tricky), serde_json::to_string(&tricky).unwrap());
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // In UTF-8 byte order U+FF61 comes first; in UTF-16 the surrogate D83D of U+1F600 does.
        let v = json!({"\u{ff61}": 1, "\u{1f600}": 2, "b": 3, "a": 4, "": 5});
        assert_eq!(
            canon(&v),
            "{\"\":5,\"a\":4,\"b\":3,\"\u{1f600}\":2,\"\u{ff61}\":1}"
        );
    }

    #[test]
    fn whitespace_collapses_in_prompt_text_only_when_asked() {
        let spaced = json!({"model": "m", "instructions": " be \u{3000} brief ", "prompt": ["x \n y"],
            "input": "  a  ", "messages": [{"role": "user", "content": "\t hello \n\n world  "},
            {"role": "user", "content": [{"type": "text", "text": "a  b "}, {"type": "image_url", "image_url": {"url": "u"}}]}]});
        let tight = json!({"model": "m", "instructions": "be brief", "prompt": ["x y"],
            "input": "a", "messages": [{"role": "user", "content": "hello world"},
            {"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "image_url", "image_url": {"url": "u"}}]}]});
        let on = KeyPolicy::new(None, true);
        let off = KeyPolicy::new(None, false);
        assert_eq!(key_of(&on, spaced.clone()), key_of(&on, tight.clone()));
        assert_ne!(key_of(&off, spaced), key_of(&off, tight));
        let upper = json!({"model": "m", "messages": [{"role": "user", "content": "Hello World"}]});
        let lower = json!({"model": "m", "messages": [{"role": "user", "content": "hello world"}]});
        assert_ne!(key_of(&on, upper), key_of(&on, lower), "never lower-cased");
        let tool = |d: &str| json!({"model": "m", "tools": [{"type": "function", "function": {"name": "f", "description": d}}]});
        assert_ne!(
            key_of(&on, tool("a  b")),
            key_of(&on, tool("a b")),
            "schemas untouched"
        );
    }

    #[test]
    fn fields_outside_the_list_and_null_fields_do_not_change_the_key() {
        let p = KeyPolicy::new(None, false);
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let extra = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "u1",
            "stream": true, "stream_options": {"include_usage": true}, "metadata": {"k": "v"}, "seed": null});
        assert_eq!(key_of(&p, base), key_of(&p, extra));
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let p = KeyPolicy::new(None, false);
        let chat = |model: &str, content: &str| {
            obj(json!({"model": model, "messages": [{"role": "user", "content": content}]}))
        };
        let base = chat("m", "hi");
        let with = |route, path, scope| KeyContext {
            route,
            path,
            scope,
            variant: "",
        };
        let keys = [
            p.key(&base, &CTX),
            p.key(&chat("m", "ho"), &CTX),
            p.key(&chat("m", "Hi"), &CTX),
            p.key(&chat("M", "hi"), &CTX),
            p.key(&chat("m2", "hi"), &CTX),
            p.key(&base, &with("other", CTX.path, b"")),
            p.key(&base, &with(CTX.route, "/v1/completions", b"")),
            p.key(&base, &with(CTX.route, CTX.path, b"team-a")),
            p.key(&base, &with("chat/v1", "/chat/completions", b"")),
            p.key(
                &base,
                &KeyContext {
                    variant: "candidate",
                    ..CTX
                },
            ),
        ];
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
    }

    #[test]
    fn a_custom_include_list_keys_only_its_fields() {
        let p = KeyPolicy::new(Some(vec!["model".into(), "model".into()]), false);
        let a = json!({"model": "m", "messages": [{"role": "user", "content": "a"}]});
        let b = json!({"model": "m", "messages": [{"role": "user", "content": "b"}]});
        assert_eq!(key_of(&p, a), key_of(&p, b));
        assert_ne!(
            key_of(&p, json!({"model": "m"})),
            key_of(&p, json!({"model": "n"}))
        );
    }

    #[test]
    fn cache_condition_admits() {
        let admits = |c: &CacheCondition, v: Value| c.admits(&obj(v));
        assert!(admits(
            &CacheCondition::default(),
            json!({"temperature": 2})
        ));
        let cool = CacheCondition {
            max_temperature: Some(0.2),
            seed: false,
        };
        assert!(admits(&cool, json!({"temperature": 0})));
        assert!(admits(&cool, json!({"temperature": 0.2})));
        assert!(!admits(&cool, json!({"temperature": 0.7})));
        assert!(!admits(&cool, json!({})), "absent means 1.0");
        assert!(!admits(&cool, json!({"temperature": null})));
        assert!(!admits(&cool, json!({"temperature": "0"})));
        let one = CacheCondition {
            max_temperature: Some(1.0),
            seed: false,
        };
        assert!(admits(&one, json!({})));
        let seeded = CacheCondition {
            max_temperature: None,
            seed: true,
        };
        assert!(admits(&seeded, json!({"seed": 7})));
        assert!(!admits(&seeded, json!({"seed": null})));
        assert!(!admits(&seeded, json!({"temperature": 0})));
        let both = CacheCondition {
            max_temperature: Some(0.2),
            seed: true,
        };
        assert!(admits(&both, json!({"temperature": 0.9, "seed": 1})));
        assert!(admits(&both, json!({"temperature": 0})));
        assert!(!admits(&both, json!({"temperature": 0.9})));
    }

    // === properties ===

    fn number() -> BoxedStrategy<Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // serde_json (without `float_roundtrip`) misreads some 17-digit floats: not ours to test.
            any::<f64>().prop_filter_map("finite, read back exactly", |f| {
                let n = Number::from_f64(f)?;
                (serde_json::from_str::<f64>(&n.to_string()).ok()? == f).then_some(Value::Number(n))
            }),
            (-1000i64..1000).prop_map(|i| Value::from(i as f64)),
            (-3i64..3).prop_map(Value::from),
        ]
        .boxed()
    }

    fn string() -> BoxedStrategy<String> {
        let tricky = "[ a-c\u{e9}\u{300}\u{301}\u{ff61}\u{1f600}\"\\\\\n\t\u{1}\u{3000}]{0,6}";
        prop_oneof![any::<String>(), tricky].boxed()
    }

    /// Nested JSON with unicode strings (NFC or not), ints and floats.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number(),
            string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((string(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Values from a tiny domain, so two draws are often canonically equal.
    fn small_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(json!(0)),
            Just(json!(0.0)),
            Just(json!(1)),
            Just(json!(1.5)),
            Just(json!("\u{e9}")),
            Just(json!("e\u{301}")),
            Just(Value::Null),
        ];
        leaf.prop_recursive(2, 8, 2, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec((prop_oneof![Just("a"), Just("b")], inner), 0..3).prop_map(
                    |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
                ),
            ]
        })
    }

    /// The same value spelled differently: NFD strings and keys, small integers as floats.
    fn respell(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(s.nfd().collect()),
            Value::Number(n) => match n.as_i64() {
                Some(i) if i.unsigned_abs() <= 1 << 53 => json!(i as f64),
                _ => v.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(respell).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.nfd().collect(), respell(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// JSON text of `v` with each object's entries rotated by `turn`: another key order.
    fn rotated_text(v: &Value, turn: usize) -> String {
        match v {
            Value::Array(a) => format!(
                "[{}]",
                a.iter()
                    .map(|x| rotated_text(x, turn))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Value::Object(m) => {
                let mut entries: Vec<String> = m
                    .iter()
                    .map(|(k, x)| format!("{}:{}", Value::from(k.as_str()), rotated_text(x, turn)))
                    .collect();
                let len = entries.len().max(1);
                entries.rotate_left(turn % len);
                format!("{{{}}}", entries.join(","))
            }
            other => other.to_string(),
        }
    }

    fn message_key(v: &Value) -> CacheKey {
        key_of(
            &KeyPolicy::new(None, false),
            json!({"model": "m", "messages": v}),
        )
    }

    proptest! {
        // No regression files: a failure prints its minimal input.
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn canonical_form_is_idempotent(v in json_value()) {
            let once = canon(&v);
            prop_assert_eq!(canon(&parse(&once)), once);
        }

        #[test]
        fn respelling_keeps_canonical_form_and_key(v in json_value()) {
            prop_assert_eq!(canon(&respell(&v)), canon(&v));
            prop_assert_eq!(message_key(&respell(&v)), message_key(&v));
        }

        #[test]
        fn another_key_order_keeps_the_key(v in json_value(), turn in 0usize..5) {
            let moved = parse(&rotated_text(&v, turn));
            prop_assert_eq!(message_key(&moved), message_key(&v));
        }

        #[test]
        fn equal_canonical_bytes_iff_equal_key(a in small_value(), b in small_value()) {
            prop_assert_eq!(canon(&a) == canon(&b), message_key(&a) == message_key(&b));
        }

        #[test]
        fn random_values_keep_equivalence(a in json_value(), b in json_value()) {
            prop_assert_eq!(canon(&a) == canon(&b), message_key(&a) == message_key(&b));
        }
    }
}
