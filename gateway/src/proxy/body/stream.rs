//! A client body streamed to the upstream as it arrives, its first bytes kept so that a failed
//! try can send it again.

use super::read::{client_body_error, continue_if_expected, declared_length};
use crate::proxy::stop::Stop;
use bytes::Bytes;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;

/// The request body as each try sends it.
pub enum Outgoing<'a> {
    Empty,
    /// Read whole by a phase: every try sends it again.
    Whole(&'a Bytes),
    Streamed(StreamedBody),
}

impl Outgoing<'_> {
    /// Whether the next try can send the whole body again.
    #[must_use]
    pub fn replayable(&self) -> bool {
        match self {
            Outgoing::Streamed(s) => !s.dropped,
            _ => true,
        }
    }
}

/// A client body streamed to the upstream as it arrives. Its first `keep` bytes are kept: a
/// body that is still within them when a try fails (or its answer asks for a retry) is sent
/// again, kept part first, then the rest as it arrives; a larger one can be sent only once.
/// More than `limit` bytes is a 413, before anything is sent when `content-length` says so.
pub struct StreamedBody {
    keep: usize,
    limit: usize,
    read: usize,
    kept: Vec<Bytes>,
    kept_len: usize,
    /// How many kept chunks the current try has sent.
    sent: usize,
    /// Bytes were read and not kept: the body cannot be sent again.
    dropped: bool,
    ended: bool,
    continued: bool,
}

impl StreamedBody {
    pub fn new(session: &Session, keep: usize, limit: usize) -> Result<Self, Stop> {
        if declared_length(session).is_some_and(|len| len > limit) {
            return Err(Stop::from(GatewayError::body_too_large(limit)));
        }
        Ok(StreamedBody {
            keep,
            limit,
            read: 0,
            kept: Vec::new(),
            kept_len: 0,
            sent: 0,
            dropped: false,
            ended: false,
            continued: false,
        })
    }

    /// Starts a try: the kept chunks are sent first.
    pub fn rewind(&mut self) {
        self.sent = 0;
    }

    /// The next chunk to send, `None` once the body ended.
    pub async fn next_chunk(&mut self, session: &mut Session) -> Result<Option<Bytes>, Stop> {
        if let Some(chunk) = self.kept.get(self.sent) {
            self.sent += 1;
            return Ok(Some(chunk.clone()));
        }
        if self.ended {
            return Ok(None);
        }
        if !self.continued {
            continue_if_expected(session).await?;
            self.continued = true;
        }
        let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|e| client_body_error(&e))?
        else {
            self.ended = true;
            return Ok(None);
        };
        self.read += chunk.len();
        if self.read > self.limit {
            // The upstream request is dropped unfinished; nothing was answered yet.
            return Err(Stop::from(GatewayError::body_too_large(self.limit)));
        }
        if !self.dropped && self.kept_len + chunk.len() <= self.keep {
            self.kept_len += chunk.len();
            self.kept.push(chunk.clone());
            self.sent += 1;
        } else if !self.dropped {
            self.dropped = true;
            self.kept = Vec::new();
        }
        Ok(Some(chunk))
    }
}
