use super::*;
use proptest::prelude::*;
use serde_json::json;
use serde_json::Number;
use std::collections::HashSet;
use unicode_normalization::UnicodeNormalization;

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
    let a = parse(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
    let b = parse(r#"{"messages":[{"content":"hi","role":"user"}],"temperature":0,"model":"m"}"#);
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
