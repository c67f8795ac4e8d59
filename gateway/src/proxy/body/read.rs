//! Reading a request body from the client: whole up to the cap, the `100 Continue` a client
//! may wait for, what a broken or stalled body is answered with, and lingering after a 413.

use crate::proxy::stop::Stop;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;
use std::time::Duration;

/// How long and how much of a rejected body is read and discarded before closing.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Reads the whole body; more than `limit` bytes is a 413 (checked early from Content-Length).
pub async fn read_whole(session: &mut Session, limit: usize) -> Result<Bytes, Stop> {
    let declared = declared_length(session);
    if declared.is_some_and(|len| len > limit) {
        return Err(Stop::from(GatewayError::body_too_large(limit)));
    }
    continue_if_expected(session).await?;
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(16 * 1024).min(limit));
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| client_body_error(&e))?
    {
        if buf.len() + chunk.len() > limit {
            return Err(Stop::from(GatewayError::body_too_large(limit)));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The body's `content-length`, when the client sent one.
pub(super) fn declared_length(session: &Session) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// After answering early (413), reads and discards what the client is still sending for a
/// bounded time, so it sees the answer instead of a reset; then the connection is closed.
pub async fn linger(session: &mut Session) {
    session.set_keepalive(None);
    if expects_continue(session) {
        // It was never told to continue, so no body is coming.
        return;
    }
    let mut discarded = 0usize;
    let drain = async {
        while let Ok(Some(chunk)) = session.read_request_body().await {
            discarded += chunk.len();
            if discarded > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = pingora::time::timeout(LINGER_TIME, drain).await;
}

/// Tells a client that sent `Expect: 100-continue` to send its body, before sluice reads it.
pub async fn continue_if_expected(session: &mut Session) -> Result<(), Stop> {
    if expects_continue(session) {
        session
            .write_continue_response()
            .await
            .map_err(|e| Stop::Aborted(format!("writing 100 Continue: {}", e.etype().as_str())))?;
    }
    Ok(())
}

fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The `error.code` of a chunked request body whose framing is broken.
const INVALID_CHUNKED_BODY: &str = "invalid_chunked_body";

/// Pingora's error types for a broken chunk size, chunk end or trailer section.
const CHUNK_ERRORS: [&str; 2] = ["InvalidChunk", "InvalidTrailerEnd"];

/// Whether an answer leaves the request body's framing lost (a stall or a broken chunk), so the
/// connection cannot carry another request.
pub fn ends_connection(err: &GatewayError) -> bool {
    err.status == 408 || err.code == INVALID_CHUNKED_BODY
}

/// Reading the client's body failed: it went away or broke the framing.
pub fn client_body_error(e: &pingora::Error) -> Stop {
    if CHUNK_ERRORS.contains(&e.etype().as_str()) {
        return Stop::from(GatewayError::new(
            400,
            "invalid_request_error",
            INVALID_CHUNKED_BODY,
            "the request body's chunked encoding is malformed",
        ));
    }
    if *e.etype() == pingora::ErrorType::ReadTimedout {
        // A body that stalls past server.limits.body_idle_timeout is answered, as nginx does.
        return Stop::from(GatewayError::new(
            408,
            "invalid_request_error",
            "request_timeout",
            "the request body stalled past the server's body idle timeout",
        ));
    }
    Stop::Aborted(format!("reading client body: {}", e.etype().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::{Error, ErrorType};

    fn answer(etype: ErrorType) -> Option<GatewayError> {
        match client_body_error(&Error::explain(etype, "test")) {
            Stop::Respond { error, .. } => Some(*error),
            Stop::Aborted(_) => None,
        }
    }

    #[test]
    fn broken_framing_and_stalls_are_answered_and_end_the_connection() {
        for etype in [
            ErrorType::new("InvalidChunk"),
            ErrorType::new("InvalidTrailerEnd"),
        ] {
            let err = answer(etype).expect("answered");
            assert_eq!((err.status, err.code), (400, INVALID_CHUNKED_BODY));
            assert!(ends_connection(&err));
        }
        let stall = answer(ErrorType::ReadTimedout).expect("answered");
        assert_eq!(stall.status, 408);
        assert!(ends_connection(&stall));
        assert!(!ends_connection(&GatewayError::bad_json("x")));
    }

    #[test]
    fn a_client_that_left_is_not_answered() {
        assert!(answer(ErrorType::ConnectionClosed).is_none());
        assert!(answer(ErrorType::new("PrematureBodyEnd")).is_none());
    }
}
