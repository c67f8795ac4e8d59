//! Admission control per upstream: at most `max_concurrency` requests in flight, up to
//! `queue_max` more waiting in a priority FIFO (High first, arrival order within a priority),
//! the rest turned away at once. A waiter that gives up (its future is dropped) leaves the queue,
//! and a slot handed to it just before passes to the next waiter, so slots never leak.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// How urgently a request wants an upstream slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    /// `high`, `normal` or `low`, in any case (a request header's value).
    #[must_use]
    pub fn from_header_value(value: &str) -> Option<Priority> {
        let value = value.trim();
        [
            ("high", Priority::High),
            ("normal", Priority::Normal),
            ("low", Priority::Low),
        ]
        .into_iter()
        .find_map(|(name, priority)| value.eq_ignore_ascii_case(name).then_some(priority))
    }
}

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GateRejection {
    #[error("the upstream's queue is full")]
    QueueFull,
    #[error("timed out waiting for an upstream slot")]
    TimedOut,
}

/// One upstream's slots and waiters. Shared (`Arc`) by every request routed to it.
#[derive(Debug)]
pub struct ConcurrencyGate {
    state: Mutex<GateState>,
    /// Mirrors the queue length for `/metrics`.
    depth: Option<IntGauge>,
}

/// A slot in flight; dropping it hands the slot to the next waiter or frees it.
#[derive(Debug)]
pub struct GatePermit {
    gate: Arc<ConcurrencyGate>,
    waited: Duration,
}

#[derive(Debug)]
struct GateState {
    max_concurrency: usize,
    queue_max: usize,
    in_flight: usize,
    next_ticket: u64,
    /// Waiters by priority (`Priority as usize`, High first), each in arrival order.
    queues: [VecDeque<Waiter>; 3],
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    /// Sent once the slot is this waiter's (already counted in `in_flight`).
    grant: oneshot::Sender<()>,
}

/// What [`GateState::admit`] decided.
enum Admission {
    Now,
    QueueFull,
    Queued {
        ticket: u64,
        granted: oneshot::Receiver<()>,
    },
}

/// A waiter's place in the queue, owned by its `acquire` future. Dropping it unresolved (the
/// client gave up) leaves the queue, or passes on the slot if one was granted meanwhile.
struct QueuePlace {
    gate: Arc<ConcurrencyGate>,
    priority: Priority,
    ticket: u64,
    resolved: bool,
}

// === impl ConcurrencyGate ===

impl ConcurrencyGate {
    /// A gate with no request in flight; `depth`, if given, tracks the queue length.
    #[must_use]
    pub fn new(max_concurrency: usize, queue_max: usize, depth: Option<IntGauge>) -> Arc<Self> {
        let gate = ConcurrencyGate {
            state: Mutex::new(GateState {
                max_concurrency,
                queue_max,
                in_flight: 0,
                next_ticket: 0,
                queues: Default::default(),
            }),
            depth,
        };
        // Starts the gauge at this gate's empty queue.
        gate.update(|_| ());
        Arc::new(gate)
    }

    /// Applies reloaded limits in place: a higher max admits waiters at once; a lower one lets
    /// the excess in flight finish; waiters beyond a lower `queue_max` keep their places.
    pub fn set_limits(&self, max_concurrency: usize, queue_max: usize) {
        self.update(|state| {
            state.max_concurrency = max_concurrency;
            state.queue_max = queue_max;
            state.grant_free_slots();
        });
    }

    /// A slot at once if one is free; else a place in the queue for up to `timeout`, or
    /// [`GateRejection::QueueFull`] at once when the queue is full. Cancel safe: dropping the
    /// future gives up the place (or the slot granted to it).
    pub async fn acquire(
        self: &Arc<Self>,
        priority: Priority,
        timeout: Duration,
    ) -> Result<GatePermit, GateRejection> {
        let (ticket, granted) = match self.update(|state| state.admit(priority)) {
            Admission::Now => return Ok(self.permit(Duration::ZERO)),
            Admission::QueueFull => return Err(GateRejection::QueueFull),
            Admission::Queued { ticket, granted } => (ticket, granted),
        };
        let queued_at = Instant::now();
        let place = QueuePlace {
            gate: Arc::clone(self),
            priority,
            ticket,
            resolved: false,
        };
        // Granted or timed out, the queue decides: a slot may arrive just as the timer fires.
        let _ = tokio::time::timeout(timeout, granted).await;
        place.resolve(queued_at.elapsed())
    }

    /// Requests holding a slot.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        lock(&self.state).in_flight
    }

    /// Requests waiting for a slot.
    #[must_use]
    pub fn queued(&self) -> usize {
        lock(&self.state).queued()
    }

    fn permit(self: &Arc<Self>, waited: Duration) -> GatePermit {
        GatePermit {
            gate: Arc::clone(self),
            waited,
        }
    }

    /// Changes the state under the lock, then brings the depth gauge up to date.
    fn update<R>(&self, change: impl FnOnce(&mut GateState) -> R) -> R {
        let mut state = lock(&self.state);
        let result = change(&mut state);
        if let Some(depth) = &self.depth {
            depth.set(i64::try_from(state.queued()).unwrap_or(i64::MAX));
        }
        result
    }
}

// === impl GatePermit ===

impl GatePermit {
    /// How long the request queued for its slot (zero when admitted at once).
    #[must_use]
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.gate.update(GateState::release);
    }
}

// === impl QueuePlace ===

impl QueuePlace {
    /// Still queued means timed out (and leaves); gone from the queue means granted.
    fn resolve(mut self, waited: Duration) -> Result<GatePermit, GateRejection> {
        self.resolved = true;
        let (priority, ticket) = (self.priority, self.ticket);
        if self.gate.update(|state| state.leave(priority, ticket)) {
            return Err(GateRejection::TimedOut);
        }
        Ok(self.gate.permit(waited))
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        let (priority, ticket) = (self.priority, self.ticket);
        self.gate.update(|state| {
            if !state.leave(priority, ticket) {
                state.release();
            }
        });
    }
}

// === impl GateState ===

impl GateState {
    fn admit(&mut self, priority: Priority) -> Admission {
        // Free slots are granted as they free up, so a free slot means an empty queue.
        if self.in_flight < self.max_concurrency {
            self.in_flight += 1;
            return Admission::Now;
        }
        if self.queued() >= self.queue_max {
            return Admission::QueueFull;
        }
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let (grant, granted) = oneshot::channel();
        self.queues[priority as usize].push_back(Waiter { ticket, grant });
        Admission::Queued { ticket, granted }
    }

    /// Gives up one slot and hands it on.
    fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.grant_free_slots();
    }

    /// Hands free slots to waiters, highest priority first, oldest first within one.
    fn grant_free_slots(&mut self) {
        while self.in_flight < self.max_concurrency {
            let Some(waiter) = self.queues.iter_mut().find_map(VecDeque::pop_front) else {
                return;
            };
            self.in_flight += 1;
            // A closed receiver means the future is being dropped: its `QueuePlace` finds the
            // ticket gone and releases the slot.
            let _ = waiter.grant.send(());
        }
    }

    /// Removes the waiter if still queued; `false` means it was already granted a slot.
    fn leave(&mut self, priority: Priority, ticket: u64) -> bool {
        let queue = &mut self.queues[priority as usize];
        let at = queue.iter().position(|waiter| waiter.ticket == ticket);
        at.and_then(|at| queue.remove(at)).is_some()
    }

    fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

/// Locks, recovering from poison: every change is a few counter and queue updates.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    const SECOND: Duration = Duration::from_secs(1);

    type Acquire<'a> = Pin<Box<dyn Future<Output = Result<GatePermit, GateRejection>> + Send + 'a>>;

    fn acquire(gate: &Arc<ConcurrencyGate>, priority: Priority) -> Acquire<'_> {
        Box::pin(gate.acquire(priority, Duration::from_secs(60)))
    }

    /// Runs the future up to its first wait (so a waiter enqueues) without a runtime task.
    fn poll_once(future: &mut Acquire<'_>) -> Poll<Result<GatePermit, GateRejection>> {
        future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    }

    fn granted(future: &mut Acquire<'_>) -> GatePermit {
        match poll_once(future) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("expected a permit, got {other:?}"),
        }
    }

    /// Acquirers polled once, each of which must be queued.
    fn waiters<'a>(gate: &'a Arc<ConcurrencyGate>, priorities: &[Priority]) -> Vec<Acquire<'a>> {
        let mut waiters: Vec<_> = priorities.iter().map(|&p| acquire(gate, p)).collect();
        assert!(waiters.iter_mut().all(|w| poll_once(w).is_pending()));
        waiters
    }

    /// (in flight, queued)
    fn counts(gate: &ConcurrencyGate) -> (usize, usize) {
        (gate.in_flight(), gate.queued())
    }

    #[tokio::test(start_paused = true)]
    async fn ten_acquirers_get_two_slots_two_places_and_six_rejections() {
        let depth = IntGauge::new("queue_depth", "waiters").expect("a valid gauge");
        let gate = ConcurrencyGate::new(2, 2, Some(depth.clone()));
        let mut acquirers: Vec<_> = (0..10).map(|_| acquire(&gate, Priority::Normal)).collect();
        let polls: Vec<_> = acquirers.iter_mut().map(poll_once).collect();
        assert!(polls[2..4].iter().all(Poll::is_pending));
        let full = |poll: &&Poll<_>| matches!(poll, Poll::Ready(Err(GateRejection::QueueFull)));
        assert_eq!(polls[4..].iter().filter(full).count(), 6);
        assert_eq!((counts(&gate), depth.get()), ((2, 2), 2));
        let permits: Vec<_> = polls
            .into_iter()
            .take(2)
            .map(|p| p.map(Result::ok))
            .collect();
        assert!(permits
            .iter()
            .all(|p| matches!(p, Poll::Ready(Some(p)) if p.waited().is_zero())));
        // Released slots go straight to the two waiters.
        drop(permits);
        assert_eq!((counts(&gate), depth.get()), ((2, 0), 0));
        drop(acquirers[2..4].iter_mut().map(granted).collect::<Vec<_>>());
        assert_eq!(counts(&gate), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_times_out() {
        let gate = ConcurrencyGate::new(1, 4, None);
        let _held = granted(&mut acquire(&gate, Priority::Normal));
        let started = Instant::now();
        let waited = gate.acquire(Priority::Normal, 5 * SECOND).await;
        assert_eq!(waited.unwrap_err(), GateRejection::TimedOut);
        assert_eq!(started.elapsed(), 5 * SECOND);
        assert_eq!(counts(&gate), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn high_is_served_before_earlier_low_waiters_and_waited_is_measured() {
        let gate = ConcurrencyGate::new(1, 4, None);
        let held = granted(&mut acquire(&gate, Priority::Normal));
        let mut queued = waiters(&gate, &[Priority::Low, Priority::Low, Priority::High]);
        tokio::time::advance(2 * SECOND).await;
        drop(held);
        assert!(poll_once(&mut queued[0]).is_pending());
        let high = granted(&mut queued[2]);
        assert_eq!(high.waited(), 2 * SECOND);
        drop(high);
        // Within a priority, first come first served.
        assert!(poll_once(&mut queued[1]).is_pending());
        drop(granted(&mut queued[0]));
        drop(granted(&mut queued[1]));
        assert_eq!(counts(&gate), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_the_queue() {
        let depth = IntGauge::new("queue_depth", "waiters").expect("a valid gauge");
        let gate = ConcurrencyGate::new(1, 4, Some(depth.clone()));
        let held = granted(&mut acquire(&gate, Priority::Normal));
        let mut queued = waiters(&gate, &[Priority::Normal, Priority::Normal]);
        assert_eq!((counts(&gate), depth.get()), ((1, 2), 2));
        drop(queued.remove(0));
        assert_eq!((counts(&gate), depth.get()), ((1, 1), 1));
        drop(held);
        let permit = granted(&mut queued[0]);
        assert_eq!((counts(&gate), depth.get()), ((1, 0), 0));
        drop(permit);
        assert_eq!(counts(&gate), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_granted_to_a_dropped_waiter_passes_on() {
        let gate = ConcurrencyGate::new(1, 4, None);
        let held = granted(&mut acquire(&gate, Priority::Normal));
        let mut queued = waiters(&gate, &[Priority::Normal, Priority::Normal]);
        // The slot goes to the first, which gives up before it runs again.
        drop(held);
        assert_eq!(counts(&gate), (1, 1));
        drop(queued.remove(0));
        assert_eq!(counts(&gate), (1, 0));
        drop(granted(&mut queued[0]));
        assert_eq!(counts(&gate), (0, 0));
        // And with nobody left to take it, the slot is freed.
        let held = granted(&mut acquire(&gate, Priority::Normal));
        let queued = waiters(&gate, &[Priority::Low]);
        drop(held);
        drop(queued);
        assert_eq!(counts(&gate), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn set_limits_raising_max_admits_waiters_and_lowering_drains_first() {
        let gate = ConcurrencyGate::new(1, 4, None);
        let held = granted(&mut acquire(&gate, Priority::Normal));
        let mut queued = waiters(&gate, &[Priority::Normal; 3]);
        gate.set_limits(3, 4);
        assert_eq!(counts(&gate), (3, 1));
        let first = granted(&mut queued[0]);
        let second = granted(&mut queued[1]);
        gate.set_limits(1, 4);
        drop((first, second));
        assert_eq!(counts(&gate), (1, 1));
        drop(held);
        drop(granted(&mut queued[2]));
        assert_eq!(counts(&gate), (0, 0));
    }

    #[test]
    fn priority_from_header_value() {
        let cases = [
            ("HIGH", Some(Priority::High)),
            ("Normal", Some(Priority::Normal)),
            (" low ", Some(Priority::Low)),
            ("urgent", None),
            ("", None),
        ];
        for (value, priority) in cases {
            assert_eq!(Priority::from_header_value(value), priority, "{value:?}");
        }
    }
}
