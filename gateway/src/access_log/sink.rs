//! The one buffer every log line goes through: event-loop threads append under a short lock,
//! a writer thread swaps the buffer out and writes it to stderr in one call, so a busy second
//! costs a few writes and at most one wake-up per batch window.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Bytes waiting beyond which appenders wait for the writer: back-pressure rather than lost lines.
const MAX_PENDING: usize = 8 << 20;

/// How long the writer lets lines gather after the first: appenders push without waking it.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The writer holds a swapped-out batch not yet written.
    writing: bool,
}

/// Shared between the appenders and the writer thread.
#[derive(Default)]
pub struct Sink {
    pending: Mutex<Pending>,
    /// Signalled when the buffer turns non-empty.
    filled: Condvar,
    /// Signalled when the writer took or wrote a batch.
    drained: Condvar,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends whole lines.
    pub fn push(&self, lines: &[u8]) {
        if lines.is_empty() {
            return;
        }
        let mut pending = self.lock();
        while pending.buf.len() > MAX_PENDING {
            pending = self
                .drained
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = pending.buf.is_empty();
        pending.buf.extend_from_slice(lines);
        drop(pending);
        if was_empty {
            self.filled.notify_one();
        }
    }

    /// Starts the writer thread; `None` when the thread cannot be started.
    pub fn start() -> Option<Arc<Sink>> {
        let sink = Arc::new(Sink::default());
        let writer = Arc::clone(&sink);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.write_batches(&mut std::io::stderr()))
            .ok()?;
        Some(sink)
    }

    fn write_batches(&self, out: &mut impl Write) {
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            let mut pending = self.lock();
            while pending.buf.is_empty() {
                pending = self
                    .filled
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            drop(pending);
            std::thread::sleep(BATCH_WINDOW);
            let mut pending = self.lock();
            std::mem::swap(&mut pending.buf, &mut batch);
            pending.writing = true;
            drop(pending);
            self.drained.notify_all();
            let _ = out.write_all(&batch);
            batch.clear();
            self.lock().writing = false;
            self.drained.notify_all();
        }
    }

    /// Waits (up to `within`) until every appended line is written.
    pub fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut pending = self.lock();
        while !pending.buf.is_empty() || pending.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            pending = self
                .drained
                .wait_timeout(pending, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Collects what the writer writes.
    struct Collect(mpsc::Sender<Vec<u8>>);

    impl Write for Collect {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(data.to_vec());
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_pushed_from_threads_arrive_whole_in_order_per_thread_and_flush_waits_for_them() {
        let sink = Arc::new(Sink::default());
        let (tx, rx) = mpsc::channel();
        let writer = Arc::clone(&sink);
        std::thread::spawn(move || writer.write_batches(&mut Collect(tx)));
        let pushers: Vec<_> = (0..4)
            .map(|t| {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        sink.push(format!("t{t} line {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().unwrap();
        }
        sink.flush(Duration::from_secs(5));
        let written: Vec<u8> = rx.try_iter().flatten().collect();
        let text = String::from_utf8(written).unwrap();
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected);
        }
        assert_eq!(text.lines().count(), 4000);
    }

    #[test]
    fn flush_returns_at_its_deadline_when_nothing_writes() {
        let sink = Sink::default();
        sink.push(b"stuck\n");
        let start = Instant::now();
        sink.flush(Duration::from_millis(50));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
