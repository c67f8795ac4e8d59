//! SIGTERM lets a stream in flight finish, then exits; SIGINT exits at once.

use sluice_e2e::{chat_body, config, Gateway, Mock};
use std::time::{Duration, Instant};

fn wait_exit(gw: &mut Gateway, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = gw.proc.child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test]
async fn sigterm_lets_the_stream_finish_then_exits() {
    let a = Mock::start("a", &["--token-delay-ms", "100", "--tokens", "15"]);
    let mut gw = Gateway::start(&config(&[&a.url], "", "  - name: all\n    upstream: up\n"));
    let mut resp = gw
        .chat(&reqwest::Client::new(), chat_body("m", 100, true))
        .await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("reply-"));
    let term_at = Instant::now();
    gw.signal("TERM");
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = resp
        .chunk()
        .await
        .expect("stream must not be cut by SIGTERM")
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream incomplete: {text}"
    );
    assert!(text.contains(" tok14"));
    // The stream ends about 1.5 s after SIGTERM; the grace period is 10 s. Exiting within 7 s
    // of the signal leaves a loaded machine 5 s and still fails a drain that waits out the
    // grace period instead of the last request.
    let within = (term_at + Duration::from_secs(7)).saturating_duration_since(Instant::now());
    let status = wait_exit(&mut gw, within).expect("sluice must exit once drained");
    assert!(status.success(), "{status:?}");
    assert!(gw.log_text().contains("SIGTERM: draining"));
}

#[tokio::test]
async fn sigint_exits_at_once() {
    let a = Mock::start("a", &["--token-delay-ms", "200", "--tokens", "50"]);
    let mut gw = Gateway::start(&config(&[&a.url], "", "  - name: all\n    upstream: up\n"));
    let mut resp = gw
        .chat(&reqwest::Client::new(), chat_body("m", 100, true))
        .await;
    resp.chunk().await.unwrap();
    let start = Instant::now();
    gw.signal("INT");
    // The stream has about 10 s to go and the grace period is 10 s: waiting for either fails.
    assert!(
        wait_exit(&mut gw, Duration::from_secs(5)).is_some(),
        "SIGINT must not wait for the 10 s stream"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A load balancer keeps polling `/readyz` while sluice drains: it must answer 503 (not a
/// refused connection) until the last stream is done, so new traffic goes elsewhere.
#[tokio::test]
async fn readyz_answers_503_while_draining() {
    let a = Mock::start("a", &["--token-delay-ms", "100", "--tokens", "20"]);
    let mut gw = Gateway::start(&config(&[&a.url], "", "  - name: all\n    upstream: up\n"));
    let client = reqwest::Client::new();
    let mut resp = gw.chat(&client, chat_body("m", 100, true)).await;
    assert_eq!(resp.status(), 200);
    resp.chunk().await.unwrap().unwrap();
    gw.signal("TERM");
    assert!(gw
        .log_until(|l| l.contains("SIGTERM: draining"))
        .contains("SIGTERM: draining"));
    // A fresh connection each time, as a load balancer's probe makes.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let ready = probe
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .expect("admin must stay up while draining");
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.text().await.unwrap(), "draining\n");
    let health = probe.get(format!("{}/healthz", gw.admin)).send().await;
    assert_eq!(health.expect("healthz while draining").status(), 200);
    let metrics = probe.get(format!("{}/metrics", gw.admin)).send().await;
    assert_eq!(metrics.expect("metrics while draining").status(), 200);
    let mut text = String::new();
    while let Some(chunk) = resp.chunk().await.expect("stream must finish") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let status = wait_exit(&mut gw, Duration::from_secs(7)).expect("exits once drained");
    assert!(status.success(), "{status:?}");
}

/// An SDK's pre-opened connection that never sends must not hold the drain for its
/// `header_timeout` (10 s here): sluice exits about a second after SIGTERM.
#[tokio::test]
async fn a_silent_connection_does_not_hold_the_drain() {
    let a = Mock::start("a", &[]);
    let mut gw = Gateway::start(&config(&[&a.url], "", "  - name: all\n    upstream: up\n"));
    let silent = std::net::TcpStream::connect(gw.url.trim_start_matches("http://")).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term_at = Instant::now();
    gw.signal("TERM");
    let status = wait_exit(&mut gw, Duration::from_secs(6))
        .expect("exits without waiting out the silent connection");
    assert!(status.success(), "{status:?}");
    assert!(
        term_at.elapsed() < Duration::from_secs(4),
        "{:?}",
        term_at.elapsed()
    );
    drop(silent);
}
