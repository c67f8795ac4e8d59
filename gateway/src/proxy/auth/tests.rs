use super::*;
use crate::config::keys::hash_line;
use crate::config::policy::{compile_text, Policy};
use crate::proxy::test_session::request_head;
use bytes::Bytes;

const KEY: &str = "sk-sluice-unit-a";

fn policy(auth: &str) -> Policy {
    compile_text(&format!(
        "upstreams:\n  u: {{ endpoints: [{{ url: \"http://127.0.0.1:1\" }}] }}\n\
         routes:\n  - {{ name: chat, upstream: u, auth: {auth} }}\n  - {{ name: other, upstream: u, auth: {auth} }}\n\
         keys:\n  - {{ name: app-a, hash: \"{}\", routes: [chat], models: [\"small-*\"] }}\n",
        hash_line(KEY)
    ))
    .unwrap()
}

fn status(result: Result<impl std::fmt::Debug, Stop>) -> (u16, &'static str) {
    match result {
        Err(Stop::Respond { error, .. }) => (error.status, error.code),
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_known_key_passes_and_its_credential_never_reaches_the_upstream() {
    let p = policy("required");
    for header in ["authorization", "x-api-key", "api-key"] {
        let value = if header == "authorization" {
            format!("Bearer {KEY}")
        } else {
            KEY.to_string()
        };
        let mut req = request_head(&[(header, &value)]);
        let caller = authenticate(&p.keys, &p.routes[0], &mut req).unwrap();
        assert_eq!(caller.map(|k| k.name.as_str()), Some("app-a"));
        assert!(req.headers.get(header).is_none(), "{header} taken off");
    }
}

#[test]
fn required_refuses_no_key_and_unknown_keys_with_401() {
    let p = policy("required");
    let chat = &p.routes[0];
    assert_eq!(
        status(authenticate(&p.keys, chat, &mut request_head(&[]))),
        (401, "invalid_api_key")
    );
    let mut wrong = request_head(&[("authorization", "Bearer sk-made-up")]);
    assert_eq!(
        status(authenticate(&p.keys, chat, &mut wrong)),
        (401, "invalid_api_key")
    );
    let mut other = request_head(&[("authorization", &format!("Bearer {KEY}"))]);
    assert_eq!(
        status(authenticate(&p.keys, &p.routes[1], &mut other)),
        (403, "route_not_allowed")
    );
}

#[test]
fn optional_lets_keyless_callers_through_but_not_wrong_keys() {
    let p = policy("optional");
    let chat = &p.routes[0];
    assert!(authenticate(&p.keys, chat, &mut request_head(&[]))
        .unwrap()
        .is_none());
    let mut wrong = request_head(&[("x-api-key", "sk-made-up")]);
    assert_eq!(
        status(authenticate(&p.keys, chat, &mut wrong)),
        (401, "invalid_api_key")
    );
}

#[test]
fn none_lets_everyone_through_and_still_names_a_known_key() {
    let p = policy("none");
    let mut wrong = request_head(&[("authorization", "Bearer sk-made-up")]);
    assert!(authenticate(&p.keys, &p.routes[1], &mut wrong)
        .unwrap()
        .is_none());
    assert!(
        wrong.headers.get("authorization").is_some(),
        "not ours: kept"
    );
    let mut known = request_head(&[("authorization", &format!("Bearer {KEY}"))]);
    let caller = authenticate(&p.keys, &p.routes[1], &mut known).unwrap();
    assert_eq!(caller.map(|k| k.name.as_str()), Some("app-a"));
    assert!(known.headers.get("authorization").is_none());
}

#[test]
fn a_model_outside_the_keys_globs_is_refused_with_403() {
    let p = policy("required");
    let chat = &p.routes[0];
    let mut req = request_head(&[("authorization", &format!("Bearer {KEY}"))]);
    let caller = authenticate(&p.keys, chat, &mut req).unwrap();
    let body = |json: &'static str| Body::of(Bytes::from_static(json.as_bytes()));
    assert!(allow_model(caller, chat, &mut body(r#"{"model":"small-1"}"#)).is_ok());
    assert_eq!(
        status(allow_model(caller, chat, &mut body(r#"{"model":"large"}"#))),
        (403, "model_not_allowed")
    );
    assert_eq!(
        status(allow_model(caller, chat, &mut body("{}"))),
        (403, "model_not_allowed")
    );
    assert!(allow_model(None, chat, &mut body(r#"{"model":"large"}"#)).is_ok());
}
