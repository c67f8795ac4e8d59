//! The properties each fuzz target checks, as plain functions: `cargo fuzz` feeds them
//! generated inputs (`make fuzz`), and `replay.rs` feeds them every saved corpus file
//! and regression case on stable (`make test`). Each panics when its property fails.

#[cfg(test)]
mod replay;

use sluice::config::server_limits::ServerLimits;
use sluice::listener::{scan_arriving, Scanned};
use sluice_plugins::cache::key::canonical_json;
use sluice_plugins::request_target::normalize;
use std::borrow::Cow;

/// Request head scan: never panics, and any split of the bytes into reads decides what the
/// whole does (a limit cannot be dodged by sending the head in pieces; a head over two limits
/// may name either). The first bytes of
/// the input choose the split points.
pub fn head_scan(data: &[u8]) {
    let (cuts, bytes) = cut_points(data);
    let limits = ServerLimits {
        max_header_bytes: 256,
        max_uri_bytes: 64,
        max_headers: 8,
        ..ServerLimits::default()
    };
    let whole = scan_arriving(bytes, &[], &limits);
    let pieces = scan_arriving(bytes, &cuts, &limits);
    let every_byte: Vec<usize> = (1..bytes.len()).collect();
    let bytewise = scan_arriving(bytes, &every_byte, &limits);
    // A head over two limits at once may be refused for either, depending on which is seen
    // first; whether it is refused may not depend on how it arrives.
    let decision = |s: &Scanned| match s {
        Scanned::Refused(_) => None,
        other => Some(format!("{other:?}")),
    };
    assert_eq!(
        decision(&whole),
        decision(&pieces),
        "split at {cuts:?}: {bytes:?}"
    );
    assert_eq!(
        decision(&whole),
        decision(&bytewise),
        "byte by byte: {bytes:?}"
    );
    if whole == Scanned::Complete {
        assert!(bytes.contains(&b'\n'));
    }
}

/// Config text: loading and compiling never panic, and every error names a position in the
/// file. (Compiling resolves no host name: endpoints are resolved on first use.)
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = match sluice::config::load::load_str("fuzz.yaml", text, &|_| None) {
        Ok(loaded) => loaded,
        Err(errors) => {
            assert_errors_located(&errors.to_string());
            return;
        }
    };
    let Ok(metrics) = sluice_plugins::metrics::Metrics::new("fuzz") else {
        return;
    };
    let shared = sluice::config::SharedState::new(metrics);
    if let Err(errors) = sluice::config::compile(&loaded, &shared) {
        assert_errors_located(&errors.to_string());
    }
}

fn assert_errors_located(text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.starts_with("fuzz.yaml:"),
            "an error without its place: {line}"
        );
    }
}

/// Prometheus text exposition: parsing never panics, nor does adding up a route's totals.
pub fn exposition(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(scrape) = sluice_plugins::ab::exposition::parse(&text) {
        let _ = sluice_plugins::ab::exposition::totals("chat", &scrape);
    }
}

/// SSE: never panics; cutting the stream into chunks anywhere (the first bytes choose where,
/// and byte by byte) yields the events of the whole, their bytes add up to the stream, and each
/// event's data reads the same.
pub fn sse(data: &[u8]) {
    let (cuts, stream) = cut_points(data);
    let whole: Vec<(Vec<u8>, bool, Option<Vec<u8>>)> = sluice_plugins::sse::events(stream)
        .map(|e| (e.raw.to_vec(), e.terminated, e.data().map(|d| d.into_owned())))
        .collect();
    let joined: Vec<u8> = whole.iter().flat_map(|(raw, _, _)| raw.clone()).collect();
    assert_eq!(joined, stream, "the events' bytes are not the stream");
    let every_byte: Vec<usize> = (1..stream.len()).collect();
    for cuts in [cuts, every_byte] {
        let mut splitter = sluice_plugins::sse::Splitter::default();
        let mut pieces = Vec::new();
        let mut each = |e: sluice_plugins::sse::Event<'_>| {
            pieces.push((e.raw.to_vec(), e.terminated, e.data().map(|d| d.into_owned())));
        };
        let mut start = 0;
        for cut in cuts.iter().copied().filter(|&c| c <= stream.len()) {
            let cut = cut.max(start);
            splitter.push(&stream[start..cut], &mut each);
            start = cut;
        }
        splitter.push(&stream[start..], &mut each);
        splitter.finish(&mut each);
        assert_eq!(pieces, whole, "split at {cuts:?}: {stream:?}");
    }
}

/// The first byte says how many of the next bytes are cut points; the rest is the input.
fn cut_points(data: &[u8]) -> (Vec<usize>, &[u8]) {
    match data.split_first() {
        Some((&n, rest)) => {
            let n = usize::from(n % 8).min(rest.len());
            let mut cuts: Vec<usize> = rest[..n].iter().map(|&b| usize::from(b)).collect();
            cuts.sort_unstable();
            (cuts, &rest[n..])
        }
        None => (Vec::new(), data),
    }
}

/// Canonical JSON (what cache keys hash): never panics, is valid JSON,
/// and canonicalizing it again changes nothing.
pub fn canonical(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let mut once = Vec::new();
    canonical_json(&value, &mut once);
    let reparsed: serde_json::Value = match serde_json::from_slice(&once) {
        Ok(v) => v,
        Err(e) => panic!(
            "canonical form is not JSON ({e}): {}",
            String::from_utf8_lossy(&once)
        ),
    };
    let mut twice = Vec::new();
    canonical_json(&reparsed, &mut twice);
    assert_eq!(
        Cow::from(String::from_utf8_lossy(&once)),
        String::from_utf8_lossy(&twice),
        "not a fixed point"
    );
}

/// Request target: normalizing never panics, and what it returns is normal (no dot or empty
/// segments, no escape of an unreserved character, uppercase hex, ASCII) and normalizes to
/// itself without a copy.
pub fn request_target(raw: &[u8]) {
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
}
