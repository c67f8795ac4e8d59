//! A client that stops reading a streamed answer does not hold its upstream: once a write to it
//! has waited `server.limits.send_timeout`, the response is aborted, the upstream connection
//! closed and the access line says why. The upstream here is a raw socket that streams SSE
//! forever, so the test sees exactly when sluice lets go of it.

use serde_json::Value;
use sluice_e2e::{config, Gateway};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

/// An upstream that answers one request with an endless SSE stream; reports when a write to
/// sluice fails (sluice closed the connection).
async fn endless_upstream() -> (String, oneshot::Receiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (closed_tx, closed_rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let event = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(4000)
        );
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n"
            .to_vec();
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            out.extend_from_slice(chunk.as_bytes());
            if s.write_all(&out).await.is_err() {
                let _ = closed_tx.send(Instant::now());
                return;
            }
            out.clear();
        }
    });
    (url, closed_rx)
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_lets_go_of_the_upstream() {
    let (upstream, closed) = endless_upstream().await;
    let yaml = config(&[&upstream], "", "  - name: all\n    upstream: up\n").replace(
        "  grace_period: 10s\n",
        "  grace_period: 10s\n  limits: { send_timeout: 1s }\n",
    );
    let gw = Gateway::start_with(&yaml, &[], &["--log-format", "json"]);

    // A small receive window, so sluice's writes to this client block soon.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let addr = gw.url.trim_start_matches("http://").parse().expect("addr");
    let mut client = socket.connect(addr).await.expect("connect");
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    let n = client.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    // From here on the client reads nothing.
    let stopped = Instant::now();
    let closed_at = tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .expect("sluice closed the upstream connection within 15 s")
        .expect("the upstream reports");
    let held = closed_at - stopped;
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(8),
        "upstream held for {held:?} after the client stopped reading"
    );

    let parse = |log: &str| -> Vec<Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    };
    let log = gw.log_until(|log| !parse(log).is_empty());
    let lines = parse(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert_eq!(lines[0]["status"], 200);
    let error = lines[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("send_timeout"), "access line: {}", lines[0]);

    // The client's connection ends too: what was buffered, then the close.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the client connection is closed");
}
