//! The usage log: one JSON line per finished request (`telemetry.usage_log`), for billing and
//! chargeback. It names the caller by its key's name, never by its key, and is written by a
//! background thread so a slow disk never holds up a request.

use crate::access_log::millis;
use crate::config::telemetry::UsageLogTarget;
use crate::observe::Finished;
use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Records waiting for the writer; beyond this a record is dropped and counted.
const QUEUE_RECORDS: usize = 65_536;

/// The writer thread's inbox.
pub struct UsageLog {
    tx: SyncSender<Vec<u8>>,
    /// Records dropped because the writer was behind.
    dropped: AtomicU64,
}

impl UsageLog {
    /// Opens the target (a file is created or appended to) and starts the writer.
    pub fn open(target: &UsageLogTarget) -> Result<UsageLog, String> {
        let out: Box<dyn Write + Send> = match target {
            UsageLogTarget::Stdout => Box::new(std::io::stdout()),
            UsageLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("usage log {}: {e}", path.display()))?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE_RECORDS);
        std::thread::Builder::new()
            .name("usage-log".into())
            .spawn(move || write_lines(rx, out))
            .map_err(|e| format!("usage log: cannot start its writer: {e}"))?;
        Ok(UsageLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues `f`'s record; a full queue drops it rather than wait, with a warning for the
    /// first drop and every 10,000th (an overloaded disk must not also flood the log).
    pub fn write(&self, f: &Finished<'_>) {
        let mut line = record(f).to_string().into_bytes();
        line.push(b'\n');
        if self.tx.try_send(line).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped % 10_000 == 1 {
                tracing::warn!(dropped, "usage log: writer behind, records dropped");
            }
        }
    }
}

/// One request's usage record.
fn record(f: &Finished<'_>) -> serde_json::Value {
    let mut record = json!({
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "request_id": f.request_id,
        "key": f.key.map(|k| k.name.as_str()),
        "team": f.key.and_then(|k| k.team.as_deref()),
        "route": f.route.map(|r| r.name.as_str()),
        "variant": f.lane.map(|l| l.variant.as_str()).filter(|v| !v.is_empty()),
        "model": f.usage.map(|u| u.model.as_str()),
        "status": f.status,
        "input_tokens": f.usage.map(|u| u.input_tokens),
        "output_tokens": f.usage.map(|u| u.output_tokens),
        "cost_usd": f.usage.and_then(|u| u.cost_usd),
        "cache": (!f.cache.is_empty()).then_some(f.cache),
        "ttfb_ms": f.ttfb.map(millis),
        "duration_ms": millis(f.duration),
    });
    if let (Some(bodies), Some(map)) = (f.bodies, record.as_object_mut()) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        map.insert("request_body".into(), text(&bodies.request).into());
        map.insert("response_body".into(), text(&bodies.response).into());
        map.insert("bodies_truncated".into(), bodies.truncated.into());
    }
    record
}

fn write_lines(rx: Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Ok(first) = rx.recv() {
        batch.extend_from_slice(&first);
        while batch.len() < 1024 * 1024 {
            match rx.try_recv() {
                Ok(line) => batch.extend_from_slice(&line),
                Err(_) => break,
            }
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, "usage log: write failed");
        }
        batch.clear();
    }
}
