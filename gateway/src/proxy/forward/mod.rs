//! Sends a request to one of the route's upstream endpoints over Pingora's pooled
//! `Connector` and streams the answer into a [`Tee`]. Forwarding ourselves (instead of
//! Pingora's proxy loop) lets a body read for routing reach the upstream whole at any size,
//! and lets POSTs be retried on another endpoint with the body replayed. The forwarder reports
//! what happened as an [`Attempt`]; it writes nothing into the request's context.

mod endpoint;

use super::body::{Body, Outgoing};
use super::random::random_u64;
use super::record::UpstreamTry;
use super::sink::Tee;
use super::stop::Stop;
use crate::config::policy::RetryPolicy;
use crate::config::policy::{Lane, Route, Upstream};
use crate::observe::TryRecord;
use endpoint::{TryError, TryRequest};
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::proxy::Session;
use sluice_plugins::metrics::TryFailure;
use sluice_plugins::openai_error::GatewayError;
use sluice_plugins::trace_context::TraceParent;
use std::cell::OnceCell;
use std::time::{Duration, Instant};

/// What forwarding did: the upstream and endpoint last tried (and its time to first byte),
/// the status the client got from it, the body bytes written, and how it ended.
#[derive(Debug)]
pub struct Attempt {
    pub tried: UpstreamTry,
    pub status: Option<u16>,
    pub bytes_out: usize,
    pub outcome: Result<(), Stop>,
    /// Every try, in order, for the trace.
    pub tries: Vec<TryRecord>,
}

/// The request as sent to one upstream of the route.
#[derive(Clone, Copy)]
struct HopRequest<'a> {
    route: &'a Route,
    lane: &'a Lane,
    hop: usize,
    up: &'a Upstream,
    has_fallback: bool,
    trace: Option<&'a TraceParent>,
}

/// How the tries at one upstream ended: with an answer (or a failure no other upstream can
/// mend, such as bytes already sent), or with a failure the next fallback may mend.
enum HopEnd {
    Done(Result<(), Stop>),
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

    /// Tries the route's upstream, then its fallbacks in order, until one answers; a streamed
    /// body may be at most `max_body` bytes; each try is a child span of `trace`.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        session: &mut Session,
        route: &Route,
        lane: &Lane,
        body: &Body,
        max_body: usize,
        trace: Option<&TraceParent>,
        tee: &mut Tee<'_>,
    ) -> Attempt {
        let mut attempt = Attempt {
            tried: UpstreamTry::default(),
            status: None,
            bytes_out: 0,
            outcome: Ok(()),
            tries: Vec::new(),
        };
        // A route with fallbacks reads the body, so a streamed one meets only this upstream.
        let mut body = match body.outgoing(session, lane.upstream.retry.buffer, max_body) {
            Ok(body) => body,
            Err(e) => {
                attempt.outcome = Err(e);
                return attempt;
            }
        };
        let mut hop = 0;
        while let Some(up) = lane.hop(hop) {
            attempt.tried.hop = hop;
            let fallback = lane.hop(hop + 1);
            let to = HopRequest {
                route,
                lane,
                hop,
                up,
                has_fallback: fallback.is_some(),
                trace,
            };
            match self
                .forward_to(session, &to, &mut body, tee, &mut attempt)
                .await
            {
                HopEnd::Done(outcome) => {
                    attempt.outcome = outcome;
                    break;
                }
                HopEnd::Failed(error) => {
                    if let Some(next) = fallback {
                        tracing::debug!(route = %route.name, from = %up.name, to = %next.name, reason = %error.message, "falling back");
                    }
                    attempt.outcome = Err(error.into());
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
        body: &mut Outgoing<'_>,
        tee: &mut Tee<'_>,
        attempt: &mut Attempt,
    ) -> HopEnd {
        let HopRequest {
            route,
            lane,
            hop,
            up,
            has_fallback,
            trace,
        } = *to;
        let mut tried = Vec::new();
        let mut retries_left = up.retry.attempts;
        up.retry_budget.record_request(Instant::now());
        let mut stale_retry_left = true;
        loop {
            let Some(idx) = up.balancer.pick(&tried, Instant::now()) else {
                return HopEnd::Failed(GatewayError::no_endpoint(&up.name));
            };
            attempt.tried.endpoint = Some(idx);
            let try_req = TryRequest {
                route,
                lane,
                hop,
                up,
                idx,
                can_retry_status: retries_left > 0 || has_fallback,
                span: random_u64() | 1,
                trace,
            };
            let mut error = match endpoint::try_endpoint(
                self.connector(),
                session,
                &try_req,
                body,
                tee,
                attempt,
            )
            .await
            {
                Ok(()) => return HopEnd::Done(Ok(())),
                Err(TryError::Final(e, _)) => return HopEnd::Done(Err(e)),
                Err(TryError::Retry(retry)) => retry,
            };
            let replayable = body.replayable();
            if error.stale && stale_retry_left && replayable {
                stale_retry_left = false;
            } else if error.allowed && retries_left > 0 && replayable {
                tried.push(idx);
                if !(error.budgeted || retry_granted(up, error.kind, &tried, Instant::now())) {
                    error.error.message.push_str(&format!(
                        " (not retried: the retry budget of upstream {} is exhausted)",
                        up.name
                    ));
                    return if has_fallback {
                        HopEnd::Failed(error.error)
                    } else {
                        HopEnd::Done(Err(error.error.into()))
                    };
                }
                if let Some(wait) = backoff(&up.retry, up.retry.attempts - retries_left) {
                    tokio::time::sleep(wait).await;
                }
                retries_left -= 1;
            } else if has_fallback && replayable {
                return HopEnd::Failed(error.error);
            } else {
                return HopEnd::Done(Err(error.error.into()));
            }
            up.endpoints[idx].metrics.retries.inc();
            tracing::debug!(upstream = %up.name, endpoint = %up.endpoints[idx].url, reason = %error.error.message, "retrying");
        }
    }
}

/// Whether a try that failed with `kind` may be retried: after a failed connect while an
/// endpoint not in `tried` is left (nothing was sent, so moving on costs the upstream
/// nothing), else when the retry budget allows it (a refusal is counted).
fn retry_granted(up: &Upstream, kind: Option<TryFailure>, tried: &[usize], now: Instant) -> bool {
    (kind == Some(TryFailure::Connect) && up.balancer.offers_untried(tried, now))
        || up.spend_retry(now)
}

/// The wait before retry `n` (0-based): `base` × 2ⁿ up to `max`, then a random part of its
/// upper half, so the retries of many clients spread out instead of arriving together.
fn backoff(policy: &RetryPolicy, n: u32) -> Option<Duration> {
    let (base, max) = policy.backoff?;
    let full = base.saturating_mul(1u32 << n.min(16)).min(max);
    let share = 0.5 + (random_u64() >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
    Some(full.mul_f64(share))
}

#[cfg(test)]
mod tests;
