//! Request ids and trace context, stamped on the request before anything else: the client's
//! `x-request-id` kept when it is plain (else the trace id), the client's `traceparent`
//! continued when valid (else a new trace), and sluice's own span as the parent the upstream
//! sees. The answer, the access line and the upstream's request then carry the same id.

use super::headers::X_REQUEST_ID;
use super::random::random_u64;
use http::HeaderValue;
use pingora::http::RequestHeader;
use sluice_plugins::trace_context::{sane_request_id, TraceParent};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// What a request is known by.
#[derive(Debug, Clone)]
pub struct Ids {
    pub request_id: HeaderValue,
    /// The trace, with sluice's span as the parent of the upstream's.
    pub trace: TraceParent,
    /// The client's span, when it sent a valid `traceparent`: the parent of sluice's.
    pub parent: Option<[u8; 8]>,
}

/// Reads the request's ids (or makes them) and stamps them on what the upstream will get.
pub fn stamp(req: &mut RequestHeader) -> Ids {
    let incoming = req
        .headers
        .get(TRACEPARENT)
        .and_then(|v| TraceParent::parse(v.as_bytes()));
    let parent = incoming.map(|t| t.span_id);
    let trace = incoming
        .unwrap_or_else(|| TraceParent::new_trace([random_u64(), random_u64(), random_u64()]))
        .with_span(random_u64());
    let request_id = match req.headers.get(X_REQUEST_ID) {
        Some(v) if sane_request_id(v.as_bytes()) => v.clone(),
        // 32 hex digits: always a valid header value.
        _ => HeaderValue::from_str(&trace.trace_hex()).unwrap_or(HeaderValue::from_static("-")),
    };
    let _ = req.insert_header(X_REQUEST_ID, request_id.clone());
    let _ = req.insert_header(TRACEPARENT, trace.to_string());
    Ids {
        request_id,
        trace,
        parent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::test_session::request_head;

    #[test]
    fn a_plain_client_id_and_a_valid_traceparent_are_kept() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut req = request_head(&[("x-request-id", "client-42"), ("traceparent", incoming)]);
        let ids = stamp(&mut req);
        assert_eq!(ids.request_id, "client-42");
        assert_eq!(req.headers["x-request-id"], "client-42");
        let sent = req.headers["traceparent"].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert_ne!(sent, incoming, "sluice's span is the upstream's parent");
        assert_eq!(ids.trace.to_string(), sent);
    }

    #[test]
    fn strange_ids_and_broken_traceparents_are_replaced() {
        let mut req = request_head(&[("x-request-id", "a b\"c"), ("traceparent", "00-nope")]);
        let ids = stamp(&mut req);
        let id = ids.request_id.to_str().unwrap();
        assert_eq!(id, ids.trace.trace_hex(), "a new id is the new trace's");
        assert_eq!(req.headers["x-request-id"], id);
        let other = stamp(&mut request_head(&[]));
        assert_ne!(other.request_id, ids.request_id);
    }
}
