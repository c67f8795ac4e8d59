//! The concurrency phase: a request takes one of its upstream's slots before it is forwarded,
//! waiting in the upstream's bounded queue (by priority, then arrival) when all are taken.

use super::stop::Stop;
use crate::config::policy::Upstream;
use pingora::proxy::Session;
use sluice_plugins::limits::gate::{GatePermit, GateRejection, Priority};
use sluice_plugins::metrics::{Rejection, RouteLimitMetrics};
use sluice_plugins::openai_error::GatewayError;

/// The header that lets interactive traffic pass batch traffic in the queue.
pub const PRIORITY_HEADER: &str = "x-sluice-priority";

/// Takes a slot at `upstream` (held until the permit drops, when the response ended; `None`
/// for an upstream without a concurrency limit); 503 when the queue is full or the wait too
/// long, counted in the route's `refused`. A client that disconnects while queued gives up its
/// place; it is watched only when `watch` (its body is read whole, or there is none: watching
/// reads from the connection, and a streamed body is still on its way).
pub async fn admit(
    session: &mut Session,
    upstream: &Upstream,
    refused: &RouteLimitMetrics,
    watch: bool,
) -> Result<Option<GatePermit>, Stop> {
    let Some(admission) = &upstream.admission else {
        return Ok(None);
    };
    let priority = session
        .req_header()
        .headers
        .get(PRIORITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Priority::from_header_value)
        .unwrap_or(Priority::Normal);
    let acquired = tokio::select! {
        acquired = admission.gate.acquire(priority, admission.timeout) => acquired,
        why = client_left(session), if watch => return Err(Stop::Aborted(why)),
    };
    let (reason, error) = match acquired {
        Ok(permit) => {
            admission
                .metrics
                .wait
                .observe(permit.waited().as_secs_f64());
            return Ok(Some(permit));
        }
        Err(GateRejection::QueueFull) => (
            Rejection::QueueFull,
            GatewayError::queue_full(&upstream.name),
        ),
        Err(GateRejection::TimedOut) => {
            admission
                .metrics
                .wait
                .observe(admission.timeout.as_secs_f64());
            (
                Rejection::QueueTimeout,
                GatewayError::queue_timeout(&upstream.name, admission.timeout),
            )
        }
    };
    refused.reject(reason);
    Err(error.into())
}

/// Resolves when the client closes its connection (Pingora reads nothing from it while a
/// phase waits); stays pending otherwise.
async fn client_left(session: &mut Session) -> String {
    match session.downstream_session.read_body_or_idle(true).await {
        Err(e) => format!("client left while queued: {}", e.etype().as_str()),
        Ok(_) => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::compile_text;
    use crate::proxy::test_session::{post, session};

    #[tokio::test]
    async fn a_slot_is_held_until_its_permit_drops_and_a_full_queue_is_503() {
        let p = compile_text("upstreams:\n  u:\n    endpoints: [ { url: \"http://127.0.0.1:1\" } ]\n    max_concurrency: 1\n    queue: { max: 0, timeout: 50ms }\nroutes:\n  - { name: r, upstream: u }\n").unwrap();
        let route = &p.routes[0];
        let up = &route.lanes[0].upstream;
        let (mut s, _c) = session(&post("/v1/x", "", "")).await;
        let permit = admit(&mut s, up, &route.limit_metrics, true).await.unwrap();
        assert!(permit.is_some());
        match admit(&mut s, up, &route.limit_metrics, true).await {
            Err(Stop::Respond { error, .. }) => assert_eq!(error.status, 503),
            other => panic!("{:?}", other.map(|p| p.is_some())),
        }
        drop(permit);
        assert!(admit(&mut s, up, &route.limit_metrics, true)
            .await
            .unwrap()
            .is_some());
    }

    #[tokio::test]
    async fn an_upstream_without_a_concurrency_limit_gives_no_permit() {
        let p = compile_text("upstreams:\n  u: { endpoints: [ { url: \"http://127.0.0.1:1\" } ] }\nroutes:\n  - { name: r, upstream: u }\n").unwrap();
        let route = &p.routes[0];
        let (mut s, _c) = session(&post("/v1/x", "", "")).await;
        let permit = admit(&mut s, &route.lanes[0].upstream, &route.limit_metrics, true)
            .await
            .unwrap();
        assert!(permit.is_none());
    }
}
