//! Who is asking: the caller's gateway key (by name, once the auth phase found it) or else the
//! API key it sent (cache scopes and limit keys hash it, so the secret never enters key material
//! or Redis), and the bucket key a limit draws from.

use crate::config::keys::ClientKey;
use crate::config::policy::LimitKey;
use crate::config::split::StickyKey;
use http::HeaderMap;
use pingora::proxy::Session;
use serde_json::{Map, Value};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The gateway key the caller presented, when it is one of `keys:` (found by the auth phase,
/// which then takes the credential off the request).
pub type Caller<'p> = Option<&'p Arc<ClientKey>>;

/// Seed of the hashes of a gateway key's name: apart from those of a raw API key, so no value a
/// client sends can stand for a named key.
pub const NAMED_KEY_SEED: u64 = 6;

/// The caller's API key: `Authorization: Bearer`, `api-key` (Azure) or `x-api-key`.
pub fn api_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        return Some(v.strip_prefix(b"Bearer ").unwrap_or(v));
    }
    ["api-key", "x-api-key"]
        .iter()
        .find_map(|h| headers.get(*h))
        .map(http::HeaderValue::as_bytes)
}

/// The bucket a request draws from for a limit keyed by `key`. Requests without the key (no
/// API key, no such header, no `user`) share one bucket, so leaving it out evades nothing.
pub fn bucket_key(
    key: &LimitKey,
    session: &Session,
    caller: Caller<'_>,
    body: Option<&Map<String, Value>>,
) -> u64 {
    let headers = &session.req_header().headers;
    let ip;
    let (seed, material): (u64, Option<&[u8]>) = match key {
        LimitKey::ApiKey => match caller {
            Some(named) => (NAMED_KEY_SEED, Some(named.name.as_bytes())),
            None => (1, api_key(headers)),
        },
        LimitKey::Header(name) => (2, headers.get(name).map(http::HeaderValue::as_bytes)),
        LimitKey::Ip => {
            ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string());
            (3, ip.as_deref().map(str::as_bytes))
        }
        LimitKey::BodyUser => (4, body_user(body)),
        LimitKey::Route => (5, Some(&[][..])),
    };
    material.map_or(0, |m| xxh3_64_with_seed(m, seed))
}

/// The key a split sticks a user by, if the request carries it.
pub fn sticky_key<'a>(
    key: &StickyKey,
    headers: &'a HeaderMap,
    caller: Caller<'a>,
    body: Option<&'a Map<String, Value>>,
) -> Option<&'a [u8]> {
    match key {
        StickyKey::ApiKey => caller
            .map(|k| k.name.as_bytes())
            .or_else(|| api_key(headers)),
        StickyKey::Header(name) => headers.get(name).map(http::HeaderValue::as_bytes),
        StickyKey::Cookie(name) => cookie(headers, name),
        StickyKey::BodyUser => body_user(body),
    }
    .filter(|k| !k.is_empty())
}

/// The JSON body's `user` field, which OpenAI's API defines as the end user's id.
fn body_user(body: Option<&Map<String, Value>>) -> Option<&[u8]> {
    body?.get("user")?.as_str().map(str::as_bytes)
}

/// The value of cookie `name` in any `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_among_several() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; uid=u-42".parse().unwrap());
        h.append(http::header::COOKIE, "b=2".parse().unwrap());
        let key = StickyKey::Cookie("uid".into());
        assert_eq!(sticky_key(&key, &h, None, None), Some(&b"u-42"[..]));
        assert_eq!(
            sticky_key(&StickyKey::Cookie("b".into()), &h, None, None),
            Some(&b"2"[..])
        );
        assert_eq!(
            sticky_key(&StickyKey::Cookie("u".into()), &h, None, None),
            None
        );
    }
}
