//! The background writer behind Redis and disk. Changes wait in an ordered, bounded queue and
//! are handed over in batches, so one pipeline or one transaction carries many writes; purge
//! and flush travel the same queue as barriers, so they see every write queued before them.

use super::super::{CacheKey, Entry};
use prometheus::IntCounter;
use std::future::Future;
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

/// Most changes handed to a tier at once.
const MAX_BATCH: usize = 128;

/// One write to a slow tier.
pub(super) enum Change {
    /// Store (or replace) an entry; `now_ms` is when it was queued, for Redis's TTL.
    Put {
        key: CacheKey,
        entry: Arc<Entry>,
        now_ms: u64,
    },
    /// Delete an unusable value.
    Remove { key: CacheKey, route: String },
}

enum Op {
    Change(Change),
    Purge(Option<String>, oneshot::Sender<u64>),
    Flush(oneshot::Sender<()>),
}

/// The sending side; the writer task lives on the store's runtime until the queue is dropped.
#[derive(Clone)]
pub(super) struct Queue {
    ops: mpsc::Sender<Op>,
    /// Counts changes dropped because the queue was full.
    errors: IntCounter,
}

impl Queue {
    /// Starts the writer on `handle`: `apply` writes a batch of changes, `purge` removes all
    /// entries or one route's and returns how many.
    pub(super) fn spawn<A, AF, P, PF>(
        handle: &Handle,
        capacity: usize,
        errors: IntCounter,
        apply: A,
        purge: P,
    ) -> Queue
    where
        A: FnMut(Vec<Change>) -> AF + Send + 'static,
        AF: Future<Output = ()> + Send + 'static,
        P: FnMut(Option<String>) -> PF + Send + 'static,
        PF: Future<Output = u64> + Send + 'static,
    {
        let (ops, receiver) = mpsc::channel(capacity);
        handle.spawn(write_loop(receiver, apply, purge));
        Queue { ops, errors }
    }

    /// Queues a change without waiting; a full queue drops it (counted as a tier error).
    pub(super) fn push(&self, change: Change) {
        if let Err(e) = self.ops.try_send(Op::Change(change)) {
            self.errors.inc();
            tracing::debug!(error = %e, "cache: write queue full, write dropped");
        }
    }

    /// Purges after every write queued so far; 0 if the writer is gone.
    pub(super) async fn purge(&self, route: Option<&str>) -> u64 {
        let (done, counted) = oneshot::channel();
        if self
            .ops
            .send(Op::Purge(route.map(str::to_string), done))
            .await
            .is_err()
        {
            return 0;
        }
        counted.await.unwrap_or(0)
    }

    /// Returns once every write queued so far is done.
    pub(super) async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.ops.send(Op::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }
}

async fn write_loop<A, AF, P, PF>(mut receiver: mpsc::Receiver<Op>, mut apply: A, mut purge: P)
where
    A: FnMut(Vec<Change>) -> AF,
    AF: Future<Output = ()>,
    P: FnMut(Option<String>) -> PF,
    PF: Future<Output = u64>,
{
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let mut changes = Vec::new();
        for op in ops.drain(..) {
            match op {
                Op::Change(change) => changes.push(change),
                Op::Purge(route, done) => {
                    if !changes.is_empty() {
                        apply(std::mem::take(&mut changes)).await;
                    }
                    let _ = done.send(purge(route).await);
                }
                Op::Flush(done) => {
                    if !changes.is_empty() {
                        apply(std::mem::take(&mut changes)).await;
                    }
                    let _ = done.send(());
                }
            }
        }
        if !changes.is_empty() {
            apply(changes).await;
        }
    }
}
