//! Where a response goes. The forwarder's copy loop hands each part to a [`Tee`]: the client
//! writer first, then every [`ResponseSink`] (the cache recorder, which also feeds
//! single-flight followers; the token meter). A [`ClientFilter`] may reshape what the client
//! alone sees, and phases add response headers (`x-sluice-cache`, `x-ratelimit-*`). The copy
//! loop never learns what a cache or a limiter is; a request with none pays for empty `Vec`s.

use super::headers::{X_REQUEST_ID, X_UPSTREAM_REQUEST_ID};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;
use std::time::Instant;

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished it cleanly.
    Complete,
    /// The upstream failed, timed out or the copy was abandoned mid-way.
    Aborted,
}

/// Observes one response as it passes; never slows the client (no async, no waiting).
pub trait ResponseSink: Send {
    fn on_head(&mut self, head: &ResponseHeader);
    fn on_chunk(&mut self, chunk: &Bytes);
    fn on_end(&mut self, end: StreamEnd);
    /// Whether the rest of the body is still wanted after the client went away (single-flight
    /// followers are waiting on it).
    fn wants_rest(&self) -> bool {
        false
    }
}

/// Whether a response head announces an SSE stream.
#[must_use]
pub fn is_event_stream(head: &ResponseHeader) -> bool {
    head.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The SSE event that tells a client its stream was cut short, and why, in OpenAI's shape.
#[must_use]
pub fn stream_error_event(why: &str) -> Bytes {
    let error = GatewayError::new(502, "upstream_error", "stream_aborted", why);
    let mut event = b"event: error\ndata: ".to_vec();
    event.extend_from_slice(&error.body());
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// Reshapes the body for the client only (the sinks see the upstream's bytes).
pub trait ClientFilter: Send {
    /// What of `chunk` (and of what was held back before it) to send now.
    fn filter(&mut self, chunk: &Bytes) -> Bytes;
    /// What is still held back when the body ends.
    fn finish(&mut self) -> Bytes;
}

/// The client writer plus the sinks.
#[derive(Default)]
pub struct Tee<'a> {
    sinks: Vec<&'a mut dyn ResponseSink>,
    filter: Option<&'a mut dyn ClientFilter>,
    /// Added to the response head the client gets.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Why the client stopped taking the response, once it did.
    client_gone: Option<String>,
    /// The client's response is an SSE stream (so a failure can be told in-band).
    sse: bool,
    /// Body bytes written to the client.
    pub bytes_out: usize,
    /// When the first body bytes reached the client (the first token of a stream).
    pub first_body: Option<Instant>,
}

impl<'a> Tee<'a> {
    /// A tee adding `headers` to the response head.
    #[must_use]
    pub fn new(headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        Tee {
            headers,
            ..Tee::default()
        }
    }

    /// Sends the client the body through `filter`.
    pub fn filter_client(&mut self, filter: &'a mut dyn ClientFilter) {
        self.filter = Some(filter);
    }

    /// Adds a sink after the client writer.
    pub fn add(&mut self, sink: &'a mut dyn ResponseSink) {
        self.sinks.push(sink);
    }

    /// The headers not sent yet (none once a head went out), for an answer made instead.
    pub fn take_headers(&mut self) -> Vec<(HeaderName, HeaderValue)> {
        std::mem::take(&mut self.headers)
    }

    /// Why the client went away, if it did.
    #[must_use]
    pub fn client_gone(&self) -> Option<&str> {
        self.client_gone.as_deref()
    }

    fn wants_rest(&self) -> bool {
        self.sinks.iter().any(|s| s.wants_rest())
    }

    /// Sends the head. `Err` means nobody wants the response any more.
    pub async fn head(
        &mut self,
        session: &mut Session,
        mut head: ResponseHeader,
    ) -> Result<(), String> {
        for s in &mut self.sinks {
            s.on_head(&head);
        }
        let headers = std::mem::take(&mut self.headers);
        if headers.iter().any(|(name, _)| name == X_REQUEST_ID) {
            if let Some(theirs) = head.remove_header(X_REQUEST_ID) {
                let _ = head.insert_header(X_UPSTREAM_REQUEST_ID, theirs);
            }
        }
        for (name, value) in headers {
            let _ = head.append_header(name, value);
        }
        self.sse = is_event_stream(&head);
        if let Err(e) = session.write_response_header(Box::new(head), false).await {
            return self.lose_client(format!("writing response header: {e}"));
        }
        Ok(())
    }

    /// Sends one body chunk. `Err` means nobody wants the rest.
    pub async fn chunk(&mut self, session: &mut Session, chunk: Bytes) -> Result<(), String> {
        for s in &mut self.sinks {
            s.on_chunk(&chunk);
        }
        if self.client_gone.is_some() {
            return Ok(());
        }
        let chunk = match &mut self.filter {
            Some(filter) => filter.filter(&chunk),
            None => chunk,
        };
        if chunk.is_empty() {
            return Ok(());
        }
        self.write(session, chunk).await
    }

    async fn write(&mut self, session: &mut Session, chunk: Bytes) -> Result<(), String> {
        let len = chunk.len();
        match session.write_response_body(Some(chunk), false).await {
            Ok(()) => {
                self.bytes_out += len;
                self.first_body.get_or_insert_with(Instant::now);
                Ok(())
            }
            Err(e) => self.lose_client(client_write_failed(&e)),
        }
    }

    /// Ends the body. `Err` when the client could not take the end.
    pub async fn end(&mut self, session: &mut Session, end: StreamEnd) -> Result<(), String> {
        for s in &mut self.sinks {
            s.on_end(end);
        }
        if let Some(why) = &self.client_gone {
            return Err(why.clone());
        }
        if end == StreamEnd::Complete {
            let rest = self.filter.as_mut().map(|f| f.finish()).unwrap_or_default();
            let len = rest.len();
            if len > 0 {
                if let Err(e) = session.write_response_body(Some(rest), false).await {
                    return Err(client_write_failed(&e));
                }
                self.bytes_out += len;
            }
            if let Err(e) = session.write_response_body(None, true).await {
                return Err(client_write_failed(&e));
            }
        }
        Ok(())
    }

    /// The upstream failed mid-body (`why`): the sinks learn the body is cut short, and an SSE
    /// client gets an `event: error` with an OpenAI-shaped error before its connection is
    /// dropped, so no client mistakes the cut for a normal end. Nothing held back by the
    /// filter is sent: it was never a whole event.
    pub async fn abort(&mut self, session: &mut Session, why: &str) {
        for s in &mut self.sinks {
            s.on_end(StreamEnd::Aborted);
        }
        if !self.sse || self.client_gone.is_some() {
            return;
        }
        let event = stream_error_event(why);
        let len = event.len();
        if session
            .write_response_body(Some(event), false)
            .await
            .is_ok()
        {
            self.bytes_out += len;
        }
    }

    /// The client failed: keep copying for the sinks that still want the body, else stop
    /// (and tell the sinks the body is cut short).
    fn lose_client(&mut self, why: String) -> Result<(), String> {
        self.client_gone = Some(why.clone());
        if self.wants_rest() {
            return Ok(());
        }
        for s in &mut self.sinks {
            s.on_end(StreamEnd::Aborted);
        }
        Err(why)
    }
}

/// Why a write to the client failed, for the access line.
fn client_write_failed(e: &pingora::Error) -> String {
    if *e.etype() == pingora::ErrorType::WriteTimedout {
        "the client stopped reading for longer than server.limits.send_timeout".to_string()
    } else {
        format!("client went away: {}", e.etype().as_str())
    }
}
