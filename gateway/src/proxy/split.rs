//! The split phase (A/B): picks the request's variant (override, sticky key or a draw), rewrites
//! the body fields the variant sets before the cache key is taken, adds its request headers,
//! and names it in `x-sluice-variant` on whatever answer the client gets.

use super::ctx::{RequestBody, RequestCtx};
use super::headers::X_SLUICE_VARIANT;
use super::identity::sticky_key;
use super::phases::Flow;
use super::respond::ForwardError;
use crate::config::policy::Route;
use crate::config::split::RouteSplit;
use http::header::HeaderName;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;
use std::hash::BuildHasher;

/// Sets the request's lane to its variant and applies the variant to the request.
pub fn assign(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<Flow, ForwardError> {
    let Some(split) = &route.split else {
        ctx.lane = Some(0);
        return Ok(Flow::Next);
    };
    let index = choose(session, ctx, split)?;
    let variant = &split.variants[index];
    ctx.lane = Some(index);
    ctx.response_headers.push((
        HeaderName::from_static(X_SLUICE_VARIANT),
        variant.header.clone(),
    ));
    let req = session.req_header_mut();
    // The override is for sluice; the upstream never sees it.
    req.remove_header(X_SLUICE_VARIANT);
    for (name, value) in &variant.headers {
        req.insert_header(name.clone(), value.clone())
            .map_err(|e| {
                ForwardError::Respond(GatewayError::new(
                    500,
                    "server_error",
                    "variant_header",
                    e.to_string(),
                ))
            })?;
    }
    if !variant.set.is_empty() {
        if let Some(body) = ctx.json_mut()? {
            for (field, value) in &variant.set {
                body.insert(field.clone(), value.clone());
            }
            let bytes = serde_json::to_vec(body)
                .map_err(|e| ForwardError::Respond(GatewayError::bad_json(&e.to_string())))?;
            ctx.body = RequestBody::Buffered(bytes.into());
        }
    }
    Ok(Flow::Next)
}

/// The override when the route allows it, else the sticky key's variant, else a draw.
fn choose(
    session: &Session,
    ctx: &mut RequestCtx,
    split: &RouteSplit,
) -> Result<usize, ForwardError> {
    let headers = &session.req_header().headers;
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
            ForwardError::Respond(GatewayError::unknown_variant(&asked, &known))
        });
    }
    let Some(key) = &split.sticky else {
        return Ok(split.assign.draw(random()));
    };
    let body = match key {
        crate::config::split::StickyKey::BodyUser => ctx.json()?,
        _ => None,
    };
    Ok(match sticky_key(key, headers, body) {
        Some(material) => split.assign.assign(material),
        None => split.assign.draw(random()),
    })
}

/// A fresh random number: each `RandomState` is seeded anew, so no generator state is shared.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now())
}
