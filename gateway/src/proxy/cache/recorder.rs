//! The cache recorder: a [`ResponseSink`] that copies a miss's response as it passes (the
//! client is never slowed), publishes it to single-flight followers, and stores it when it
//! ended cleanly as a complete 2xx.

use crate::proxy::sink::{is_event_stream, ResponseSink, StreamEnd};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use sluice_plugins::cache::flight::{FlightHead, Leader};
use sluice_plugins::cache::store::CacheStore;
use sluice_plugins::cache::{sse, BodyForm, CacheKey, Entry};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Responses larger than this are relayed but not stored.
pub const MAX_ENTRY_BYTES: usize = 16 * 1024 * 1024;

/// How a recorded response becomes an entry.
pub struct EntryPlan {
    pub key: CacheKey,
    pub route: String,
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub adaptive: bool,
    /// Unix ms when the request started.
    pub now_ms: u64,
    /// A `no-cache` refresh: other instances drop their older copy.
    pub refresh: bool,
}

pub struct CacheRecorder {
    plan: EntryPlan,
    store: Arc<CacheStore>,
    /// The single-flight lead, when this request leads one.
    leader: Option<Leader>,
    started: Instant,
    status: u16,
    content_type: String,
    form: BodyForm,
    body: BytesMut,
    /// False once the response turned out not storable (status, encoding, size).
    storable: bool,
}

impl CacheRecorder {
    #[must_use]
    pub fn new(plan: EntryPlan, store: Arc<CacheStore>, leader: Option<Leader>) -> Self {
        CacheRecorder {
            plan,
            store,
            leader,
            started: Instant::now(),
            status: 0,
            content_type: String::new(),
            form: BodyForm::Json,
            body: BytesMut::new(),
            storable: false,
        }
    }

    /// The entry for a response that ended cleanly, if it may be stored.
    fn entry(&mut self) -> Option<Entry> {
        let body = std::mem::take(&mut self.body).freeze();
        if !self.storable || (self.form == BodyForm::Sse && !sse::ended_cleanly(&body)) {
            return None;
        }
        let p = &self.plan;
        let ttl = duration_ms(p.ttl);
        Some(Entry {
            route: p.route.clone(),
            status: self.status,
            content_type: self.content_type.clone(),
            form: self.form,
            tokens: sse::total_tokens(self.form, &body),
            body,
            stored_at_ms: p.now_ms,
            expires_at_ms: p.now_ms.saturating_add(ttl),
            max_expires_at_ms: p.now_ms.saturating_add(duration_ms(p.max_ttl).max(ttl)),
            extend_ms: if p.adaptive { ttl } else { 0 },
            upstream_ms: duration_ms(self.started.elapsed()),
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ResponseSink for CacheRecorder {
    fn on_head(&mut self, head: &ResponseHeader) {
        self.status = head.status.as_u16();
        let header = |name| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        self.content_type = header(http::header::CONTENT_TYPE).to_string();
        self.form = if is_event_stream(head) {
            BodyForm::Sse
        } else {
            BodyForm::Json
        };
        let encoded = !matches!(header(http::header::CONTENT_ENCODING), "" | "identity");
        self.storable = (200..300).contains(&self.status) && !encoded;
        match (&self.leader, self.storable) {
            (Some(leader), true) => leader.head(FlightHead {
                status: self.status,
                content_type: self.content_type.clone(),
                sse: self.form == BodyForm::Sse,
            }),
            // Followers go on their own: this answer is not one to share.
            (Some(_), false) => {
                if let Some(leader) = self.leader.take() {
                    leader.fail();
                }
            }
            (None, _) => {}
        }
    }

    fn on_chunk(&mut self, chunk: &Bytes) {
        // Live followers get every chunk of a shared answer, stored or not.
        if let Some(leader) = &self.leader {
            leader.chunk(chunk.clone());
        }
        if !self.storable {
            return;
        }
        if self.body.len() + chunk.len() > MAX_ENTRY_BYTES {
            self.storable = false;
            self.body = BytesMut::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }

    fn on_end(&mut self, end: StreamEnd) {
        let entry = match end {
            StreamEnd::Complete => self.entry().map(Arc::new),
            StreamEnd::Aborted => None,
        };
        let leader = self.leader.take();
        match (entry, leader) {
            (Some(entry), leader) => {
                let (key, stored) = (self.plan.key, Arc::clone(&entry));
                if self.plan.refresh {
                    self.store.put_refreshed(key, &self.plan.route, stored);
                } else {
                    self.store.put(key, stored);
                }
                if let Some(leader) = leader {
                    leader.complete(entry);
                }
            }
            (None, Some(leader)) => leader.fail(),
            (None, None) => {}
        }
    }

    fn wants_rest(&self) -> bool {
        self.leader.as_ref().is_some_and(|l| l.followers() > 0)
    }
}
