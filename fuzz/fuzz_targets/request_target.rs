//! Any bytes as a request target: normalizing never panics, and what it returns is normal
//! (no dot or empty segments, no escape of an unreserved character, uppercase hex, ASCII) and
//! normalizes to itself without a copy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_plugins::request_target::normalize;
use std::borrow::Cow;

fuzz_target!(|raw: &[u8]| {
    let Ok(out) = normalize(raw) else { return };
    assert!(out.is_ascii(), "{out}");
    let path = out.split('?').next().unwrap_or_default();
    assert!(path.starts_with('/'), "{out}");
    for bad in ["/./", "/../", "//"] {
        assert!(!path.contains(bad), "{out}");
    }
    assert!(!path.ends_with("/.") && !path.ends_with("/.."), "{out}");
    for (i, _) in path.match_indices('%') {
        let hex = &path[i + 1..i + 3];
        let v = u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{out}"));
        let unreserved = v.is_ascii_alphanumeric() || b"-._~".contains(&v);
        assert!(!unreserved && !matches!(v, 0 | b'/' | b'\\'), "{out}");
        assert_eq!(hex, hex.to_ascii_uppercase(), "{out}");
    }
    match normalize(out.as_bytes()) {
        Ok(Cow::Borrowed(again)) => assert_eq!(again, out),
        other => panic!("{out} normalized again to {other:?}"),
    }
});
