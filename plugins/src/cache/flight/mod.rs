//! Single-flight of identical cache misses. When N clients send the same prompt at once, a cache
//! alone still makes N upstream calls (they all miss before the first response is stored); no
//! LLM gateway we know coalesces them, least of all streams. Here the first request for a key
//! leads and forwards, the rest follow: the leader publishes its response as it passes (head,
//! each chunk, end), so plain followers wait for the stored entry and streaming followers replay
//! the chunks so far and then the live ones. A leader that fails or is dropped ends the flight
//! with `Failed`, so followers are never stranded and may forward on their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{CacheKey, Entry};

/// Flights by key; shared by the table and every leader (which removes its own flight).
type Table = Arc<Mutex<HashMap<CacheKey, Arc<Flight>>>>;

/// Locks, recovering from poison: every update is a single push/assignment, so state stays valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The table of flights in progress, shared by all requests (outlives config reloads).
#[derive(Debug, Default)]
pub struct Flights {
    table: Table,
}

/// What a request does on a miss.
#[derive(Debug)]
pub enum Role {
    /// Forward upstream and publish the response.
    Leader(Leader),
    /// Wait for the leader's response.
    Follower(Follower),
}

/// What the leader learned from the upstream's response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlightHead {
    pub status: u16,
    pub content_type: String,
    pub sse: bool,
}

/// How a flight ended.
#[derive(Debug, Clone)]
enum End {
    Complete(Arc<Entry>),
    Failed,
}

/// What the leader has published so far.
#[derive(Debug, Default)]
struct State {
    head: Option<FlightHead>,
    chunks: Vec<Bytes>,
    end: Option<End>,
}

/// One upstream call in progress and everything it has published.
struct Flight {
    key: CacheKey,
    state: Mutex<State>,
    /// Woken after every change to `state`.
    changed: Notify,
    followers: AtomicUsize,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The chunks may be megabytes: show the shape only.
        f.debug_struct("Flight")
            .field("key", &self.key)
            .field("followers", &self.followers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The one request per flight that forwards upstream. Dropping it without
/// [`Leader::complete`] or [`Leader::fail`] fails the flight.
#[derive(Debug)]
pub struct Leader {
    flight: Arc<Flight>,
    table: Table,
    ended: bool,
}

/// A request waiting on a leader's response. Dropping it detaches it.
#[derive(Debug)]
pub struct Follower {
    flight: Arc<Flight>,
    cursor: Cursor,
}

/// How far one follower has read.
#[derive(Debug, Default)]
struct Cursor {
    head_seen: bool,
    /// Index of the next chunk to hand out.
    next_chunk: usize,
    /// Set by [`Follower::finished`]: chunks are skipped from then on.
    skip_chunks: bool,
}

/// One step of the leader's response, as seen by a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightEvent {
    Head(FlightHead),
    Chunk(Bytes),
    /// The response ended cleanly and was stored as this entry.
    Complete(Arc<Entry>),
    /// The response cannot be shared: forward on your own if nothing was written yet.
    Failed,
}

// === impl Flights ===

impl Flights {
    /// Joins the flight for `key`: the first caller leads, the rest follow until the leader
    /// finishes.
    pub fn join(&self, key: CacheKey) -> Role {
        let mut table = lock(&self.table);
        if let Some(flight) = table.get(&key) {
            // Counted under the table lock, so a leader never misses a follower it could serve.
            flight.followers.fetch_add(1, Ordering::Relaxed);
            return Role::Follower(Follower {
                flight: Arc::clone(flight),
                cursor: Cursor::default(),
            });
        }
        let flight = Arc::new(Flight {
            key,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            followers: AtomicUsize::new(0),
        });
        table.insert(key, Arc::clone(&flight));
        Role::Leader(Leader {
            flight,
            table: Arc::clone(&self.table),
            ended: false,
        })
    }

    /// Flights in progress (metrics/tests).
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.table).len()
    }

    /// Whether no flight is in progress.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        lock(&self.table).is_empty()
    }
}

// === impl Leader ===

impl Leader {
    /// Publishes the response head. Call it only for a response you mean to share (2xx); the
    /// first call wins, later ones are ignored.
    pub fn head(&self, head: FlightHead) {
        let mut state = lock(&self.flight.state);
        debug_assert!(state.head.is_none(), "flight head published twice");
        if state.head.is_none() {
            state.head = Some(head);
            drop(state);
            self.flight.changed.notify_waiters();
        }
    }

    /// Publishes one body chunk as received from the upstream (empty chunks are skipped).
    pub fn chunk(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        lock(&self.flight.state).chunks.push(data);
        self.flight.changed.notify_waiters();
    }

    /// The response ended cleanly and was stored as `entry`.
    pub fn complete(mut self, entry: Arc<Entry>) {
        self.end(End::Complete(entry));
    }

    /// The response cannot be shared (non-2xx, aborted, not storable).
    pub fn fail(mut self) {
        self.end(End::Failed);
    }

    /// Followers currently attached (so the gateway can keep reading the upstream for them when
    /// the leader's own client went away).
    #[must_use]
    pub fn followers(&self) -> usize {
        self.flight.followers.load(Ordering::Relaxed)
    }

    /// The key this flight is for.
    #[must_use]
    pub fn key(&self) -> CacheKey {
        self.flight.key
    }

    fn end(&mut self, end: End) {
        if self.ended {
            return;
        }
        self.ended = true;
        {
            // Removed before the end is set, so later joins lead; never a newer flight.
            let mut table = lock(&self.table);
            if table
                .get(&self.flight.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                table.remove(&self.flight.key);
            }
        }
        lock(&self.flight.state).end = Some(end);
        self.flight.changed.notify_waiters();
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // A panicking or cancelled leader must not strand its followers.
        self.end(End::Failed);
    }
}

// === impl Follower ===

impl Follower {
    /// The next event in order: Head first (when known), then every chunk from the start, then
    /// Complete or Failed. After Complete/Failed it keeps returning that end event.
    /// Cancel-safe: a dropped call loses no event.
    pub async fn next(&mut self) -> FlightEvent {
        loop {
            // Created before the check: `notify_waiters` wakes it even if it is not yet polled.
            let changed = self.flight.changed.notified();
            if let Some(event) = self.cursor.advance(&self.flight) {
                return event;
            }
            changed.await;
        }
    }

    /// Skips the live chunks: waits for the end (plain followers, or a follower that needs the
    /// other body form). `None` means the flight failed. Later [`Follower::next`] calls return
    /// the end event.
    pub async fn finished(&mut self) -> Option<Arc<Entry>> {
        self.cursor.skip_chunks = true;
        loop {
            match self.next().await {
                FlightEvent::Complete(entry) => return Some(entry),
                FlightEvent::Failed => return None,
                FlightEvent::Head(_) | FlightEvent::Chunk(_) => {}
            }
        }
    }

    /// The key this flight is for.
    #[must_use]
    pub fn key(&self) -> CacheKey {
        self.flight.key
    }
}

impl Cursor {
    /// The next event if one is ready; advances the cursor.
    fn advance(&mut self, flight: &Flight) -> Option<FlightEvent> {
        let state = lock(&flight.state);
        if !self.head_seen {
            if let Some(head) = &state.head {
                self.head_seen = true;
                return Some(FlightEvent::Head(head.clone()));
            }
        }
        if !self.skip_chunks {
            if let Some(chunk) = state.chunks.get(self.next_chunk) {
                self.next_chunk += 1;
                // A head published after body bytes is too late to be sent.
                self.head_seen = true;
                return Some(FlightEvent::Chunk(chunk.clone()));
            }
        }
        state.end.as_ref().map(|end| match end {
            End::Complete(entry) => FlightEvent::Complete(Arc::clone(entry)),
            End::Failed => FlightEvent::Failed,
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.flight.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
