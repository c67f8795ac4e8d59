//! Sends a request to one of the route's upstream endpoints over Pingora's pooled
//! `Connector` and streams the answer into a [`Tee`]. Forwarding ourselves (instead of
//! Pingora's proxy loop) lets a body read for routing reach the upstream whole at any size,
//! and lets POSTs be retried on another endpoint with the body replayed. The forwarder reports
//! what happened as an [`Attempt`]; it writes nothing into the request's context.

mod endpoint;

use super::ctx::RequestBody;
use super::respond::ForwardError;
use super::sink::Tee;
use crate::config::policy::RetryPolicy;
use crate::config::policy::{Lane, Route, Upstream};
use endpoint::{TryError, TryRequest};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;
use std::cell::OnceCell;
use std::time::{Duration, Instant};

/// What forwarding did: the upstream (`hop`: 0 for the route's own, then its fallbacks) and
/// endpoint last tried, its time to first byte, the status the client got from it, the body
/// bytes written, and how it ended.
#[derive(Debug)]
pub struct Attempt {
    pub hop: usize,
    pub endpoint: Option<usize>,
    pub ttfb: Option<Duration>,
    pub status: Option<u16>,
    pub bytes_out: usize,
    pub outcome: Result<(), ForwardError>,
}

/// The request as sent to one upstream of the route.
#[derive(Clone, Copy)]
struct HopRequest<'a> {
    route: &'a Route,
    lane: &'a Lane,
    hop: usize,
    up: &'a Upstream,
    has_fallback: bool,
    body: &'a RequestBody,
}

/// How the tries at one upstream ended: with an answer (or a failure no other upstream can
/// mend, such as bytes already sent), or with a failure the next fallback may mend.
enum HopEnd {
    Done(Result<(), ForwardError>),
    Failed(GatewayError),
}

/// Forwards requests over a connection pool per worker thread, so a pooled connection is
/// reused by the thread (and so the runtime) that opened it, whatever the runtime flavour.
pub struct Forwarder {
    options: ConnectorOptions,
}

thread_local! {
    static CONNECTOR: OnceCell<&'static Connector> = const { OnceCell::new() };
}

impl Forwarder {
    #[must_use]
    pub fn new(options: ConnectorOptions) -> Self {
        Forwarder { options }
    }

    /// This thread's connector, created on first use and kept for the life of the thread.
    fn connector(&self) -> &'static Connector {
        CONNECTOR.with(|c| {
            *c.get_or_init(|| Box::leak(Box::new(Connector::new(Some(self.options.clone())))))
        })
    }

    /// Tries the route's upstream, then its fallbacks in order, until one answers.
    pub async fn forward(
        &self,
        session: &mut Session,
        route: &Route,
        lane: &Lane,
        body: &RequestBody,
        tee: &mut Tee<'_>,
    ) -> Attempt {
        let mut attempt = Attempt {
            hop: 0,
            endpoint: None,
            ttfb: None,
            status: None,
            bytes_out: 0,
            outcome: Ok(()),
        };
        let mut hop = 0;
        while let Some(up) = lane.hop(hop) {
            attempt.hop = hop;
            let fallback = lane.hop(hop + 1);
            let to = HopRequest {
                route,
                lane,
                hop,
                up,
                has_fallback: fallback.is_some(),
                body,
            };
            match self.forward_to(session, &to, tee, &mut attempt).await {
                HopEnd::Done(outcome) => {
                    attempt.outcome = outcome;
                    break;
                }
                HopEnd::Failed(error) => {
                    if let Some(next) = fallback {
                        tracing::debug!(route = %route.name, from = %up.name, to = %next.name, reason = %error.message, "falling back");
                    }
                    attempt.outcome = Err(ForwardError::Respond(error));
                }
            }
            hop += 1;
        }
        attempt.bytes_out = tee.bytes_out;
        attempt
    }

    /// Tries endpoints of `up` until one answers or the retry policy gives up.
    async fn forward_to(
        &self,
        session: &mut Session,
        to: &HopRequest<'_>,
        tee: &mut Tee<'_>,
        attempt: &mut Attempt,
    ) -> HopEnd {
        let HopRequest {
            route,
            lane,
            hop,
            up,
            has_fallback,
            body,
        } = *to;
        let mut tried = Vec::new();
        let mut retries_left = up.retry.attempts;
        up.retry_budget.record_request(Instant::now());
        let mut stale_retry_left = true;
        let streams_body = matches!(body, RequestBody::Stream);
        loop {
            let Some(idx) = up.balancer.pick(&tried, Instant::now()) else {
                return HopEnd::Failed(GatewayError::no_endpoint(&up.name));
            };
            attempt.endpoint = Some(idx);
            let try_req = TryRequest {
                route,
                lane,
                hop,
                up,
                idx,
                body,
                // A status is retried only with a body still in hand; a streamed one is gone.
                can_retry_status: (retries_left > 0 || has_fallback) && !streams_body,
            };
            let error =
                match endpoint::try_endpoint(self.connector(), session, &try_req, tee, attempt)
                    .await
                {
                    Ok(()) => return HopEnd::Done(Ok(())),
                    Err(TryError::Final(e, _)) => return HopEnd::Done(Err(e)),
                    Err(TryError::Retry(retry)) => retry,
                };
            // A streamed body can be sent only once; a read one is replayed.
            let replayable = !(streams_body && error.body_used);
            if error.stale && stale_retry_left && replayable {
                stale_retry_left = false;
            } else if error.allowed
                && retries_left > 0
                && replayable
                && (error.budgeted || up.retry_budget.try_retry(Instant::now()))
            {
                if let Some(wait) = backoff(&up.retry, up.retry.attempts - retries_left) {
                    tokio::time::sleep(wait).await;
                }
                retries_left -= 1;
                tried.push(idx);
            } else if has_fallback && replayable {
                return HopEnd::Failed(error.error);
            } else {
                return HopEnd::Done(Err(ForwardError::Respond(error.error)));
            }
            up.endpoints[idx].metrics.retries.inc();
            tracing::debug!(upstream = %up.name, endpoint = %up.endpoints[idx].url, reason = %error.error.message, "retrying");
        }
    }
}

/// The wait before retry `n` (0-based): `base` × 2ⁿ up to `max`, then a random part of its
/// upper half, so the retries of many clients spread out instead of arriving together.
fn backoff(policy: &RetryPolicy, n: u32) -> Option<Duration> {
    let (base, max) = policy.backoff?;
    let full = base.saturating_mul(1u32 << n.min(16)).min(max);
    let share = 0.5 + (super::random_u64() >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
    Some(full.mul_f64(share))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_with_jitter_in_the_upper_half() {
        let ms = Duration::from_millis;
        let policy = RetryPolicy {
            backoff: Some((ms(20), ms(100))),
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            let first = backoff(&policy, 0).unwrap();
            assert!(first >= ms(10) && first <= ms(20), "{first:?}");
            let third = backoff(&policy, 2).unwrap();
            assert!(third >= ms(40) && third <= ms(80), "{third:?}");
            let capped = backoff(&policy, 30).unwrap();
            assert!(capped >= ms(50) && capped <= ms(100), "{capped:?}");
        }
        let waits: std::collections::HashSet<_> = (0..20).map(|_| backoff(&policy, 0)).collect();
        assert!(waits.len() > 10, "jittered: {waits:?}");
        assert_eq!(backoff(&RetryPolicy::default(), 0), None);
    }
}
