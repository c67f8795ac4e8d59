//! `Expect: 100-continue` (curl sends it for bodies over 1 MiB): sluice answers 100 itself
//! before reading the body, and the client gets the upstream's final answer, not the 100.

use sluice_e2e::{chat_body, config, sha256, Gateway, Mock};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends headers with `Expect: 100-continue`, waits for the interim answer, then the body.
/// Returns (interim status line, final response text).
fn post_expecting_continue(gw: &Gateway, path: &str, body: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(gw.url.trim_start_matches("http://")).unwrap();
    // Only a hang runs into this; an interim answer comes at once.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 64];
    let n = s
        .read(&mut interim)
        .expect("an interim answer before the body is sent");
    let interim = String::from_utf8_lossy(&interim[..n]).into_owned();
    if interim.starts_with("HTTP/1.1 100") {
        s.write_all(body).unwrap();
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    (interim, String::from_utf8_lossy(&rest).into_owned())
}

#[test]
fn expect_continue_on_body_and_passthrough_routes() {
    let a = Mock::start("a", &[]);
    let routes = "  - name: chat\n    match: { path_prefix: /v1/chat, model: \"*\" }\n    upstream: up\n  - name: rest\n    upstream: up\n";
    let gw = Gateway::start(&config(&[&a.url], "", routes));
    let body = chat_body("m", 1_500_000, false);
    for path in ["/v1/chat/completions", "/mock/echo"] {
        let (interim, rest) = post_expecting_continue(&gw, path, &body);
        assert!(interim.starts_with("HTTP/1.1 100"), "{path}: {interim}");
        let full = format!("{interim}{rest}");
        let final_part = full
            .split("\r\n\r\n")
            .skip(1)
            .collect::<Vec<_>>()
            .join("\r\n\r\n");
        assert!(final_part.starts_with("HTTP/1.1 200"), "{path}: {full}");
        assert!(
            full.contains(&sha256(&body)),
            "{path}: upstream saw other bytes"
        );
    }
}

#[test]
fn expect_continue_over_the_cap_gets_413_without_sending_the_body() {
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(
        &[&a.url],
        "",
        "  - name: chat\n    match: { model: \"*\" }\n    upstream: up\n",
    ));
    let body = vec![b' '; 9 * 1024 * 1024];
    let (interim, _) = post_expecting_continue(&gw, "/v1/chat/completions", &body);
    assert!(interim.starts_with("HTTP/1.1 413"), "{interim}");
}
