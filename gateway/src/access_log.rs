//! Logging: the tracing subscriber (text or JSON) and one access line per request. The line
//! carries the path without its query string and no headers, so keys never reach the log.
//! Lines are written by a background thread in batches, so the event loop never blocks on
//! stderr and a busy second costs a few writes instead of one per request.

use crate::observe::Finished;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Output format of the process's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines waiting for the writer thread.
const QUEUE_LINES: usize = 65_536;

static PENDING: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Hands formatted lines to the writer thread; `make_writer` gives one buffer per event.
#[derive(Clone)]
struct BatchedStderr {
    tx: SyncSender<Vec<u8>>,
    pending: Arc<AtomicUsize>,
}

/// One event's bytes, sent whole when the formatter drops it.
struct LineBuffer {
    buf: Vec<u8>,
    sink: BatchedStderr,
}

impl Write for LineBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.sink.pending.fetch_add(1, Ordering::AcqRel);
        // A full queue blocks the caller: back-pressure rather than lost lines.
        if self.sink.tx.send(std::mem::take(&mut self.buf)).is_err() {
            self.sink.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedStderr {
    type Writer = LineBuffer;
    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer {
            buf: Vec::with_capacity(256),
            sink: self.clone(),
        }
    }
}

/// How long the writer lets lines gather after the first: while it sleeps, senders push
/// without waking it, so a busy second costs ~50 writes and no futex per line.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

fn write_batches(rx: Receiver<Vec<u8>>, pending: Arc<AtomicUsize>) {
    let mut out = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        std::thread::sleep(BATCH_WINDOW);
        out.extend_from_slice(&first);
        let mut lines = 1;
        while out.len() < 1024 * 1024 {
            match rx.try_recv() {
                Ok(line) => {
                    out.extend_from_slice(&line);
                    lines += 1;
                }
                Err(_) => break,
            }
        }
        let _ = std::io::stderr().lock().write_all(&out);
        out.clear();
        pending.fetch_sub(lines, Ordering::AcqRel);
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init(format: LogFormat) {
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let pending = Arc::clone(PENDING.get_or_init(|| Arc::new(AtomicUsize::new(0))));
    let writer_pending = Arc::clone(&pending);
    if std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_batches(rx, writer_pending))
        .is_err()
    {
        eprintln!("sluice: cannot start the log writer thread; logging disabled");
        return;
    }
    let sink = BatchedStderr { tx, pending };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Waits (up to `within`) until queued lines are written; call before exiting.
pub fn flush(within: Duration) {
    let Some(pending) = PENDING.get() else { return };
    let deadline = Instant::now() + within;
    while pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes a finished request's access line.
pub fn write(f: &Finished<'_>) {
    tracing::info!(
        target: "access",
        request_id = f.request_id,
        // The trace id is the request id unless the client named the request itself.
        trace_id = f
            .trace
            .filter(|_| f.client_request_id)
            .map(|t| tracing::field::display(t.trace_id())),
        method = f.method,
        path = f.path,
        route = f.route.map_or("", |r| r.name.as_str()),
        upstream = f.lane.and_then(|l| l.hop(f.hop)).map_or("", |u| u.name.as_str()),
        endpoint = f.endpoint.unwrap_or(""),
        status = f.status.unwrap_or(0),
        served_by = if f.served { "upstream" } else { "gateway" },
        duration_ms = millis(f.duration),
        ttfb_ms = f.ttfb.map_or(0.0, millis),
        bytes_in = f.bytes_in,
        bytes_out = f.bytes_out,
        cache = f.cache,
        variant = f.lane.map_or("", |l| l.variant.as_str()),
        key = f.key.map(|k| k.name.as_str()),
        error = f.error.unwrap_or(""),
        "request"
    );
}

/// Milliseconds to the microsecond (`12.345`), without binary float noise in the text.
pub(crate) fn millis(d: Duration) -> f64 {
    // An exact count of microseconds over 1000 is the float nearest that decimal, which
    // prints as written.
    d.as_micros() as f64 / 1000.0
}
