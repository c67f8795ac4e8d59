//! The split phase (A/B): picks the request's variant (override, sticky key or a draw) and
//! rewrites the body fields the variant sets before the cache key is taken. The variant's
//! request headers are added only to what the upstream gets (the forwarder reads them from the
//! lane), so cache scopes and limit keys still see the client's own headers.

use super::body::Body;
use super::headers::X_SLUICE_VARIANT;
use super::identity::{sticky_key, Caller};
use super::random::random_u64;
use super::stop::{Header, Stop};
use crate::config::split::{RouteSplit, StickyKey};
use http::header::HeaderName;
use pingora::http::RequestHeader;
use sluice_plugins::openai_error::GatewayError;

/// The lane a request takes and the header that names its variant to the client.
#[derive(Debug)]
pub struct Chosen {
    pub lane: usize,
    pub header: Option<Header>,
}

/// Chooses the lane (0 without a split) and applies its variant to the request.
pub fn choose(
    split: Option<&RouteSplit>,
    req: &mut RequestHeader,
    caller: Caller<'_>,
    body: &mut Body,
) -> Result<Chosen, Stop> {
    let Some(split) = split else {
        return Ok(Chosen {
            lane: 0,
            header: None,
        });
    };
    let index = pick(split, req, caller, body)?;
    let variant = &split.variants[index];
    // The override is for sluice; the upstream never sees it.
    req.remove_header(X_SLUICE_VARIANT);
    if !variant.set.is_empty() {
        body.rewrite_json(|json| {
            for (field, value) in &variant.set {
                json.insert(field.clone(), value.clone());
            }
            true
        })?;
    }
    Ok(Chosen {
        lane: index,
        header: Some((
            HeaderName::from_static(X_SLUICE_VARIANT),
            variant.header.clone(),
        )),
    })
}

/// The override when the route allows it, else the sticky key's variant, else a draw.
fn pick(
    split: &RouteSplit,
    req: &RequestHeader,
    caller: Caller<'_>,
    body: &mut Body,
) -> Result<usize, Stop> {
    let headers = &req.headers;
    if let Some(asked) = headers
        .get(X_SLUICE_VARIANT)
        .filter(|_| split.allow_override)
    {
        return split.by_name(asked.as_bytes()).ok_or_else(|| {
            let known: Vec<&str> = split.variants.iter().map(|v| v.name.as_str()).collect();
            let asked: String = String::from_utf8_lossy(asked.as_bytes())
                .chars()
                .take(64)
                .collect();
            GatewayError::unknown_variant(&asked, &known).into()
        });
    }
    let Some(key) = &split.sticky else {
        return Ok(split.assign.draw(random_u64()));
    };
    // A body that is not a JSON object has no `user`: the request is drawn like one without.
    let json = match key {
        StickyKey::BodyUser => body.json().ok().flatten(),
        _ => None,
    };
    Ok(match sticky_key(key, headers, caller, json) {
        Some(material) => split.assign.assign(material),
        None => split.assign.draw(random_u64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::compile_text;
    use crate::proxy::test_session::request_head;
    use bytes::Bytes;

    const POLICY: &str = "upstreams:\n  a: { endpoints: [{ url: \"http://127.0.0.1:1\" }] }\nroutes:\n  - name: chat\n    upstream: a\n    split:\n      sticky: header:x-user\n      allow_override: true\n      variants:\n        - { name: control, weight: 50 }\n        - { name: small, weight: 50, set: { model: m } }\n";

    #[test]
    fn the_override_picks_the_variant_sets_its_fields_and_never_reaches_the_upstream() {
        let p = compile_text(POLICY).unwrap();
        let split = p.routes[0].split.as_ref();
        let mut req = request_head(&[("x-sluice-variant", "small")]);
        let mut body = Body::of(Bytes::from_static(br#"{"model":"big"}"#));
        let chosen = choose(split, &mut req, None, &mut body).unwrap();
        assert_eq!(chosen.lane, 1);
        assert_eq!(chosen.header.unwrap().1, "small");
        assert!(req.headers.get(X_SLUICE_VARIANT).is_none());
        assert_eq!(body.json().unwrap().unwrap()["model"], "m");

        let mut req = request_head(&[("x-sluice-variant", "nope")]);
        match choose(split, &mut req, None, &mut Body::default()) {
            Err(Stop::Respond { error, .. }) => {
                assert_eq!((error.status, error.code), (400, "unknown_variant"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sticky_key_keeps_its_variant_and_no_split_is_lane_0() {
        let p = compile_text(POLICY).unwrap();
        let split = p.routes[0].split.as_ref();
        let lane = |user: &str| {
            choose(
                split,
                &mut request_head(&[("x-user", user)]),
                None,
                &mut Body::default(),
            )
            .unwrap()
            .lane
        };
        for user in ["u1", "u2", "u3", "u4"] {
            assert!((0..20).all(|_| lane(user) == lane(user)), "{user} sticks");
        }
        let lanes: std::collections::HashSet<_> =
            (0..64).map(|i| lane(&format!("user-{i}"))).collect();
        assert_eq!(lanes.len(), 2, "users spread over both variants");
        let none = choose(None, &mut request_head(&[]), None, &mut Body::default()).unwrap();
        assert_eq!((none.lane, none.header.is_none()), (0, true));
    }
}
