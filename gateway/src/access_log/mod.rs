//! Logging: the tracing subscriber (text or JSON) and one access line per request. The line
//! carries the path without its query string and no headers, so keys never reach the log.
//! The access line is built straight into a reused buffer (not through tracing's field visitor);
//! every line is written by a background thread in batches, so the event loop never blocks on
//! stderr and a busy second costs a few writes instead of one per request.

mod line;
mod sink;

use crate::observe::Finished;
pub use line::{AccessLine, Shape};
use sink::Sink;
use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// Output format of the process's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where lines go and how access lines look; set once by [`init`].
struct Output {
    sink: Arc<Sink>,
    shape: Shape,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

thread_local! {
    /// The access line being built, reused so a request allocates nothing for it.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// One tracing event's bytes, appended to the sink whole when the formatter drops it.
struct EventBuffer {
    buf: Vec<u8>,
    sink: Arc<Sink>,
}

impl std::io::Write for EventBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuffer {
    fn drop(&mut self) {
        self.sink.push(&self.buf);
    }
}

#[derive(Clone)]
struct Events(Arc<Sink>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Events {
    type Writer = EventBuffer;
    fn make_writer(&'a self) -> EventBuffer {
        EventBuffer {
            buf: Vec::with_capacity(256),
            sink: Arc::clone(&self.0),
        }
    }
}

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level (the access
/// lines are target `access` at `info`).
pub fn init(format: LogFormat) {
    let Some(sink) = Sink::start() else {
        eprintln!("sluice: cannot start the log writer thread; logging disabled");
        return;
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let shape = match format {
        LogFormat::Text => Shape::Text { ansi },
        LogFormat::Json => Shape::Json,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Events(Arc::clone(&sink)))
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    let _ = OUTPUT.set(Output { sink, shape });
}

/// Waits (up to `within`) until queued lines are written; call before exiting.
pub fn flush(within: Duration) {
    if let Some(output) = OUTPUT.get() {
        output.sink.flush(within);
    }
}

/// Writes a finished request's access line (when `RUST_LOG` lets `access` at `info` through).
pub fn write(f: &Finished<'_>) {
    let Some(output) = OUTPUT.get() else { return };
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    let line = AccessLine {
        request_id: f.request_id,
        // The trace id is the request id unless the client named the request itself.
        trace_id: f
            .trace
            .filter(|_| f.client_request_id)
            .map(|t| t.trace_id_bytes()),
        method: f.method,
        path: f.path,
        route: f.route.map_or("", |r| r.name.as_str()),
        upstream: f
            .lane
            .and_then(|l| l.hop(f.hop))
            .map_or("", |u| u.name.as_str()),
        endpoint: f.endpoint.unwrap_or(""),
        status: f.status.unwrap_or(0),
        served_by: if f.served { "upstream" } else { "gateway" },
        duration: f.duration,
        ttfb: f.ttfb,
        bytes_in: f.bytes_in,
        bytes_out: f.bytes_out,
        cache: f.cache,
        variant: f.lane.map_or("", |l| l.variant.as_str()),
        key: f.key.map(|k| k.name.as_str()),
        error: f.error.unwrap_or(""),
    };
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        line.write_to(buf, output.shape, SystemTime::now());
        output.sink.push(buf);
    });
}

/// Milliseconds to the microsecond (`12.345`), without binary float noise in the text.
pub(crate) fn millis(d: Duration) -> f64 {
    // An exact count of microseconds over 1000 is the float nearest that decimal, which
    // prints as written.
    d.as_micros() as f64 / 1000.0
}
