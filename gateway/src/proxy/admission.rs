//! The concurrency phase: a request takes one of its upstream's slots before it is forwarded,
//! waiting in the upstream's bounded queue (by priority, then arrival) when all are taken.

use super::ctx::{RequestBody, RequestCtx};
use super::respond::ForwardError;
use crate::config::policy::Route;
use pingora::proxy::Session;
use sluice_plugins::limits::gate::{GateRejection, Priority};
use sluice_plugins::metrics::Rejection;
use sluice_plugins::openai_error::GatewayError;

/// The header that lets interactive traffic pass batch traffic in the queue.
pub const PRIORITY_HEADER: &str = "x-sluice-priority";

/// Takes a slot (the permit lives in the context until the response ends); 503 when the queue
/// is full or the wait too long. A client that disconnects while queued gives up its place.
pub async fn admit(
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: &Route,
) -> Result<(), ForwardError> {
    let upstream = &route.lane(ctx.lane_index()).upstream;
    let Some(admission) = &upstream.admission else {
        return Ok(());
    };
    let priority = session
        .req_header()
        .headers
        .get(PRIORITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Priority::from_header_value)
        .unwrap_or(Priority::Normal);
    // Watching the connection reads from it, so only once the body was read whole (or there
    // is none); a streamed body is still on its way.
    let watch = !matches!(ctx.body, RequestBody::Stream);
    let acquired = tokio::select! {
        acquired = admission.gate.acquire(priority, admission.timeout) => acquired,
        why = client_left(session), if watch => return Err(ForwardError::Aborted(why)),
    };
    let (reason, error) = match acquired {
        Ok(permit) => {
            admission
                .metrics
                .wait
                .observe(permit.waited().as_secs_f64());
            ctx.permit = Some(permit);
            return Ok(());
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
    route.limit_metrics.reject(reason);
    Err(ForwardError::Respond(error))
}

/// Resolves when the client closes its connection (Pingora reads nothing from it while a
/// phase waits); stays pending otherwise.
async fn client_left(session: &mut Session) -> String {
    match session.downstream_session.read_body_or_idle(true).await {
        Err(e) => format!("client left while queued: {}", e.etype().as_str()),
        Ok(_) => std::future::pending().await,
    }
}
