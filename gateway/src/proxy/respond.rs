//! Why a phase stopped short, and the one place gateway-made answers are written.

use super::body;
use super::ctx::RequestCtx;
use super::headers::X_SLUICE_ROUTE;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use sluice_plugins::openai_error::GatewayError;

/// Why a phase stopped the request.
#[derive(Debug)]
pub enum ForwardError {
    /// Nothing was sent to the client yet: answer with this error.
    Respond(GatewayError),
    /// The response was under way (or the client went away): drop the client connection.
    Aborted(String),
}

/// Answers with a gateway-made error in OpenAI's shape. The status is recorded first, so the
/// request is counted even when the client is gone before the answer is written.
pub async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &GatewayError) {
    ctx.status = Some(err.status);
    ctx.served = false;
    ctx.error = Some(err.message.clone());
    if body::ends_connection(err) {
        // The rest of the body is not waited for: the answer says close, and the connection ends.
        session.set_keepalive(None);
    }
    let json = Bytes::from(err.body());
    let route = ctx.route().map(|r| r.name.clone());
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
        for (name, value) in std::mem::take(&mut ctx.response_headers) {
            let _ = resp.append_header(name, value);
        }
        if session
            .write_response_header(Box::new(resp), false)
            .await
            .is_ok()
        {
            ctx.bytes_out += json.len();
            let _ = session.write_response_body(Some(json), true).await;
        }
    }
    if err.status == 413 {
        body::linger(session).await;
    }
}
