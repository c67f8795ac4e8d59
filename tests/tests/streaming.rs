//! SSE reaches the client as the upstream sends it, not buffered.

use sluice_e2e::{chat_body, config, Gateway, Mock};
use std::time::{Duration, Instant};

#[tokio::test]
async fn sse_chunks_arrive_spread_over_time() {
    let a = Mock::start("a", &["--token-delay-ms", "150", "--tokens", "10"]);
    let gw = Gateway::start(&config(
        &[&a.url],
        "",
        "  - name: chat\n    match: { model: \"*\" }\n    upstream: up\n",
    ));
    let start = Instant::now();
    let mut resp = gw
        .chat(&reqwest::Client::new(), chat_body("m", 100, true))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-length").is_none());
    let mut arrivals: Vec<(Duration, String)> = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        arrivals.push((
            start.elapsed(),
            String::from_utf8_lossy(&chunk).into_owned(),
        ));
    }
    let text: String = arrivals.iter().map(|(_, t)| t.as_str()).collect();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(
        text.matches("data: ").count(),
        12,
        "10 tokens + stop + DONE"
    );
    // The mock spaces its 12 events 150 ms apart, so unbuffered the first token arrives about
    // 1.65 s before the end; buffered, both arrive in the same read. Asking for a third of
    // that leaves a loaded machine over a second to stall this reader.
    let first_token = arrivals
        .iter()
        .find(|(_, t)| t.contains("reply-"))
        .unwrap()
        .0;
    let last = arrivals.last().unwrap().0;
    assert!(
        last - first_token >= Duration::from_millis(550),
        "first at {first_token:?}, last at {last:?}: buffered?"
    );
    // Stalls may merge a few reads; buffering merges them all.
    assert!(
        arrivals.len() >= 4,
        "expected chunks to arrive separately, got {} reads",
        arrivals.len()
    );
}
