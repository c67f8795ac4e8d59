//! The one place gateway-made answers are written: an error in OpenAI's shape, with the
//! headers the phases added.

use super::body;
use super::headers::X_SLUICE_ROUTE;
use super::record::Record;
use super::stop::Header;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;

/// Answers with `err`. The status is recorded first, so the request is counted even when the
/// client is gone before the answer is written.
pub async fn error(
    session: &mut Session,
    record: &mut Record,
    route: Option<&str>,
    err: &GatewayError,
    headers: Vec<Header>,
) {
    record.answered_locally(err.status, 0);
    record.error = Some(err.message.clone());
    if body::ends_connection(err) {
        // The rest of the body is not waited for: the answer says close, and the connection ends.
        session.set_keepalive(None);
    }
    let json = Bytes::from(err.body());
    if let Ok(mut resp) = ResponseHeader::build(err.status, Some(4)) {
        let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
        let _ = resp.insert_header(header::CONTENT_LENGTH, json.len());
        if let Some(route) = route {
            let _ = resp.insert_header(X_SLUICE_ROUTE, route);
        }
        if let Some(after) = err.retry_after {
            // Whole seconds by the HTTP standard; OpenAI's SDKs read the exact wait in ms.
            let secs = (after.as_secs_f64().ceil() as u64).max(1);
            let _ = resp.insert_header(header::RETRY_AFTER, secs);
            let _ = resp.insert_header("retry-after-ms", after.as_millis().max(1) as u64);
        }
        for (name, value) in headers {
            let _ = resp.append_header(name, value);
        }
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_ok()
        {
            record.bytes_out += json.len();
            let _ = session.write_response_body(Some(json), true).await;
        }
    }
    if err.status == 413 {
        body::linger(session).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_session::{received, session};
    use http::header::{HeaderName, HeaderValue};
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn an_error_is_written_in_openai_shape_with_the_phases_headers_and_recorded() {
        let (mut s, mut client) = session(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
        let mut record = Record::new(Instant::now());
        let mut err = GatewayError::rate_limited("rpm", "requests", Duration::from_millis(1500));
        err.message = "slow down".into();
        let extra = vec![(
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from_static("0"),
        )];
        error(&mut s, &mut record, Some("chat"), &err, extra).await;
        let answer = received(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        for h in [
            "x-sluice-route: chat",
            "retry-after: 2",
            "retry-after-ms: 1500",
            "x-ratelimit-remaining-requests: 0",
        ] {
            assert!(answer.to_ascii_lowercase().contains(h), "{h} in {answer}");
        }
        assert!(answer.contains(r#""message":"slow down""#), "{answer}");
        assert_eq!((record.status, record.served), (Some(429), false));
        assert_eq!(record.error.as_deref(), Some("slow down"));
        assert!(record.bytes_out > 0);
    }
}
