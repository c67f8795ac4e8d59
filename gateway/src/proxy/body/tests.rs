use super::*;
use crate::proxy::test_session::{post, session};

#[tokio::test]
async fn a_body_is_read_whole_and_its_json_rewritten_into_the_bytes_sent() {
    let (mut s, _client) = session(&post("/v1/x", "", r#"{"model":"m","n":1}"#)).await;
    let mut body = Body::unread(&mut s);
    assert!(body.is_streamed());
    body.read_if_streamed(&mut s, 1024).await.unwrap();
    assert!(!body.is_streamed());
    assert_eq!(body.len(), 19);
    assert_eq!(body.json().unwrap().unwrap()["model"], "m");
    assert!(body
        .rewrite_json(|j| j.insert("n".into(), 2.into()).is_some())
        .unwrap());
    let sent: Value = serde_json::from_slice(body.bytes().unwrap()).unwrap();
    assert_eq!(sent["n"], 2);
    assert!(
        !body.rewrite_json(|_| false).unwrap(),
        "no edit, no rewrite"
    );
}

#[tokio::test]
async fn a_body_over_the_cap_is_413_before_it_is_read() {
    let (mut s, _client) = session(&post("/v1/x", "", &"x".repeat(100))).await;
    match Body::read(&mut s, 10).await {
        Err(Stop::Respond { error, .. }) => assert_eq!(error.status, 413),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_400_when_a_phase_reads_it() {
    let (mut s, _client) = session(&post("/v1/x", "", "not json")).await;
    let mut body = Body::read(&mut s, 1024).await.unwrap();
    match body.json() {
        Err(Stop::Respond { error, .. }) => {
            assert_eq!((error.status, error.code), (400, "invalid_json"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_get_has_no_body_and_no_json() {
    let (mut s, _client) = session(b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let mut body = Body::unread(&mut s);
    assert!(!body.is_streamed());
    assert_eq!(body.json().unwrap(), None);
    assert!(matches!(body.outgoing(&s, 0, 10).unwrap(), Outgoing::Empty));
}
