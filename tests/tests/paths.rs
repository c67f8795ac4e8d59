//! Request paths are normalized before routing: every spelling of a limited route's path gets
//! its limit, the upstream receives the normalized origin-form, and a path with no single
//! meaning is refused with an OpenAI-shaped 400. Raw sockets, because HTTP clients normalize
//! paths themselves.

use serde_json::Value;
use sluice_e2e::{chat_body, config, Gateway, Mock, UpstreamCalls};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A chat route allowing one request a minute per API key, and a passthrough without limits.
const ROUTES: &str = "  - name: chat
    match: { path_prefix: /v1/chat/completions, methods: [POST] }
    upstream: up
    limits:
      - { name: one-a-minute, key: api_key, requests_per_minute: 1 }
  - name: rest
    match: { path_prefix: / }
    upstream: up
";

struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends `method target` exactly as written, with a chat body and API key `key`.
fn send(gw: &Gateway, method: &str, target: &str, key: &str) -> Raw {
    let mut s = TcpStream::connect(gw.url.trim_start_matches("http://")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = chat_body("m", 10, false);
    // Pingora refuses an absolute-form whose authority differs from Host, as RFC 9112 allows.
    let host = target
        .strip_prefix("http://")
        .and_then(|t| t.split(['/', '?']).next())
        .unwrap_or("x");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer to {method} {target}: {text:?}"));
    Raw {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

#[test]
fn every_spelling_of_a_limited_path_is_limited_and_forwarded_normalized() {
    let mock = Mock::start("a", &[]);
    let gw = Gateway::start(&config(&[&mock.url], "", ROUTES));
    for (i, target) in [
        "/v1/chat/completions",
        "/public/../v1/chat/completions",
        "/v1//chat/completions",
        "/v1/chat/%63ompletions",
        "/v1/./chat/x/%2E%2E/completions",
        "http://example.com/v1/chat/completions",
    ]
    .into_iter()
    .enumerate()
    {
        // A key per spelling: each gets its own bucket of one.
        let key = format!("sk-path-{i}");
        let first = send(&gw, "POST", target, &key);
        // The mock answers a chat completion only at exactly POST /v1/chat/completions.
        assert_eq!(first.status, 200, "{target}: {}", first.body);
        assert_eq!(first.header("x-sluice-route"), Some("chat"), "{target}");
        assert_eq!(first.json()["object"], "chat.completion", "{target}");
        let second = send(&gw, "POST", target, &key);
        assert_eq!(second.status, 429, "{target}: {}", second.body);
        assert_eq!(second.header("x-sluice-route"), Some("chat"), "{target}");
    }
}

#[test]
fn the_upstream_receives_the_normalized_origin_form() {
    let mock = Mock::start("a", &[]);
    let gw = Gateway::start(&config(&[&mock.url], "", ROUTES));
    for (target, path, query) in [
        (
            "/mock/./echo//a/%2e%2e/%62?q=%zz/../",
            "/mock/echo/b",
            "q=%zz/../",
        ),
        (
            "http://example.com/mock/echo/%7e%c3%a9?x=1",
            "/mock/echo/~%C3%A9",
            "x=1",
        ),
    ] {
        let answer = send(&gw, "POST", target, "sk-echo");
        assert_eq!(answer.status, 200, "{target}: {}", answer.body);
        assert_eq!(answer.header("x-sluice-route"), Some("rest"));
        let echo = answer.json();
        assert_eq!(echo["path"], path, "{target}");
        assert_eq!(echo["query"], query, "{target}");
        // The target's authority is dropped: the upstream gets its own Host, as always.
        let host = mock.url.trim_start_matches("http://");
        assert_eq!(echo["headers"]["host"], host, "{target}");
    }
}

#[tokio::test]
async fn a_path_without_a_single_meaning_is_refused_with_400() {
    let mock = Mock::start("a", &[]);
    let gw = Gateway::start_with(
        &config(&[&mock.url], "", ROUTES),
        &[],
        &["--log-format", "json"],
    );
    let refused = [
        ("POST", "/v1%2Fchat/completions"),
        ("POST", "/../x"),
        ("POST", "/v1/chat/../../../x"),
        ("POST", "/v1/chat/%zz"),
        ("POST", "/v1/chat%00/completions"),
        ("OPTIONS", "*"),
    ];
    for (method, target) in refused {
        let answer = send(&gw, method, target, "sk-refused");
        assert_eq!(answer.status, 400, "{method} {target}: {}", answer.body);
        let error = &answer.json()["error"];
        assert_eq!(error["code"], "invalid_path", "{target}");
        assert_eq!(error["type"], "invalid_request_error", "{target}");
    }
    let access = |log: &str| -> Vec<Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access" && v["status"] == 400)
            .collect()
    };
    let log = gw.log_until(|log| access(log).len() == refused.len());
    let lines = access(&log);
    assert_eq!(
        lines.len(),
        refused.len(),
        "an access line per refusal:\n{log}"
    );
    assert!(lines
        .iter()
        .all(|l| l["route"] == "" && l["served_by"] == "gateway"));
    assert_eq!(
        UpstreamCalls::of(&mock).calls().await,
        0,
        "a refused path reached the upstream"
    );
}
