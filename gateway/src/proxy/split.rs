//! The split phase (A/B): picks the request's variant (override, sticky key or a draw), rewrites
//! the body fields the variant sets before the cache key is taken, and names it in
//! `x-sluice-variant` on whatever answer the client gets. The variant's request headers are
//! added only to what the upstream gets (the forwarder reads them from the lane), so cache
//! scopes and limit keys still see the client's own headers.

use super::ctx::RequestCtx;
use super::headers::X_SLUICE_VARIANT;
use super::identity::sticky_key;
use super::phases::Flow;
use super::random_u64;
use super::respond::ForwardError;
use crate::config::policy::Route;
use crate::config::split::{RouteSplit, StickyKey};
use http::header::HeaderName;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;

/// Sets the request's lane to its variant and applies the variant to the request.
pub fn choose_variant(
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
    // The override is for sluice; the upstream never sees it.
    session.req_header_mut().remove_header(X_SLUICE_VARIANT);
    if !variant.set.is_empty() {
        ctx.rewrite_json(|body| {
            for (field, value) in &variant.set {
                body.insert(field.clone(), value.clone());
            }
            true
        })?;
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
        return Ok(split.assign.draw(random_u64()));
    };
    // A body that is not a JSON object has no `user`: the request is drawn like one without.
    let body = match key {
        StickyKey::BodyUser => ctx.json().ok().flatten(),
        _ => None,
    };
    Ok(match sticky_key(key, headers, body) {
        Some(material) => split.assign.assign(material),
        None => split.assign.draw(random_u64()),
    })
}
