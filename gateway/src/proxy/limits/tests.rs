use super::*;
use crate::config::policy::compile_text;
use crate::config::Policy;
use crate::proxy::test_session::{post, session};
use bytes::Bytes;

fn policy(limits: &str) -> Policy {
    compile_text(&format!(
        "upstreams:\n  u: {{ endpoints: [ {{ url: \"http://127.0.0.1:1\" }} ] }}\nroutes:\n  - name: chat\n    upstream: u\n    limits:\n{limits}"
    ))
    .unwrap()
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.to_str().ok())
}

fn refused(stop: Stop) -> (u16, Vec<Header>) {
    match stop {
        Stop::Respond { error, headers } => (error.status, headers),
        Stop::Aborted(why) => panic!("{why}"),
    }
}

#[tokio::test]
async fn a_request_limit_counts_per_key_and_refuses_with_its_headers() {
    let p = policy("      - { name: rpm, key: api_key, requests_per_minute: 2 }\n");
    let scope = p.routes[0].limit_scope().unwrap();
    let raw = post("/v1/chat/completions", "authorization: Bearer k1\r\n", "{}");
    let (s, _c) = session(&raw).await;
    let mut body = Body::default();
    let first = admit_requests(None, scope, &s, None, &mut body)
        .await
        .unwrap();
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), Some("1"));
    admit_requests(None, scope, &s, None, &mut body)
        .await
        .unwrap();
    let (status, headers) = refused(
        admit_requests(None, scope, &s, None, &mut body)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 429);
    assert_eq!(
        header(&headers, "x-ratelimit-remaining-requests"),
        Some("0")
    );
    let other = post("/v1/chat/completions", "authorization: Bearer k2\r\n", "{}");
    let (s2, _c2) = session(&other).await;
    assert!(
        admit_requests(None, scope, &s2, None, &mut body)
            .await
            .is_ok(),
        "another key, another bucket"
    );
}

#[tokio::test]
async fn tokens_are_reserved_then_settled_at_what_the_answer_cost() {
    let p = policy("      - { name: tpm, key: route, tokens_per_minute: 1000 }\n");
    let scope = p.routes[0].limit_scope().unwrap();
    let (s, _c) = session(&post("/v1/chat/completions", "", "{}")).await;
    let mut body = Body::of(Bytes::from_static(
        br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":400}"#,
    ));
    let (reserved, headers) = reserve_tokens(None, scope, &s, None, &mut body)
        .await
        .unwrap();
    let left: u64 = header(&headers, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(left < 600, "the prompt and max_tokens are held: {left}");
    assert_eq!(scope.metrics.reserved.get(), 1000 - left);
    // A second request wants more than is left: refused, and it holds nothing.
    let mut big = Body::of(Bytes::from_static(br#"{"messages":[],"max_tokens":900}"#));
    let (status, h) = refused(
        reserve_tokens(None, scope, &s, None, &mut big)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status, header(&h, "x-ratelimit-remaining-tokens").is_some()),
        (429, true)
    );
    // Nothing was used (no upstream answered): all of it comes back.
    settle(None, scope, reserved.unwrap(), None).await;
    let (again, headers) = reserve_tokens(None, scope, &s, None, &mut big)
        .await
        .unwrap();
    assert!(again.is_some());
    assert!(
        header(&headers, "x-ratelimit-remaining-tokens")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            < 100
    );
}

#[tokio::test]
async fn without_a_token_budget_or_a_read_body_nothing_is_reserved() {
    let p = policy("      - { name: rpm, key: ip, requests_per_minute: 5 }\n");
    let scope = p.routes[0].limit_scope().unwrap();
    let (s, _c) = session(&post("/v1/chat/completions", "", "{}")).await;
    let (reserved, headers) = reserve_tokens(None, scope, &s, None, &mut Body::default())
        .await
        .unwrap();
    assert!(reserved.is_none() && headers.is_empty());
}
