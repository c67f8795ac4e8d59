//! The Pingora adapter. `request_filter` hands the request to the [`pipeline`], which runs the
//! phases in order (docs/architecture.md has the chart); `logging` turns the request's record
//! into one [`Finished`](crate::observe::Finished) for the metrics and the access log.

mod admission;
mod auth;
mod body;
mod cache;
mod capture;
mod ctx;
mod forward;
mod headers;
mod identity;
mod limits;
mod pipeline;
mod random;
mod record;
mod respond;
mod route;
mod sink;
mod split;
mod stop;
mod target;
#[cfg(test)]
mod test_session;
mod trace;
mod usage;

use crate::otlp::OtlpExporter;
use crate::reload::PolicyStore;
use crate::usage_log::UsageLog;
use async_trait::async_trait;
pub use ctx::{ActiveRequests, RequestCtx};
pub use forward::Forwarder;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use pipeline::Engines;
use sluice_plugins::cache::PromptCache;
use sluice_plugins::limits::shared::SharedBuckets;
use std::sync::Arc;

/// sluice's `ProxyHttp`.
pub struct Gateway {
    store: Arc<PolicyStore>,
    engines: Engines,
    active: Arc<ActiveRequests>,
    usage_log: Option<UsageLog>,
    otlp: Option<OtlpExporter>,
}

impl Gateway {
    #[must_use]
    pub fn new(
        store: Arc<PolicyStore>,
        forwarder: Forwarder,
        active: Arc<ActiveRequests>,
        cache: Option<Arc<PromptCache>>,
        shared_limits: Option<Arc<SharedBuckets>>,
        usage_log: Option<UsageLog>,
        otlp: Option<OtlpExporter>,
    ) -> Self {
        Gateway {
            store,
            engines: Engines {
                forwarder,
                cache,
                shared_limits,
            },
            active,
            usage_log,
            otlp,
        }
    }
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
        let policy = self.store.load();
        ctx.policy = Some(Arc::clone(&policy));
        match pipeline::run(&self.engines, &policy, session, ctx).await {
            Ok(()) => Ok(true),
            Err(reason) => {
                ctx.record.error = Some(reason.clone());
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
        let Some(policy) = &ctx.policy else {
            return;
        };
        let finished = ctx.record.finished(policy, session);
        crate::observe::record_metrics(&finished, policy);
        crate::access_log::write(&finished);
        if let Some(log) = &self.usage_log {
            log.write(&finished);
        }
        if let Some(otlp) = &self.otlp {
            otlp.export(&finished);
        }
    }
}
