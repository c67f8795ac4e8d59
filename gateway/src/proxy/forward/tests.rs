use super::*;
use crate::config::policy::compile_text;
use crate::proxy::test_session::{post, received, session, upstream};
use bytes::Bytes;

#[test]
fn backoff_doubles_up_to_max_with_jitter_in_the_upper_half() {
    let ms = Duration::from_millis;
    let policy = RetryPolicy {
        backoff: Some((ms(20), ms(100))),
        ..RetryPolicy::default()
    };
    for _ in 0..200 {
        let first = backoff(&policy, 0).unwrap();
        assert!(first >= ms(10) && first <= ms(20), "{first:?}");
        let third = backoff(&policy, 2).unwrap();
        assert!(third >= ms(40) && third <= ms(80), "{third:?}");
        let capped = backoff(&policy, 30).unwrap();
        assert!(capped >= ms(50) && capped <= ms(100), "{capped:?}");
    }
    let waits: std::collections::HashSet<_> = (0..20).map(|_| backoff(&policy, 0)).collect();
    assert!(waits.len() > 10, "jittered: {waits:?}");
    assert_eq!(backoff(&RetryPolicy::default(), 0), None);
}

#[test]
fn a_failed_connect_is_retried_outside_the_budget_while_an_endpoint_is_left() {
    let p = crate::config::policy::compile_text(
        "upstreams:\n  u:\n    endpoints: [ { url: \"http://127.0.0.1:1\" }, { url: \"http://127.0.0.1:2\" } ]\n    retry: { attempts: 1, on: [connect, 503], budget: { ratio: 0, min_per_second: 0 } }\nroutes:\n  - { name: r, upstream: u }\n",
    )
    .unwrap();
    let up = &p.routes[0].lanes[0].upstream;
    let now = Instant::now();
    for _ in 0..100 {
        assert!(retry_granted(up, Some(TryFailure::Connect), &[0], now));
    }
    assert_eq!(up.budget_exhausted.get(), 0, "the budget was not asked");
    assert!(
        !retry_granted(up, Some(TryFailure::Connect), &[0, 1], now),
        "no endpoint left: the budget decides, and it is empty"
    );
    assert!(!retry_granted(up, Some(TryFailure::Reset), &[0], now));
    assert!(!retry_granted(up, None, &[0], now));
    assert_eq!(up.budget_exhausted.get(), 3, "each refusal counted");
}

async fn forwarded(yaml: &str) -> (Attempt, String) {
    let p = compile_text(yaml).unwrap();
    let route = &p.routes[0];
    let (mut s, mut client) = session(&post("/v1/chat/completions", "", "{}")).await;
    let body = Body::of(Bytes::from_static(b"{}"));
    let forwarder = Forwarder::new(ConnectorOptions::new(1));
    let mut tee = Tee::new(Vec::new());
    let attempt = forwarder
        .forward(&mut s, route, &route.lanes[0], &body, 1024, None, &mut tee)
        .await;
    drop(tee);
    (attempt, received(&mut client).await)
}

#[tokio::test]
async fn the_answer_is_relayed_and_the_try_reported() {
    let port = upstream("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let yaml = format!("upstreams:\n  u: {{ endpoints: [ {{ url: \"http://127.0.0.1:{port}\" }} ] }}\nroutes:\n  - {{ name: r, upstream: u }}\n");
    let (attempt, answer) = forwarded(&yaml).await;
    assert!(attempt.outcome.is_ok(), "{:?}", attempt.outcome);
    assert_eq!((attempt.status, attempt.bytes_out), (Some(200), 2));
    assert_eq!((attempt.tried.hop, attempt.tried.endpoint), (0, Some(0)));
    assert!(attempt.tried.ttfb.is_some());
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_dead_upstream_falls_back_and_a_dead_last_one_is_502() {
    let port = upstream("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let dead = "upstreams:\n  dead: { endpoints: [ { url: \"http://127.0.0.1:1\" } ] }\n";
    let (attempt, _) = forwarded(&format!(
        "{dead}routes:\n  - {{ name: r, upstream: dead }}\n"
    ))
    .await;
    match attempt.outcome {
        Err(Stop::Respond { error, .. }) => assert_eq!(error.status, 502),
        other => panic!("{other:?}"),
    }
    let live = format!("  live: {{ endpoints: [ {{ url: \"http://127.0.0.1:{port}\" }} ] }}\n");
    let yaml =
        format!("{dead}{live}routes:\n  - {{ name: r, upstream: dead, fallback: [live] }}\n");
    let (attempt, _) = forwarded(&yaml).await;
    assert!(attempt.outcome.is_ok(), "{:?}", attempt.outcome);
    assert_eq!((attempt.status, attempt.tried.hop), (Some(200), 1));
}
