//! Canonical JSON (RFC 8785 style): one byte form for every spelling of the same document
//! (key order, number form, Unicode normalization), so the key hashes meaning, not spelling.

use serde_json::{Number, Value};
use std::borrow::Cow;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Every integer up to 2^53 is exact in an f64, so such an integral float prints as that integer.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

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
pub(super) fn write_object<'a>(
    fields: impl Iterator<Item = (&'a str, &'a Value)>,
    out: &mut Vec<u8>,
) {
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
