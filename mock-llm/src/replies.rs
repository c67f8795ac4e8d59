//! The endpoints and the replies they make.

use crate::knobs::Knobs;
use crate::{Body, State};
use bytes::Bytes;
use futures_util::stream;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "mock_error", "code": status.as_u16().to_string()}}),
    )
}

/// What the mock learned about a request body.
struct Received {
    bytes: Bytes,
    sha256: String,
}

pub async fn respond(req: Request<Incoming>, state: &State, knobs: Knobs) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
    };
    let received = Received {
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
    };
    if !knobs.latency.is_zero() {
        tokio::time::sleep(knobs.latency).await;
    }
    let path = parts.uri.path();
    let mut resp = if !(200..300).contains(&knobs.status) && path.starts_with("/v1/") {
        let status =
            StatusCode::from_u16(knobs.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = error(status, "mock error as requested");
        if let Some(secs) = knobs.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        r
    } else {
        match (&parts.method, path) {
            (&Method::GET, "/health") => {
                let mut r = Response::new(full("ok"));
                *r.status_mut() = StatusCode::from_u16(state.defaults.health_status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                r
            }
            (&Method::GET, "/mock/stats") => json_response(
                StatusCode::OK,
                &json!({"requests": state.stats.requests.load(Ordering::Relaxed), "connections": state.stats.connections.load(Ordering::Relaxed)}),
            ),
            (&Method::GET, "/v1/models") => json_response(
                StatusCode::OK,
                &json!({"object": "list", "data": [
                    {"id": "mock-gpt-4o", "object": "model", "created": 0, "owned_by": "mock"},
                    {"id": "mock-small", "object": "model", "created": 0, "owned_by": "mock"}]}),
            ),
            (&Method::POST, "/v1/chat/completions") => completion(&received, &knobs, Kind::Chat),
            (&Method::POST, "/v1/completions") => completion(&received, &knobs, Kind::Text),
            (&Method::POST, "/v1/embeddings") => embeddings(&received, &knobs),
            (_, p) if p.starts_with("/mock/echo") => echo(&parts, &received),
            _ => error(
                StatusCode::NOT_FOUND,
                &format!("mock has no {} {}", parts.method, path),
            ),
        }
    };
    let h = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(&state.name) {
        h.insert("x-mock-instance", v);
    }
    if let Ok(v) = header::HeaderValue::from_str(&received.sha256) {
        h.insert("x-mock-body-sha256", v);
    }
    h.insert("x-mock-body-bytes", received.bytes.len().into());
    resp
}

fn echo(parts: &http::request::Parts, received: &Received) -> Response<Body> {
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"method": parts.method.as_str(), "path": parts.uri.path(), "query": parts.uri.query(),
                "version": format!("{:?}", parts.version),
                "headers": headers, "body_sha256": received.sha256, "body_bytes": received.bytes.len()}),
    )
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

fn completion(received: &Received, knobs: &Knobs, kind: Kind) -> Response<Body> {
    let request: Value = match serde_json::from_slice(&received.bytes) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_string();
    let id = format!("cmpl-{}", &received.sha256[..12]);
    // The reply names the request's hash, so a test can tell which request it answers.
    let tokens: Vec<String> = (0..knobs.tokens.max(1))
        .map(|i| {
            if i == 0 {
                format!("reply-{}", &received.sha256[..8])
            } else {
                format!(" tok{i}")
            }
        })
        .collect();
    let usage = json!({"prompt_tokens": received.bytes.len() / 4, "completion_tokens": tokens.len(),
                       "total_tokens": received.bytes.len() / 4 + tokens.len()});
    if request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        let include_usage = request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return stream_completion(
            id,
            model,
            tokens,
            (include_usage && !knobs.no_usage).then_some(usage),
            knobs,
            kind,
        );
    }
    let text: String = tokens.concat();
    let mut body = match kind {
        Kind::Chat => json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage}),
        Kind::Text => json!({"id": id, "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage}),
    };
    if knobs.no_usage {
        strip_usage(&mut body);
    }
    json_response(StatusCode::OK, &body)
}

fn chunk(
    id: &str,
    model: &str,
    kind: Kind,
    content: Option<&str>,
    role: bool,
    finish: Option<&str>,
) -> Value {
    match kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(c) = content {
                delta.insert("content".into(), json!(c));
            }
            json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        }
        Kind::Text => json!({"id": id, "object": "text_completion", "created": 0, "model": model,
                   "choices": [{"index": 0, "text": content.unwrap_or(""), "finish_reason": finish}]}),
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_completion(
    id: String,
    model: String,
    tokens: Vec<String>,
    usage: Option<Value>,
    knobs: &Knobs,
    kind: Kind,
) -> Response<Body> {
    let mut events: Vec<Bytes> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| sse(&chunk(&id, &model, kind, Some(t), i == 0, None)))
        .collect();
    events.push(sse(&chunk(&id, &model, kind, None, false, Some("stop"))));
    if let Some(usage) = usage {
        events.push(sse(&json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage})));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let (delay, abort_after) = (knobs.token_delay, knobs.abort_after);
    let body = stream::unfold(
        (events.into_iter(), 0usize),
        move |(mut it, sent)| async move {
            if sent == usize::MAX {
                return None;
            }
            if abort_after.is_some_and(|n| sent >= n) {
                return Some((
                    Err(std::io::Error::other("aborted as requested")),
                    (it, usize::MAX),
                ));
            }
            let event = it.next()?;
            if sent > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok(Frame::data(event)), (it, sent + 1)))
        },
    );
    let mut r = Response::new(StreamBody::new(body).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    r
}

/// Drops `usage` from an answer (the `no_usage` knob).
fn strip_usage(body: &mut Value) {
    if let Some(object) = body.as_object_mut() {
        object.remove("usage");
    }
}

fn embeddings(received: &Received, knobs: &Knobs) -> Response<Body> {
    let request: Value = match serde_json::from_slice(&received.bytes) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let inputs: Vec<String> = match request.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or an array",
            )
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let digest = Sha256::digest(text.as_bytes());
            let vector: Vec<f64> = digest
                .iter()
                .take(8)
                .map(|b| f64::from(*b) / 255.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-embed");
    let mut body = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": received.bytes.len() / 4, "total_tokens": received.bytes.len() / 4}});
    if knobs.no_usage {
        strip_usage(&mut body);
    }
    json_response(StatusCode::OK, &body)
}
