use super::*;
use crate::config::policy::compile_text;
use crate::proxy::ctx::ActiveRequests;
use crate::proxy::test_session::{post, received, session, upstream};
use pingora::connectors::ConnectorOptions;

const ANSWER: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

async fn run_one(policy: &Policy, raw: &[u8]) -> (Record, String) {
    let engines = Engines {
        forwarder: Forwarder::new(ConnectorOptions::new(1)),
        cache: None,
        shared_limits: None,
    };
    let (mut s, mut client) = session(raw).await;
    let mut ctx = RequestCtx::new(Arc::new(ActiveRequests::default()).enter());
    run(&engines, policy, &mut s, &mut ctx).await.unwrap();
    (ctx.record, received(&mut client).await.to_ascii_lowercase())
}

#[tokio::test]
async fn the_phases_run_in_order_and_the_first_that_stops_answers() {
    let port = upstream(ANSWER).await;
    let policy = compile_text(&format!(
        "upstreams:\n  u: {{ endpoints: [ {{ url: \"http://127.0.0.1:{port}\" }} ] }}\nroutes:\n  - name: chat\n    upstream: u\n    match: {{ path_prefix: /v1/chat }}\n    limits:\n      - {{ name: rpm, key: route, requests_per_minute: 1 }}\n"
    ))
    .unwrap();
    let req = post("/v1/./chat//completions", "", "{}");
    let (record, answer) = run_one(&policy, &req).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("x-ratelimit-remaining-requests: 0"),
        "{answer}"
    );
    assert_eq!(
        (record.route, record.lane, record.status, record.served),
        (Some(0), Some(0), Some(200), true)
    );
    assert_eq!(record.upstream.map(|u| u.endpoint), Some(Some(0)));

    let (record, answer) = run_one(&policy, &req).await;
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(answer.contains("x-sluice-route: chat"), "{answer}");
    assert!(
        answer.contains("x-ratelimit-remaining-requests: 0"),
        "{answer}"
    );
    assert_eq!(
        (record.status, record.served, record.upstream),
        (Some(429), false, None)
    );

    let (record, answer) = run_one(&policy, &post("/v2/other", "", "{}")).await;
    assert!(answer.starts_with("http/1.1 404"), "{answer}");
    assert_eq!((record.route, record.status), (None, Some(404)));

    let (record, answer) = run_one(&policy, &post("/v1/a%2Fb", "", "{}")).await;
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert_eq!(record.status, Some(400));
}
