//! Keeps the first bytes of a response for the usage log (`log_bodies: true`).

use super::sink::{ResponseSink, StreamEnd};
use crate::observe::LoggedBodies;
use bytes::Bytes;
use pingora::http::ResponseHeader;

/// The most bytes of each body the usage log keeps.
pub const LOGGED_BODY_MAX: usize = 64 * 1024;

/// The response's first [`LOGGED_BODY_MAX`] bytes as they reach the client.
#[derive(Debug, Default)]
pub struct BodyCapture {
    kept: Vec<u8>,
    truncated: bool,
}

impl BodyCapture {
    /// The bodies to log: `request`'s and the captured response's first bytes.
    #[must_use]
    pub fn logged(self, request: Option<&Bytes>) -> LoggedBodies {
        let request = request.cloned().unwrap_or_default();
        let request_truncated = request.len() > LOGGED_BODY_MAX;
        LoggedBodies {
            request: request.slice(..request.len().min(LOGGED_BODY_MAX)),
            response: self.kept,
            truncated: self.truncated || request_truncated,
        }
    }
}

impl ResponseSink for BodyCapture {
    fn on_head(&mut self, _head: &ResponseHeader) {
        // A head starts a response: what an earlier try sent is not this answer.
        self.kept.clear();
        self.truncated = false;
    }

    fn on_chunk(&mut self, chunk: &Bytes) {
        let room = LOGGED_BODY_MAX - self.kept.len();
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
    }

    fn on_end(&mut self, _end: StreamEnd) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_bytes_are_kept_and_a_cut_is_said() {
        let mut c = BodyCapture::default();
        c.on_head(&ResponseHeader::build(200, None).unwrap());
        c.on_chunk(&Bytes::from(vec![b'a'; LOGGED_BODY_MAX - 1]));
        c.on_chunk(&Bytes::from_static(b"bc"));
        let logged = c.logged(Some(&Bytes::from_static(b"{}")));
        assert_eq!(logged.response.len(), LOGGED_BODY_MAX);
        assert_eq!(logged.response.last(), Some(&b'b'));
        assert!(logged.truncated);
        assert_eq!(logged.request, "{}");
        let whole = BodyCapture::default().logged(None);
        assert!(!whole.truncated && whole.request.is_empty());
    }
}
