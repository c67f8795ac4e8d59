//! Answers from the cache: an entry replayed in the form the request asked for (a stream as
//! separate SSE events, or the assembled JSON), or a single-flight leader's live stream.

use crate::proxy::headers::{X_SLUICE_CACHE, X_SLUICE_ROUTE};
use crate::proxy::respond::ForwardError;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use sluice_plugins::cache::flight::{FlightEvent, FlightHead, Follower};
use sluice_plugins::cache::{sse, BodyForm, Entry};
use std::sync::Arc;

/// A response to write: head fields and body parts.
pub struct Replay {
    status: u16,
    content_type: String,
    /// Whole JSON body (sent with Content-Length) or SSE events (chunked, one write each).
    parts: Vec<Bytes>,
    sse: bool,
    age: u64,
}

impl Replay {
    /// `entry` in the requested form; `None` when it cannot be converted (the request then
    /// goes to the upstream as a miss).
    #[must_use]
    pub fn of(entry: &Entry, wants_stream: bool, now_ms: u64) -> Option<Replay> {
        let (parts, sse) = match (entry.form, wants_stream) {
            (BodyForm::Json, false) => (vec![entry.body.clone()], false),
            (BodyForm::Sse, true) => (sse::split_events(&entry.body), true),
            (BodyForm::Json, true) => (sse::synthesize(&entry.body)?, true),
            (BodyForm::Sse, false) => (vec![Bytes::from(sse::assemble(&entry.body)?)], false),
        };
        let content_type = if sse == (entry.form == BodyForm::Sse) {
            entry.content_type.clone()
        } else if sse {
            "text/event-stream".to_string()
        } else {
            "application/json".to_string()
        };
        Some(Replay {
            status: entry.status,
            content_type,
            parts,
            sse,
            age: entry.age_secs(now_ms),
        })
    }

    /// Writes the whole response; returns the body bytes written.
    pub async fn write(
        self,
        session: &mut Session,
        route: &str,
        result: &'static str,
    ) -> Result<usize, ForwardError> {
        let len: usize = self.parts.iter().map(Bytes::len).sum();
        let mut head = head(self.status, &self.content_type, route, result)?;
        let _ = head.insert_header(header::AGE, self.age);
        if self.sse {
            let _ = head.insert_header(header::TRANSFER_ENCODING, "chunked");
        } else {
            let _ = head.insert_header(header::CONTENT_LENGTH, len);
        }
        write_head(session, head).await?;
        for part in self.parts {
            write_chunk(session, part).await?;
        }
        end(session).await?;
        Ok(len)
    }
}

/// Relays a leader's live SSE stream whose head was `first`: the events so far, then live ones.
pub async fn follow_live(
    session: &mut Session,
    follower: &mut Follower,
    first: FlightHead,
    route: &str,
) -> Result<(usize, Arc<Entry>), ForwardError> {
    let mut head = head(first.status, &first.content_type, route, "coalesced")?;
    let _ = head.insert_header(header::TRANSFER_ENCODING, "chunked");
    write_head(session, head).await?;
    let mut written = 0usize;
    loop {
        match follower.next().await {
            FlightEvent::Head(_) => {}
            FlightEvent::Chunk(data) => {
                written += data.len();
                write_chunk(session, data).await?;
            }
            FlightEvent::Complete(entry) => {
                end(session).await?;
                return Ok((written, entry));
            }
            FlightEvent::Failed => {
                return Err(ForwardError::Aborted(
                    "the coalesced upstream stream failed mid-way".into(),
                ))
            }
        }
    }
}

fn head(
    status: u16,
    content_type: &str,
    route: &str,
    result: &'static str,
) -> Result<ResponseHeader, ForwardError> {
    let internal = |e: pingora::BError| ForwardError::Aborted(format!("building a response: {e}"));
    let mut head = ResponseHeader::build(status, Some(6)).map_err(internal)?;
    head.insert_header(header::CONTENT_TYPE, content_type)
        .map_err(internal)?;
    head.insert_header(X_SLUICE_ROUTE, route)
        .map_err(internal)?;
    head.insert_header(X_SLUICE_CACHE, result)
        .map_err(internal)?;
    Ok(head)
}

fn client_gone(e: &pingora::Error) -> ForwardError {
    ForwardError::Aborted(format!("client went away: {}", e.etype().as_str()))
}

async fn write_head(session: &mut Session, head: ResponseHeader) -> Result<(), ForwardError> {
    session
        .write_response_header(Box::new(head), false)
        .await
        .map_err(|e| client_gone(&e))
}

async fn write_chunk(session: &mut Session, data: Bytes) -> Result<(), ForwardError> {
    session
        .write_response_body(Some(data), false)
        .await
        .map_err(|e| client_gone(&e))
}

async fn end(session: &mut Session) -> Result<(), ForwardError> {
    session
        .write_response_body(None, true)
        .await
        .map_err(|e| client_gone(&e))
}
