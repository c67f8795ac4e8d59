//! The Pingora adapter. `request_filter` runs the phases of the request path (docs/architecture.md) in
//! order, each a few lines that hand a decision to an engine; `logging` turns the context into
//! one [`Finished`](crate::observe::Finished) record for the metrics and the access log.
//! See docs/architecture.md for the phase chart.

mod admission;
mod body;
mod cache;
mod ctx;
mod forward;
mod headers;
mod identity;
mod limits;
mod phases;
mod respond;
mod sink;
mod split;

use crate::reload::PolicyStore;
use async_trait::async_trait;
pub use ctx::{ActiveRequests, RequestCtx};
pub use forward::Forwarder;
use phases::Flow;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use respond::ForwardError;
use sluice_plugins::cache::PromptCache;
use sluice_plugins::limits::shared::SharedBuckets;
use std::sync::Arc;

/// sluice's `ProxyHttp`.
pub struct Gateway {
    store: Arc<PolicyStore>,
    forwarder: Forwarder,
    active: Arc<ActiveRequests>,
    /// The cache tiers and flights, when a route caches.
    cache: Option<Arc<PromptCache>>,
    /// The Redis buckets of shared limits, when a limit is shared.
    shared_limits: Option<Arc<SharedBuckets>>,
}

impl Gateway {
    #[must_use]
    pub fn new(
        store: Arc<PolicyStore>,
        forwarder: Forwarder,
        active: Arc<ActiveRequests>,
        cache: Option<Arc<PromptCache>>,
        shared_limits: Option<Arc<SharedBuckets>>,
    ) -> Self {
        Gateway {
            store,
            forwarder,
            active,
            cache,
            shared_limits,
        }
    }

    fn shared_limits(&self) -> Option<&SharedBuckets> {
        self.shared_limits.as_deref()
    }

    /// The phases in order; the first that answers ends the request.
    async fn run_phases(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), ForwardError> {
        let policy = self.store.load();
        ctx.policy = Some(Arc::clone(&policy));
        phases::normalize_target(session)?;
        if let Flow::Done = phases::route(session, ctx, &policy).await? {
            return Ok(());
        }
        let Some(route) = ctx.route.and_then(|i| policy.routes.get(i)) else {
            return Ok(());
        };
        if let Flow::Done = phases::read_body_if_needed(session, ctx, &policy, route).await? {
            return Ok(());
        }
        if let Flow::Done = split::choose_variant(session, ctx, route)? {
            return Ok(());
        }
        if let Flow::Done = limits::admit_requests(self, session, ctx, route).await? {
            return Ok(());
        }
        if let Flow::Done = phases::cache_lookup(self, session, ctx, route).await? {
            limits::charge_hit(self, session, ctx, route).await;
            return Ok(());
        }
        if let Flow::Done = phases::admit_tokens_and_slot(self, session, ctx, route).await? {
            return Ok(());
        }
        phases::forward(self, session, ctx, route).await?;
        Ok(())
    }
}

/// A random number without a crate: std keys each `RandomState` differently (per-thread keys
/// that advance on every call), so hashing nothing with a fresh one gives a new value.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.active.enter())
    }

    /// sluice answers every request in `request_filter`, so Pingora's own upstream path is unused.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "sluice forwards in request_filter",
        )
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let ran = self.run_phases(session, ctx).await;
        limits::release_unsettled(self, ctx).await;
        match ran {
            Ok(()) => Ok(true),
            Err(ForwardError::Respond(err)) => {
                respond::error(session, ctx, &err).await;
                Ok(true)
            }
            Err(ForwardError::Aborted(reason)) => {
                ctx.error = Some(reason.clone());
                // An error (not Ok) makes Pingora close the client connection, so a cut-short
                // stream is not terminated as if it were complete.
                Error::e_explain(ErrorType::HTTPStatus(502), reason)
            }
        }
    }

    async fn fail_to_proxy(
        &self,
        _session: &mut Session,
        _e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        FailToProxy {
            error_code: 0,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(policy) = ctx.policy.clone() else {
            return;
        };
        let finished = ctx.finished(session);
        crate::observe::record_metrics(&finished, &policy);
        crate::access_log::write(&finished);
    }
}
