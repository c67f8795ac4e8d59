//! Answers from the cache: an entry replayed in the form the request asked for (a stream as
//! separate SSE events, or the assembled JSON), or a single-flight leader's live stream.

use crate::proxy::headers::X_SLUICE_ROUTE;
use crate::proxy::sink::stream_error_event;
use crate::proxy::stop::Stop;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use sluice_plugins::cache::flight::{FlightEvent, FlightHead, Follower};
use sluice_plugins::cache::{sse, BodyForm, Entry};
use sluice_plugins::limits::usage::UsageChunkFilter;
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

    /// Without the usage chunk (an entry recorded for a client that asked for it, or a JSON
    /// answer turned into a stream) unless this client asked for it too.
    #[must_use]
    pub fn for_client(mut self, wants_usage: bool) -> Replay {
        if self.sse && !wants_usage {
            let mut filter = UsageChunkFilter::default();
            let mut parts: Vec<Bytes> = self.parts.iter().map(|p| filter.filter(p)).collect();
            parts.push(filter.finish());
            parts.retain(|p| !p.is_empty());
            self.parts = parts;
        }
        self
    }

    /// Writes the whole response with the phases' `headers`; returns the body bytes written.
    pub async fn write(
        self,
        session: &mut Session,
        route: &str,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<usize, Stop> {
        let len: usize = self.parts.iter().map(Bytes::len).sum();
        let mut head = head(self.status, &self.content_type, route, headers)?;
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

/// A leader's live SSE stream relayed to a follower.
pub struct Live<'a> {
    pub route: &'a str,
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// The follower did not ask for the usage chunk the leader's stream may carry.
    pub strip_usage: bool,
}

impl Live<'_> {
    /// Relays the stream whose head was `first`: the events so far, then live ones.
    pub async fn follow(
        &self,
        session: &mut Session,
        follower: &mut Follower,
        first: FlightHead,
    ) -> Result<(usize, Arc<Entry>), Stop> {
        let mut head = head(first.status, &first.content_type, self.route, self.headers)?;
        let _ = head.insert_header(header::TRANSFER_ENCODING, "chunked");
        write_head(session, head).await?;
        let mut filter = self.strip_usage.then(UsageChunkFilter::default);
        let mut written = 0usize;
        loop {
            let (data, done) = match follower.next().await {
                FlightEvent::Head(_) => continue,
                FlightEvent::Chunk(data) => (data, None),
                FlightEvent::Complete(entry) => (Bytes::new(), Some(entry)),
                FlightEvent::Failed => {
                    let why = "the coalesced upstream stream failed mid-way";
                    let _ = write_chunk(session, stream_error_event(why)).await;
                    return Err(Stop::Aborted(why.into()));
                }
            };
            let data = match (&mut filter, done.is_some()) {
                (Some(f), false) => f.filter(&data),
                (Some(f), true) => f.finish(),
                (None, _) => data,
            };
            if !data.is_empty() {
                written += data.len();
                write_chunk(session, data).await?;
            }
            if let Some(entry) = done {
                end(session).await?;
                return Ok((written, entry));
            }
        }
    }
}

fn head(
    status: u16,
    content_type: &str,
    route: &str,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<ResponseHeader, Stop> {
    let internal = |e: pingora::BError| Stop::Aborted(format!("building a response: {e}"));
    let mut head = ResponseHeader::build(status, Some(6)).map_err(internal)?;
    head.insert_header(header::CONTENT_TYPE, content_type)
        .map_err(internal)?;
    head.insert_header(X_SLUICE_ROUTE, route)
        .map_err(internal)?;
    for (name, value) in headers {
        head.append_header(name.clone(), value.clone())
            .map_err(internal)?;
    }
    Ok(head)
}

fn client_gone(e: &pingora::Error) -> Stop {
    Stop::Aborted(format!("client went away: {}", e.etype().as_str()))
}

async fn write_head(session: &mut Session, head: ResponseHeader) -> Result<(), Stop> {
    session
        .write_response_header(Box::new(head), false)
        .await
        .map_err(|e| client_gone(&e))
}

async fn write_chunk(session: &mut Session, data: Bytes) -> Result<(), Stop> {
    session
        .write_response_body(Some(data), false)
        .await
        .map_err(|e| client_gone(&e))
}

async fn end(session: &mut Session) -> Result<(), Stop> {
    session
        .write_response_body(None, true)
        .await
        .map_err(|e| client_gone(&e))
}
