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

#[tokio::test]
async fn a_keys_own_limits_hold_across_routes_and_other_keys_are_untouched() {
    let port = upstream(ANSWER).await;
    let hash = |k: &str| crate::config::keys::hash_line(k);
    let policy = compile_text(&format!(
        "upstreams:\n  u: {{ endpoints: [ {{ url: \"http://127.0.0.1:{port}\" }} ] }}\n\
         routes:\n  - {{ name: a, upstream: u, auth: required, match: {{ path_prefix: /a }} }}\n\
         \x20 - {{ name: b, upstream: u, auth: required, match: {{ path_prefix: /b }} }}\n\
         keys:\n  - {{ name: one, hash: \"{}\", limits: [ {{ name: rpm, requests_per_minute: 2 }} ] }}\n\
         \x20 - {{ name: two, hash: \"{}\" }}\n",
        hash("sk-one"),
        hash("sk-two")
    ))
    .unwrap();
    let call =
        |path: &str, key: &str| post(path, &format!("authorization: Bearer {key}\r\n"), "{}");
    for path in ["/a", "/b"] {
        let (_, answer) = run_one(&policy, &call(path, "sk-one")).await;
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
    }
    let (record, answer) = run_one(&policy, &call("/a", "sk-one")).await;
    assert!(
        answer.starts_with("http/1.1 429"),
        "the key's rpm spans routes: {answer}"
    );
    assert_eq!(record.key.as_ref().map(|k| k.name.as_str()), Some("one"));
    let (_, answer) = run_one(&policy, &call("/a", "sk-two")).await;
    assert!(answer.starts_with("http/1.1 200"), "another key: {answer}");
}

#[tokio::test]
async fn each_phase_a_request_went_through_is_timed_and_skipped_ones_are_not() {
    let port = upstream(ANSWER).await;
    let policy = compile_text(&format!(
        "upstreams:\n  u: {{ endpoints: [ {{ url: \"http://127.0.0.1:{port}\" }} ], max_concurrency: 1, queue: {{ max: 2, timeout: 1s }} }}\n  v: {{ endpoints: [ {{ url: \"http://127.0.0.1:{port}\" }} ] }}\nroutes:\n  - name: plain\n    upstream: v\n    match: {{ path_prefix: /plain }}\n  - name: chat\n    upstream: u\n    limits:\n      - {{ name: rpm, key: route, requests_per_minute: 1 }}\n"
    ))
    .unwrap();
    let (record, answer) = run_one(&policy, &post("/v1/chat/completions", "", "{}")).await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    for phase in [
        Phase::Route,
        Phase::Split,
        Phase::Limits,
        Phase::QueueWait,
        Phase::ForwardSetup,
    ] {
        assert!(record.phases.get(phase).is_some(), "{phase:?} not timed");
    }
    assert_eq!(record.phases.get(Phase::CacheLookup), None);
    assert_eq!(record.tries.len(), 1);

    // Refused by its limit: the limits phase still counts, nothing after it does.
    let (record, answer) = run_one(&policy, &post("/v1/chat/completions", "", "{}")).await;
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(record.phases.get(Phase::Limits).is_some());
    assert_eq!(record.phases.get(Phase::QueueWait), None);
    assert_eq!(record.phases.get(Phase::ForwardSetup), None);

    // A route with no limits and no queue pays for neither.
    let (record, _) = run_one(&policy, &post("/plain", "", "{}")).await;
    assert_eq!(record.phases.get(Phase::Limits), None);
    assert_eq!(record.phases.get(Phase::QueueWait), None);
    assert!(record.phases.get(Phase::ForwardSetup).is_some());
}
