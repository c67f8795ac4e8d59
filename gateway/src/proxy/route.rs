//! The route phase: which route a request takes, reading the body only when a route's model
//! glob needs it to decide.

use super::body::Body;
use super::stop::Stop;
use crate::config::policy::Route;
use crate::config::Policy;
use pingora::proxy::Session;
use sluice_plugins::body::RequestBody as ParsedBody;
use sluice_plugins::openai_error::GatewayError;
use sluice_plugins::router::HeadMatch;

/// A request matched to a route.
pub struct Routed<'p> {
    pub index: usize,
    pub route: &'p Route,
    /// The body as routing left it: read whole for a model glob, else not read.
    pub body: Body,
}

/// The route a request takes; 404 when none matches, 400 when a body read for its model is
/// not JSON.
pub async fn select<'p>(session: &mut Session, policy: &'p Policy) -> Result<Routed<'p>, Stop> {
    let (index, body) = match_route(session, policy).await?;
    match policy.routes.get(index) {
        Some(route) => Ok(Routed { index, route, body }),
        None => Err(no_route(session)),
    }
}

async fn match_route(session: &mut Session, policy: &Policy) -> Result<(usize, Body), Stop> {
    let req = session.req_header();
    match policy
        .router
        .select_head(&req.method, req.uri.path(), &req.headers)
    {
        HeadMatch::NoRoute => Err(no_route(session)),
        HeadMatch::Route(i) => Ok((i, Body::unread(session))),
        HeadMatch::NeedsBody => {
            let body = Body::read(session, policy.max_body_bytes).await?;
            // No body (a GET, say) has no model; a body that is there must be JSON.
            let parsed = match body.bytes() {
                None => None,
                Some(b) => Some(ParsedBody::parse(b).map_err(|e| GatewayError::bad_json(&e))?),
            };
            let model = parsed.as_ref().and_then(ParsedBody::model);
            let req = session.req_header();
            let index = policy
                .router
                .select_with_model(&req.method, req.uri.path(), &req.headers, model)
                .ok_or_else(|| no_route(session))?;
            Ok((index, body))
        }
    }
}

fn no_route(session: &Session) -> Stop {
    let req = session.req_header();
    GatewayError::no_route(req.method.as_str(), req.uri.path()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::compile_text;
    use crate::proxy::test_session::{post, session};

    const POLICY: &str = "upstreams:\n  u: { endpoints: [ { url: \"http://127.0.0.1:1\" } ] }\nroutes:\n  - { name: big, upstream: u, match: { path_prefix: /v1/chat, model: \"gpt-4*\" } }\n  - { name: chat, upstream: u, match: { path_prefix: /v1/chat } }\n";

    async fn selected(raw: &[u8]) -> Result<(usize, Body), u16> {
        let policy = compile_text(POLICY).unwrap();
        let (mut s, _client) = session(raw).await;
        match select(&mut s, &policy).await {
            Ok(r) => {
                assert_eq!(r.route.name, policy.routes[r.index].name);
                Ok((r.index, r.body))
            }
            Err(Stop::Respond { error, .. }) => Err(error.status),
            Err(Stop::Aborted(why)) => panic!("{why}"),
        }
    }

    #[tokio::test]
    async fn a_model_glob_reads_the_body_and_picks_by_model() {
        let (i, body) = selected(&post("/v1/chat/completions", "", r#"{"model":"gpt-4o"}"#))
            .await
            .unwrap();
        assert_eq!(i, 0);
        assert_eq!(body.len(), 18, "the body read for routing is handed on");
        let (i, _) = selected(&post("/v1/chat/completions", "", r#"{"model":"mini"}"#))
            .await
            .unwrap();
        assert_eq!(i, 1);
    }

    #[tokio::test]
    async fn no_route_is_404_and_a_body_read_for_its_model_must_be_json() {
        assert_eq!(selected(&post("/v2/x", "", "{}")).await.err(), Some(404));
        assert_eq!(
            selected(&post("/v1/chat/completions", "", "nope"))
                .await
                .err(),
            Some(400)
        );
    }
}
