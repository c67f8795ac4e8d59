//! The request path, one function per phase (ARCHITECTURE.md section 7):
//! route → read body (when a phase needs it) → forward. Each phase returns [`Flow`]; a route
//! without a phase's policy pays nothing for it.

use super::body::read_body;
use super::ctx::{RequestBody, RequestCtx};
use super::respond::ForwardError;
use super::sink::Tee;
use super::Gateway;
use crate::config::Policy;
use pingora::proxy::Session;
use sluice_plugins::body::RequestBody as ParsedBody;
use sluice_plugins::openai_error::GatewayError;
use sluice_plugins::router::HeadMatch;

/// Whether the request goes on to the next phase or was answered.
pub enum Flow {
    Next,
    Done,
}

/// Route match; reads the body when a route's model glob needs it.
pub async fn route(
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &Policy,
) -> Result<Flow, ForwardError> {
    let req = session.req_header();
    let index = match policy
        .router
        .select_head(&req.method, req.uri.path(), &req.headers)
    {
        HeadMatch::NoRoute => return Err(no_route(session)),
        HeadMatch::Route(i) => {
            ctx.body = if session.is_body_empty() {
                RequestBody::Empty
            } else {
                RequestBody::Stream
            };
            i
        }
        HeadMatch::NeedsBody => {
            let bytes = read(session, ctx, policy).await?;
            // No body (a GET, say) has no model; a body that is there must be JSON.
            let parsed = if bytes.is_empty() {
                None
            } else {
                Some(ParsedBody::parse(&bytes).map_err(|e| bad_json(&e))?)
            };
            let model = parsed.as_ref().and_then(ParsedBody::model);
            let req = session.req_header();
            policy
                .router
                .select_with_model(&req.method, req.uri.path(), &req.headers, model)
                .ok_or_else(|| no_route(session))?
        }
    };
    ctx.enter_route(index, &policy.routes[index]);
    Ok(Flow::Next)
}

/// Forwards to the route's upstream and settles what happened into the context.
pub async fn forward(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &Policy,
) -> Result<Flow, ForwardError> {
    let Some(route) = ctx.route.and_then(|i| policy.routes.get(i)) else {
        return Err(no_route(session));
    };
    let mut tee = Tee::new();
    let body = std::mem::take(&mut ctx.body);
    let mut attempt = gw.forwarder.forward(session, route, &body, &mut tee).await;
    ctx.body = body;
    let outcome = std::mem::replace(&mut attempt.outcome, Ok(()));
    ctx.record_attempt(attempt);
    outcome.map(|()| Flow::Done)
}

/// Reads the whole body (up to the cap) into the context.
async fn read(
    session: &mut Session,
    ctx: &mut RequestCtx,
    policy: &Policy,
) -> Result<bytes::Bytes, ForwardError> {
    let bytes = read_body(session, policy.max_body_bytes).await?;
    ctx.bytes_in = bytes.len();
    ctx.body = if bytes.is_empty() {
        RequestBody::Empty
    } else {
        RequestBody::Buffered(bytes.clone())
    };
    Ok(bytes)
}

fn no_route(session: &Session) -> ForwardError {
    let req = session.req_header();
    ForwardError::Respond(GatewayError::no_route(req.method.as_str(), req.uri.path()))
}

fn bad_json(detail: &str) -> ForwardError {
    ForwardError::Respond(GatewayError::bad_json(detail))
}
