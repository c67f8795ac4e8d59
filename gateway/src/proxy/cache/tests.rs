use super::*;
use crate::config::policy::compile_text;
use crate::proxy::sink::{ResponseSink, StreamEnd};
use crate::proxy::test_session::{post, received, session};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use sluice_plugins::cache::flight::Flights;
use sluice_plugins::cache::store::{CacheStore, StoreConfig};
use sluice_plugins::metrics::{CacheTier, Metrics};

const POLICY: &str = "upstreams:\n  u: { endpoints: [{ url: \"http://127.0.0.1:1\" }] }\ncache: { memory: { max_bytes: 1MiB } }\nroutes:\n  - name: chat\n    upstream: u\n    cache: { ttl: 10m }\n";
const QUESTION: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const ANSWER: &[u8] =
    br#"{"choices":[{"message":{"content":"hello"}}],"usage":{"total_tokens":7}}"#;

fn prompt_cache() -> PromptCache {
    let config = StoreConfig {
        memory_max_bytes: 1 << 20,
        redis: None,
        disk: None,
    };
    let metrics = Metrics::new("t").unwrap();
    PromptCache {
        store: Arc::new(CacheStore::open(&config, &metrics).unwrap()),
        flights: Flights::default(),
    }
}

async fn look(cache: &PromptCache, extra: &str, body: &str) -> (Lookup, String) {
    let p = compile_text(POLICY).unwrap();
    let route = &p.routes[0];
    let (mut s, mut client) = session(&post("/v1/chat/completions", extra, body)).await;
    let mut body = Body::of(Bytes::from(body.to_string()));
    let here = vec![(
        HeaderName::from_static("x-phase"),
        HeaderValue::from_static("1"),
    )];
    let lookup = lookup(
        cache,
        &mut s,
        route,
        &route.lanes[0],
        None,
        &mut body,
        &here,
        now_ms(),
    )
    .await
    .unwrap();
    let answer = if matches!(lookup, Lookup::Answered(_)) {
        received(&mut client).await
    } else {
        String::new()
    };
    (lookup, answer)
}

#[tokio::test]
async fn a_miss_records_the_answer_and_the_same_question_is_then_a_hit() {
    let cache = prompt_cache();
    let Lookup::Miss(mut recorder) = look(&cache, "", QUESTION).await.0 else {
        panic!("the first lookup misses");
    };
    let mut head = ResponseHeader::build(200, None).unwrap();
    head.insert_header("content-type", "application/json")
        .unwrap();
    recorder.on_head(&head);
    recorder.on_chunk(&Bytes::from_static(ANSWER));
    recorder.on_end(StreamEnd::Complete);
    drop(recorder);
    let (lookup, answer) = look(&cache, "", QUESTION).await;
    let Lookup::Answered(hit) = lookup else {
        panic!("the second lookup hits");
    };
    assert_eq!(
        (hit.result, hit.status, hit.written),
        (CacheResult::Hit(CacheTier::Memory), 200, ANSWER.len())
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for h in ["x-sluice-cache: hit", "x-phase: 1", "x-sluice-route: chat"] {
        assert!(answer.to_ascii_lowercase().contains(h), "{h} in {answer}");
    }
    assert!(
        answer.ends_with(std::str::from_utf8(ANSWER).unwrap()),
        "{answer}"
    );
}

#[tokio::test]
async fn no_store_and_a_body_that_is_not_json_bypass_the_cache() {
    let cache = prompt_cache();
    assert!(matches!(
        look(&cache, "cache-control: no-store\r\n", QUESTION)
            .await
            .0,
        Lookup::Bypass
    ));
    assert!(matches!(look(&cache, "", "").await.0, Lookup::Bypass));
}

/// The store drops entries already expired by the wall clock, so the test uses it too.
fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    u64::try_from(since.unwrap().as_millis()).unwrap()
}
