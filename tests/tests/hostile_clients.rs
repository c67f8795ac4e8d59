//! Hostile and idle clients: `server.limits` on request heads (time, size, target, count),
//! keep-alive (requests per connection, idle timeout), slow bodies, and upstream reuse.
//! Raw sockets, so the tests see exactly what a client sees on the wire.

use serde_json::Value;
use sluice_e2e::{config, Answer, Gateway, Mock, UpstreamCalls};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALL: &str = "  - name: all\n    upstream: up\n";

/// A gateway in front of `mock` with `limits` (a YAML flow map) under `server:`.
fn gateway(mock: &Mock, limits: &str) -> Gateway {
    let yaml = config(&[&mock.url], "", ALL).replace(
        "  grace_period: 10s\n",
        &format!("  grace_period: 10s\n  limits: {limits}\n"),
    );
    Gateway::start(&yaml)
}

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .expect("connect to sluice")
}

/// Everything the peer sends until it closes (a reset after the answer also ends it), within
/// `within`; `None` if it is still open then.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read).await.ok()?;
    Some(got)
}

/// Parses one response with a content-length from the front of `bytes`; the rest is returned.
fn parse_answer(bytes: &[u8]) -> Option<(Answer, &[u8])> {
    let (answer, used) = Answer::parse(bytes)?;
    assert!(
        answer.header("content-length").is_some(),
        "an answer with a content-length: {answer:?}"
    );
    Some((answer, &bytes[used..]))
}

/// Reads exactly one response (with a content-length) from an open connection.
async fn read_answer(s: &mut TcpStream) -> Answer {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((answer, rest)) = parse_answer(&got) {
            assert!(rest.is_empty(), "bytes after the answer");
            return answer;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(n > 0, "closed before a whole answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Sends `request` on a new connection; the answer, which must be followed by a close.
async fn refused(gw: &Gateway, request: &[u8]) -> Answer {
    let mut s = connect(gw).await;
    s.write_all(request).await.expect("send");
    let got = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("sluice closes the connection after refusing");
    let (answer, rest) = parse_answer(&got).expect("one whole answer before the close");
    assert!(rest.is_empty());
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer
}

#[tokio::test]
async fn trickled_head_is_cut_at_header_timeout_while_others_are_served() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock, "{ header_timeout: 2s }");
    let mut calls = UpstreamCalls::of(&mock);

    let mut slow = connect(&gw).await;
    let started = Instant::now();
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let (mut slow_rd, mut slow_wr) = slow.into_split();
    // One more header line per second, for longer than the timeout.
    let trickle = tokio::spawn(async move {
        for i in 0..6 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let line = format!("x-line-{i}: 1\r\n");
            if slow_wr.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let cut = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), slow_rd.read_to_end(&mut got)).await;
        (got, started.elapsed())
    });

    let client = reqwest::Client::new();
    let others = (0..50).map(|_| {
        let client = client.clone();
        let url = format!("{}/v1/models", gw.url);
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let statuses = futures_util::future::join_all(others).await;
    assert!(
        !cut.is_finished(),
        "the 50 clients were served while the slow one was still sending"
    );
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(200))),
        "{statuses:?}"
    );

    let (got, took) = cut.await.unwrap();
    trickle.abort();
    let (answer, rest) = parse_answer(&got).expect("a whole answer, then the close");
    assert!(rest.is_empty());
    assert_eq!(answer.status, 408);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.json()["error"]["code"], "request_timeout");
    // The 10 ms timer wheel may fire a tick early; scheduling makes it late, not by a second.
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_millis(3500),
        "cut after {took:?}"
    );
    assert_eq!(
        calls.calls().await,
        50,
        "the trickled request never reached the mock"
    );
}

#[tokio::test]
async fn oversized_heads_are_refused_before_the_upstream() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock, "{}");
    let mut calls = UpstreamCalls::of(&mock);

    let big_header = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let a = refused(&gw, big_header.as_bytes()).await;
    assert_eq!(a.status, 431);
    assert_eq!(a.json()["error"]["code"], "headers_too_large");
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");

    let long_uri = format!(
        "GET /v1/models?q={} HTTP/1.1\r\nhost: x\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let a = refused(&gw, long_uri.as_bytes()).await;
    assert_eq!(a.status, 414);
    assert_eq!(a.json()["error"]["code"], "uri_too_long");

    let many: String = (0..150).map(|i| format!("x-h-{i}: v\r\n")).collect();
    let many = format!("GET /v1/models HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    let a = refused(&gw, many.as_bytes()).await;
    assert_eq!(a.status, 431);
    assert_eq!(a.json()["error"]["code"], "too_many_headers");

    assert_eq!(
        calls.calls().await,
        0,
        "no refused request reached the mock"
    );

    // Just inside every default limit (8 KiB target, 32 KiB head) is served.
    let inside = format!(
        "GET /v1/models?q={} HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(8 * 1024 - 20),
        "b".repeat(20 * 1024)
    );
    let mut s = connect(&gw).await;
    s.write_all(inside.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut s).await.status, 200);
    assert_eq!(calls.calls().await, 1);
}

#[tokio::test]
async fn keepalive_requests_end_with_connection_close() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock, "{ keepalive_requests: 3 }");
    let mut s = connect(&gw).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let a = read_answer(&mut s).await;
        assert_eq!(a.status, 200);
        seen.push(a.header("connection").unwrap_or("").to_string());
    }
    assert_eq!(seen, ["keep-alive", "keep-alive", "close"]);
    let rest = read_until_closed(&mut s, Duration::from_secs(2))
        .await
        .expect("closed after the third answer");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed_at_keepalive_timeout() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock, "{ keepalive_timeout: 1s }");
    let mut s = connect(&gw).await;
    // A second request within the timeout is served on the same connection.
    for _ in 0..2 {
        s.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let a = read_answer(&mut s).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("connection"), Some("keep-alive"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let idle_from = Instant::now() - Duration::from_millis(300);
    let rest = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("an idle connection is closed");
    let idle = idle_from.elapsed();
    assert!(rest.is_empty(), "closed silently");
    assert!(
        idle >= Duration::from_millis(950) && idle < Duration::from_millis(2500),
        "closed after {idle:?} idle"
    );
}

#[tokio::test]
async fn stalled_body_is_cut_at_body_idle_timeout() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock, "{ body_idle_timeout: 1s }");
    let mut s = connect(&gw).await;
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 1000\r\n\r\n{\"model\": \"m\", ",
    )
    .await
    .unwrap();
    let stalled = Instant::now();
    let answer = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("the connection is closed");
    let took = stalled.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408")
            && text.contains("request_timeout")
            && text
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
        "a stalled body gets a 408: {text}"
    );
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(3000),
        "cut after {took:?}"
    );
}

#[tokio::test]
async fn a_broken_chunked_body_is_answered_400_and_closed() {
    let mock = Mock::start("m", &[]);
    // One route reads the body (it matches on the model), the other streams it upstream.
    let routes = "  - name: read\n    match: { path_prefix: /v1/chat/completions, model: \"m-*\" }\n    upstream: up\n  - name: stream\n    upstream: up\n";
    let gw = Gateway::start(&config(&[&mock.url], "", routes));
    for path in ["/v1/chat/completions", "/v1/embeddings"] {
        // A size that is no hex number; a chunk not ended by CRLF.
        for broken in ["zz\r\n{}\r\n0\r\n\r\n", "2\r\n{}XX0\r\n\r\n"] {
            let request = format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 transfer-encoding: chunked\r\n\r\n{broken}"
            );
            let a = refused(&gw, request.as_bytes()).await;
            assert_eq!(a.status, 400, "{path} {broken:?}");
            assert_eq!(a.json()["error"]["code"], "invalid_chunked_body");
            assert_eq!(a.json()["error"]["type"], "invalid_request_error");
        }
    }
}

#[tokio::test]
async fn sequential_requests_reuse_a_few_upstream_connections() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock, "{}");
    let stats = |url: String| async move {
        let v: Value = reqwest::get(format!("{url}/mock/stats"))
            .await
            .expect("stats")
            .json()
            .await
            .expect("JSON");
        v["connections"].as_u64().expect("connections")
    };
    let before = stats(mock.url.clone()).await;
    let client = reqwest::Client::new();
    for _ in 0..300 {
        let r = client
            .get(format!("{}/v1/models", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // Each stats call opens a connection of its own.
    let upstream = stats(mock.url.clone()).await - before - 1;
    assert!(
        (1..=5).contains(&upstream),
        "300 requests used {upstream} upstream connections"
    );
}
