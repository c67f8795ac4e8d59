//! Request ids and trace context, stamped on the request before anything else: the client's
//! `x-request-id` kept when it is plain (else the trace id), the client's `traceparent`
//! continued when valid (else a new trace) under sluice's own span, whose child each upstream
//! try is (the forwarder sends the try's `traceparent`). The answer, the access line and the
//! upstream's request then carry the same id.

use super::headers::X_REQUEST_ID;
use super::random::random_u64;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use sluice_plugins::trace_context::{sane_request_id, TraceParent};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// What a request is known by.
#[derive(Debug, Clone)]
pub struct Ids {
    pub request_id: HeaderValue,
    /// Whether the id is the client's own (else it is the trace id).
    pub client_id: bool,
    /// The trace, with sluice's span as the parent of the upstream's.
    pub trace: TraceParent,
    /// The client's span, when it sent a valid `traceparent`: the parent of sluice's.
    pub parent: Option<[u8; 8]>,
}

/// Reads the request's ids (or makes them) and stamps them on what the upstream will get.
pub fn stamp(req: &mut RequestHeader) -> Ids {
    let sent = req.headers.get(TRACEPARENT);
    let had_traceparent = sent.is_some();
    let incoming = sent.and_then(|v| TraceParent::parse(v.as_bytes()));
    let parent = incoming.map(|t| t.span_id);
    let trace = incoming
        .unwrap_or_else(|| TraceParent::new_trace([random_u64(), random_u64(), random_u64()]))
        .with_span(random_u64());
    let (request_id, client_id) = match req.headers.get(X_REQUEST_ID) {
        Some(v) if sane_request_id(v.as_bytes()) => (v.clone(), true),
        // 32 hex digits: always a valid header value.
        _ => {
            let id = HeaderValue::from_bytes(&trace.trace_id_bytes());
            let id = id.unwrap_or(HeaderValue::from_static("-"));
            let _ = req.insert_header(HeaderName::from_static(X_REQUEST_ID), id.clone());
            (id, false)
        }
    };
    // Each try sends its own traceparent (the forwarder); the client's goes no further.
    if had_traceparent {
        req.remove_header(TRACEPARENT);
    }
    Ids {
        request_id,
        client_id,
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
        assert!(ids.client_id);
        let ours = ids.trace.to_string();
        assert!(
            ours.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{ours}"
        );
        assert_ne!(ours, incoming, "sluice's span is the upstream's parent");
        assert_eq!(
            ids.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(
            req.headers.get("traceparent").is_none(),
            "each try sends its own"
        );
    }

    #[test]
    fn strange_ids_and_broken_traceparents_are_replaced() {
        let mut req = request_head(&[("x-request-id", "a b\"c"), ("traceparent", "00-nope")]);
        let ids = stamp(&mut req);
        let id = ids.request_id.to_str().unwrap();
        assert_eq!(id, ids.trace.trace_hex(), "a new id is the new trace's");
        assert!(!ids.client_id);
        assert_eq!(req.headers["x-request-id"], id);
        let other = stamp(&mut request_head(&[]));
        assert_ne!(other.request_id, ids.request_id);
    }
}
