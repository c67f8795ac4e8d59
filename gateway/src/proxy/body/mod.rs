//! The request body, owned by the pipeline: not read (streamed to the upstream as it arrives),
//! read whole (replayable), or absent; and its JSON object, parsed once for every phase that
//! reads it and written back when a phase rewrites it.

mod read;
mod stream;

use crate::proxy::stop::Stop;
use bytes::Bytes;
use pingora::proxy::Session;
pub use read::{ends_connection, linger};
use serde_json::{Map, Value};
use sluice_plugins::openai_error::GatewayError;
pub use stream::{Outgoing, StreamedBody};

/// How much of the body sluice holds.
#[derive(Debug, Default)]
enum Form {
    /// No body (GET and the like).
    #[default]
    Empty,
    /// Read whole (a phase needed it); replayable on retry.
    Buffered(Bytes),
    /// Not read: streamed from the client to the upstream as it arrives.
    Stream,
}

/// The request body as the phases and the forwarder get it.
#[derive(Debug, Default)]
pub struct Body {
    form: Form,
    /// The body as a JSON object, parsed on first use.
    json: Option<Map<String, Value>>,
}

impl Body {
    /// A body not read yet: absent when the request has none, else left to stream.
    #[must_use]
    pub fn unread(session: &mut Session) -> Body {
        let form = if session.is_body_empty() {
            Form::Empty
        } else {
            Form::Stream
        };
        Body { form, json: None }
    }

    /// Reads the whole body; more than `limit` bytes is a 413.
    pub async fn read(session: &mut Session, limit: usize) -> Result<Body, Stop> {
        Ok(Body::of(read::read_whole(session, limit).await?))
    }

    /// A body already read.
    #[must_use]
    pub fn of(bytes: Bytes) -> Body {
        let form = if bytes.is_empty() {
            Form::Empty
        } else {
            Form::Buffered(bytes)
        };
        Body { form, json: None }
    }

    /// Reads the body whole unless it already was.
    pub async fn read_if_streamed(
        &mut self,
        session: &mut Session,
        limit: usize,
    ) -> Result<(), Stop> {
        if matches!(self.form, Form::Stream) {
            *self = Body::read(session, limit).await?;
        }
        Ok(())
    }

    /// Whether the body is still on its way from the client.
    #[must_use]
    pub fn is_streamed(&self) -> bool {
        matches!(self.form, Form::Stream)
    }

    /// The bytes, when the body was read whole.
    #[must_use]
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.form {
            Form::Buffered(b) => Some(b),
            _ => None,
        }
    }

    /// Bytes read from the client so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.bytes().map_or(0, Bytes::len)
    }

    /// The body as a JSON object (`None` without a read body); 400 when it is not one.
    pub fn json(&mut self) -> Result<Option<&Map<String, Value>>, Stop> {
        Ok(self.json_mut()?.map(|j| &*j))
    }

    fn json_mut(&mut self) -> Result<Option<&mut Map<String, Value>>, Stop> {
        if self.json.is_none() {
            let Form::Buffered(bytes) = &self.form else {
                return Ok(None);
            };
            let parsed = serde_json::from_slice(bytes)
                .map_err(|e| GatewayError::bad_json(&e.to_string()))?;
            self.json = Some(parsed);
        }
        Ok(self.json.as_mut())
    }

    /// The request's `model`, when a phase has already parsed the body (never parses it).
    #[must_use]
    pub fn parsed_model(&self) -> Option<&str> {
        self.json.as_ref()?.get("model")?.as_str()
    }

    /// Lets `edit` change the body's JSON object and, when it says it did, writes the bytes the
    /// upstream gets back from it; `Ok(false)` without a read body.
    pub fn rewrite_json(
        &mut self,
        edit: impl FnOnce(&mut Map<String, Value>) -> bool,
    ) -> Result<bool, Stop> {
        let Some(json) = self.json_mut()? else {
            return Ok(false);
        };
        if !edit(json) {
            return Ok(false);
        }
        let bytes = serde_json::to_vec(json).map_err(|e| GatewayError::bad_json(&e.to_string()))?;
        self.form = Form::Buffered(bytes.into());
        Ok(true)
    }

    /// The body as each try sends it; a streamed one keeps its first `keep` bytes for a retry
    /// and may be at most `limit` bytes.
    pub fn outgoing(
        &self,
        session: &Session,
        keep: usize,
        limit: usize,
    ) -> Result<Outgoing<'_>, Stop> {
        Ok(match &self.form {
            Form::Empty => Outgoing::Empty,
            Form::Buffered(b) => Outgoing::Whole(b),
            Form::Stream => Outgoing::Streamed(StreamedBody::new(session, keep, limit)?),
        })
    }
}

#[cfg(test)]
mod tests;
