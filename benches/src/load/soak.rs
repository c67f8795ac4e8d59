//! A steady open-loop mix of request classes for a long time, each class at its own fixed
//! rate over its own keep-alive connections (latency from the scheduled send time, as in
//! [`super::openloop`]), counted per interval of the run: answers, 429s and errors apart, and
//! the latency of the answers.

use super::openloop::{connect, exchange, Sender};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One kind of request in the mix.
#[derive(Clone)]
pub struct Class {
    pub name: &'static str,
    /// Requests per second.
    pub rate: f64,
    pub connections: usize,
    /// POSTed in turn.
    pub bodies: Arc<Vec<Bytes>>,
    /// Stop the clock at the first body byte (streams: time to first token).
    pub first_byte: bool,
}

/// What one interval of the run (by scheduled send time) saw.
#[derive(Clone)]
pub struct Interval {
    /// Latency of the 2xx answers, µs.
    pub latency: Histogram<u64>,
    pub ok: u64,
    /// 429s: the limits refusing, which the mix means to provoke.
    pub limited: u64,
    /// Failed connections, other statuses.
    pub errors: u64,
}

/// A class's totals: 2xx, 429, errors.
pub type Totals = [u64; 3];

/// The counts of a run, per interval and per class, shared by the senders and the reader.
pub struct Ledger {
    interval: Duration,
    intervals: Mutex<Vec<Interval>>,
    classes: Mutex<Vec<Totals>>,
}

enum Outcome {
    Ok(Duration),
    Limited,
    Error,
}

impl Ledger {
    /// A ledger of `count` intervals of `interval` each, for `classes` classes.
    pub fn new(interval: Duration, count: usize, classes: usize) -> Result<Arc<Self>, String> {
        let latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| format!("histogram: {e}"))?;
        let empty = Interval {
            latency,
            ok: 0,
            limited: 0,
            errors: 0,
        };
        Ok(Arc::new(Ledger {
            interval,
            intervals: Mutex::new(vec![empty; count.max(1)]),
            classes: Mutex::new(vec![[0; 3]; classes]),
        }))
    }

    fn record(&self, class: usize, since_start: Duration, outcome: &Outcome) {
        let i = (since_start.as_secs_f64() / self.interval.as_secs_f64()) as usize;
        if let Ok(mut intervals) = self.intervals.lock() {
            let last = intervals.len() - 1;
            let slot = &mut intervals[i.min(last)];
            match outcome {
                Outcome::Ok(latency) => {
                    slot.ok += 1;
                    let _ = slot.latency.record(latency.as_micros().max(1) as u64);
                }
                Outcome::Limited => slot.limited += 1,
                Outcome::Error => slot.errors += 1,
            }
        }
        if let Ok(mut classes) = self.classes.lock() {
            if let Some(t) = classes.get_mut(class) {
                t[match outcome {
                    Outcome::Ok(_) => 0,
                    Outcome::Limited => 1,
                    Outcome::Error => 2,
                }] += 1;
            }
        }
    }

    /// The intervals so far.
    pub fn intervals(&self) -> Vec<Interval> {
        self.intervals.lock().map(|i| i.clone()).unwrap_or_default()
    }

    /// Each class's totals so far, in the order the classes were given.
    pub fn class_totals(&self) -> Vec<Totals> {
        self.classes.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Sends every class to `path` on `addr` from `start` for `duration`, into `ledger`.
pub async fn run(
    addr: String,
    path: String,
    classes: Vec<Class>,
    start: Instant,
    duration: Duration,
    ledger: Arc<Ledger>,
) {
    let mut workers = Vec::new();
    for (c, class) in classes.into_iter().enumerate() {
        let total = (class.rate * duration.as_secs_f64()) as u64;
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..class.connections.max(1) {
            let w = Worker {
                addr: addr.clone(),
                path: path.clone(),
                class: class.clone(),
                index: c,
                next: Arc::clone(&next),
                total,
                start,
                ledger: Arc::clone(&ledger),
            };
            workers.push(tokio::spawn(w.run()));
        }
    }
    for w in workers {
        let _ = w.await;
    }
}

/// One connection's share of a class: takes the next scheduled request until all are sent.
struct Worker {
    addr: String,
    path: String,
    class: Class,
    index: usize,
    next: Arc<AtomicU64>,
    total: u64,
    start: Instant,
    ledger: Arc<Ledger>,
}

impl Worker {
    async fn run(self) {
        let mut sender: Option<Sender> = None;
        let bodies = &self.class.bodies;
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.total || bodies.is_empty() {
                break;
            }
            let since_start = Duration::from_secs_f64(i as f64 / self.class.rate);
            let scheduled = self.start + since_start;
            tokio::time::sleep_until(scheduled).await;
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = connect(&self.addr).await;
            }
            let body = bodies[(i as usize) % bodies.len()].clone();
            let answer = match sender.as_mut() {
                Some(s) => {
                    exchange(s, &self.addr, &self.path, Some(body), self.class.first_byte).await
                }
                None => None,
            };
            let outcome = match answer {
                Some((200..=299, stop)) => Outcome::Ok(stop.saturating_duration_since(scheduled)),
                Some((429, _)) => Outcome::Limited,
                Some(_) => Outcome::Error,
                None => {
                    sender = None;
                    Outcome::Error
                }
            };
            self.ledger.record(self.index, since_start, &outcome);
        }
    }
}
