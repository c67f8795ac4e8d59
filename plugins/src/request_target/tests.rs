use super::*;
use proptest::prelude::*;

fn norm(target: &str) -> Result<String, TargetError> {
    normalize(target.as_bytes()).map(Cow::into_owned)
}

#[test]
fn a_normal_target_is_borrowed_as_is() {
    for t in [
        "/",
        "/v1/chat/completions",
        "/v1/chat/completions/",
        "/v1/files/file-abc:1@x;y=z!$&'()*+,",
        "/a/%20b/%C3%A9",
        "/a...b/.x/..y/~u_v-w",
        "/v1/models?limit=10&after=%zz/?x",
        "/?",
    ] {
        assert!(
            matches!(normalize(t.as_bytes()), Ok(Cow::Borrowed(s)) if s == t),
            "{t}"
        );
    }
}

#[test]
fn dot_segments_are_removed() {
    let cases = [
        ("/public/../v1/chat/completions", "/v1/chat/completions"),
        ("/v1/./chat/completions", "/v1/chat/completions"),
        ("/a/b/c/./../../g", "/a/g"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/..", "/"),
        ("/.", "/"),
        ("/./", "/"),
        ("/a/b/../../", "/"),
        ("/a/.../b", "/a/.../b"),
        ("/v1/chat/completions/..?x=/../", "/v1/chat/?x=/../"),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn slashes_are_merged_and_a_trailing_one_kept() {
    let cases = [
        ("/v1//chat/completions", "/v1/chat/completions"),
        ("//v1///chat//", "/v1/chat/"),
        ("//", "/"),
        ("/a//../b", "/b"),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn unreserved_escapes_are_decoded_before_dot_segments() {
    let cases = [
        ("/v1/chat/%63ompletions", "/v1/chat/completions"),
        ("/%76%31/chat/completions", "/v1/chat/completions"),
        ("/v1/x/%2E%2E/chat/completions", "/v1/chat/completions"),
        ("/v1/x/.%2e/chat", "/v1/chat"),
        ("/v1/%2E/chat", "/v1/chat"),
        ("/%7e%5F%2d", "/~_-"),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn other_escapes_get_uppercase_hex_and_illegal_bytes_are_encoded() {
    let cases = [
        ("/a%2fb", Err(TargetError::AmbiguousSeparator)),
        ("/a%3ab%c3%a9", Ok("/a%3Ab%C3%A9")),
        ("/a b", Ok("/a%20b")),
        ("/é", Ok("/%C3%A9")),
        ("/a{b}|\"<>^`", Ok("/a%7Bb%7D%7C%22%3C%3E%5E%60")),
        ("/q?a=é b&c=%zz\\", Ok("/q?a=%C3%A9%20b&c=%zz%5C")),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw), want.map(String::from), "{raw}");
    }
    assert_eq!(
        normalize(b"/a\xff/b").as_deref(),
        Ok("/a%FF/b"),
        "a byte that is not UTF-8"
    );
}

#[test]
fn absolute_form_becomes_origin_form() {
    let cases = [
        (
            "http://example.com/v1/chat/completions",
            "/v1/chat/completions",
        ),
        ("HTTPS://example.com:8443/v1/../v1/x?q=1", "/v1/x?q=1"),
        ("http://user@host/a", "/a"),
        ("http://host", "/"),
        ("http://host?q", "/?q"),
        ("http://[::1]:80//a", "/a"),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
    }
}

#[test]
fn what_has_no_single_meaning_is_refused() {
    use TargetError::*;
    let cases = [
        ("", NotAPath),
        ("*", NotAPath),
        ("example.com:443", NotAPath),
        ("v1/chat", NotAPath),
        ("ftp://host/a", NotAPath),
        ("http:/host/a", NotAPath),
        ("http:///a", NotAPath),
        ("/..", AboveRoot),
        ("/../x", AboveRoot),
        ("/a/../../x", AboveRoot),
        ("/a/%2E%2E/%2e%2e/x", AboveRoot),
        ("http://h/../x", AboveRoot),
        ("/v1%2Fchat/completions", AmbiguousSeparator),
        ("/v1%2fchat", AmbiguousSeparator),
        ("/v1%5Cchat", AmbiguousSeparator),
        ("/v1\\chat", AmbiguousSeparator),
        ("/a%00", EncodedNul),
        ("/%zz", BadEscape),
        ("/a%2", BadEscape),
        ("/a%", BadEscape),
        ("/a%g0", BadEscape),
        ("/a\tb", ForbiddenByte),
        ("/a\x7f", ForbiddenByte),
        ("/a#frag", ForbiddenByte),
        ("/a?q=\r\n", ForbiddenByte),
        ("http://h\x01/a", ForbiddenByte),
    ];
    for (raw, want) in cases {
        assert_eq!(norm(raw), Err(want), "{raw:?}");
    }
}

/// What a normal path never holds: dot or empty segments, escapes of unreserved characters.
fn assert_normal(out: &str) -> Result<(), TestCaseError> {
    let path = out.split('?').next().unwrap_or_default();
    prop_assert!(path.starts_with('/'), "{}", out);
    for bad in ["/./", "/../", "//"] {
        prop_assert!(!path.contains(bad), "{} holds {}", out, bad);
    }
    prop_assert!(!path.ends_with("/.") && !path.ends_with("/.."), "{}", out);
    for (i, _) in path.match_indices('%') {
        let v = u8::from_str_radix(&path[i + 1..i + 3], 16);
        prop_assert!(
            matches!(v, Ok(v) if stays_encoded(v)),
            "{} has a bad escape",
            out
        );
        prop_assert_eq!(&path[i + 1..i + 3], path[i + 1..i + 3].to_ascii_uppercase());
    }
    prop_assert!(out.is_ascii());
    Ok(())
}

/// Targets made mostly of the bytes that matter here: separators, dots and escapes.
fn target() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        6 => Just(b"/".to_vec()),
        3 => Just(b".".to_vec()),
        3 => Just(b"..".to_vec()),
        1 => Just(b"?".to_vec()),
        1 => Just(b"%".to_vec()),
        2 => Just(b"%2E".to_vec()),
        2 => Just(b"%2e".to_vec()),
        1 => Just(b"%2F".to_vec()),
        2 => Just(b"%41".to_vec()),
        2 => Just(b"%c3".to_vec()),
        1 => Just(b"http://h".to_vec()),
        8 => "[a-zA-Z0-9~_:@!]{1,3}".prop_map(String::into_bytes),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    (
        prop_oneof![Just(b"/".to_vec()), Just(Vec::new())],
        prop::collection::vec(piece, 0..24),
    )
        .prop_map(|(head, pieces)| head.into_iter().chain(pieces.concat()).collect())
}

proptest! {
    // A third of these targets normalize; the rest are refused.
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn normalizing_is_idempotent_and_the_output_is_normal(raw in target()) {
        if let Ok(out) = normalize(&raw) {
            assert_normal(&out)?;
            // Normalizing the output takes the fast path and changes nothing.
            prop_assert!(matches!(normalize(out.as_bytes()), Ok(Cow::Borrowed(again)) if again == out));
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_rewrite(raw in target()) {
        if is_normal(&raw) {
            let rewritten = rewrite(&raw);
            prop_assert_eq!(rewritten.as_deref().ok(), std::str::from_utf8(&raw).ok());
        }
    }
}
