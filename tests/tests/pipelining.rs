//! HTTP/1.1 pipelining: requests sent back to back on one connection, before any answer, are
//! each answered, in order, on that connection, and each gets its access line. Raw sockets, so
//! the bytes arrive exactly as written (one write, or a request plus the first byte of the next).

use serde_json::Value;
use sluice_e2e::{config, Answer, Gateway, Mock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The chat route reads the body (it matches on the model); the rest passes through.
const ROUTES: &str = "  - name: chat\n    match: { path_prefix: /v1/chat/completions, model: \"m-*\" }\n    upstream: up\n  - name: all\n    upstream: up\n";

fn gateway(mock: &Mock) -> Gateway {
    Gateway::start_with(
        &config(&[&mock.url], "", ROUTES),
        &[],
        &["--log-format", "json"],
    )
}

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .expect("connect to sluice")
}

fn chat(model: &str) -> Vec<u8> {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const MODELS: &[u8] = b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";

/// Reads answers from `s` until `n` whole ones arrived (within 10 s); no bytes may follow them.
async fn read_answers(s: &mut TcpStream, n: usize) -> Vec<Answer> {
    let mut got = Vec::new();
    let mut answers = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some((answer, used)) = Answer::parse(&got) {
            answers.push(answer);
            got.drain(..used);
        }
        if answers.len() >= n {
            assert!(got.is_empty(), "bytes after {n} answers: {got:?}");
            return answers;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, s.read(&mut buf)).await;
        let count = match read {
            Ok(Ok(count)) => count,
            Ok(Err(e)) => panic!("{} of {n} answers, then {e}", answers.len()),
            Err(_) => panic!("{} of {n} answers within 10 s", answers.len()),
        };
        assert!(
            count > 0,
            "closed after {} of {n} answers (then {:?})",
            answers.len(),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..count]);
    }
}

/// The access lines logged so far, once `n` are there (or after the harness's patience).
fn access_lines(gw: &Gateway, n: usize) -> Vec<Value> {
    let parse = |log: &str| -> Vec<Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    };
    parse(&gw.log_until(|log| parse(log).len() >= n))
}

fn paths_and_statuses(lines: &[Value]) -> Vec<(String, u64)> {
    lines
        .iter()
        .map(|l| {
            (
                l["path"].as_str().unwrap_or("").to_string(),
                l["status"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn assert_chat(a: &Answer, model: &str) {
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-sluice-route"), Some("chat"));
    assert_eq!(a.json()["model"], model);
}

#[tokio::test]
async fn two_posts_in_one_write_are_both_answered_in_order() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock);
    let mut s = connect(&gw).await;
    s.write_all(&[chat("m-first"), chat("m-second")].concat())
        .await
        .unwrap();
    let answers = read_answers(&mut s, 2).await;
    assert_chat(&answers[0], "m-first");
    assert_chat(&answers[1], "m-second");
    assert_eq!(answers[1].header("connection"), Some("keep-alive"));
    let chat_ok = ("/v1/chat/completions".to_string(), 200);
    assert_eq!(
        paths_and_statuses(&access_lines(&gw, 2)),
        [chat_ok.clone(), chat_ok]
    );
}

#[tokio::test]
async fn a_get_and_a_post_in_one_write_are_both_answered_in_order() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock);
    let mut s = connect(&gw).await;
    s.write_all(&[MODELS, &chat("m-after-get")].concat())
        .await
        .unwrap();
    let answers = read_answers(&mut s, 2).await;
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].json()["object"], "list");
    assert_chat(&answers[1], "m-after-get");
    assert_eq!(
        paths_and_statuses(&access_lines(&gw, 2)),
        [
            ("/v1/models".to_string(), 200),
            ("/v1/chat/completions".to_string(), 200)
        ]
    );
}

#[tokio::test]
async fn a_request_with_the_first_byte_of_the_next_then_the_rest() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock);
    let mut s = connect(&gw).await;
    let second = chat("m-late");
    s.write_all(&[&chat("m-early")[..], &second[..1]].concat())
        .await
        .unwrap();
    let first = read_answers(&mut s, 1).await;
    assert_chat(&first[0], "m-early");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&second[1..]).await.unwrap();
    let next = read_answers(&mut s, 1).await;
    assert_chat(&next[0], "m-late");
    assert_eq!(access_lines(&gw, 2).len(), 2);
}

#[tokio::test]
async fn a_chunked_post_then_a_pipelined_request() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock);
    let mut s = connect(&gw).await;
    let body = r#"{"model":"m-chunked","messages":[{"role":"user","content":"hi"}]}"#;
    let (a, b) = body.split_at(20);
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(&[chunked.as_bytes(), MODELS, &chat("m-third")].concat())
        .await
        .unwrap();
    let answers = read_answers(&mut s, 3).await;
    assert_chat(&answers[0], "m-chunked");
    assert_eq!(answers[1].json()["object"], "list");
    assert_chat(&answers[2], "m-third");
    assert_eq!(access_lines(&gw, 3).len(), 3);
}

#[tokio::test]
async fn a_stream_then_a_pipelined_request() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock);
    let mut s = connect(&gw).await;
    let body = r#"{"model":"m-stream","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(&[stream.as_bytes(), &chat("m-after-stream")].concat())
        .await
        .unwrap();
    let answers = read_answers(&mut s, 2).await;
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].header("content-type"), Some("text/event-stream"));
    assert!(answers[0].body.ends_with("data: [DONE]\n\n"));
    assert_chat(&answers[1], "m-after-stream");
}

#[tokio::test]
async fn a_pipelined_head_is_held_to_the_same_limits() {
    let mock = Mock::start("m", &[]);
    let gw = gateway(&mock);
    let mut s = connect(&gw).await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    s.write_all(&[MODELS, big.as_bytes()].concat())
        .await
        .unwrap();
    let answers = read_answers(&mut s, 2).await;
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[1].status, 431);
    assert_eq!(answers[1].header("connection"), Some("close"));
    assert_eq!(answers[1].json()["error"]["code"], "headers_too_large");
}
