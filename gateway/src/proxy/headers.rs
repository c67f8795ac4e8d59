//! Header rewriting between client and upstream: hop-by-hop headers stop at the gateway,
//! `Host` names the upstream, `x-forwarded-for` gains the client, and credentials are set:
//! the endpoint URL's basic auth, then configured headers (API keys).

use crate::config::policy::{Endpoint, Upstream};
use http::header::{self, HeaderName, HeaderValue};
use http::Version;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use std::net::IpAddr;

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

pub const X_SLUICE_ROUTE: &str = "x-sluice-route";
pub const X_SLUICE_UPSTREAM: &str = "x-sluice-upstream";
pub const X_SLUICE_CACHE: &str = "x-sluice-cache";
/// The fallback upstream that answered, when the route's own could not.
pub const X_SLUICE_FALLBACK: &str = "x-sluice-fallback";
/// The A/B variant that answered; from a client, the variant it asks for (when allowed).
pub const X_SLUICE_VARIANT: &str = "x-sluice-variant";
/// The request's id, on the answer and on the upstream's request.
pub const X_REQUEST_ID: &str = "x-request-id";
/// An upstream's own request id (OpenAI sends one), kept beside sluice's.
pub const X_UPSTREAM_REQUEST_ID: &str = "x-upstream-request-id";

/// The hop-by-hop headers present in `headers`, including those its `Connection` names.
fn hop_by_hop(headers: &http::HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok());
    HOP_BY_HOP
        .iter()
        .map(|h| HeaderName::from_static(h))
        .chain(named)
        .filter(|n| headers.contains_key(n))
}

/// How the request to an endpoint differs from the client's.
pub struct UpstreamRequest<'a> {
    pub upstream: &'a Upstream,
    pub endpoint: &'a Endpoint,
    pub client_ip: Option<IpAddr>,
    /// Set when the body was read whole.
    pub body_len: Option<usize>,
    /// Ask for an unencoded body (a response the cache records must be readable and servable
    /// to any client).
    pub identity: bool,
    /// The A/B variant's own request headers, set after the upstream's.
    pub variant_headers: &'a [(HeaderName, HeaderValue)],
}

/// The request sent to the endpoint.
pub fn upstream_request(client: &RequestHeader, to: &UpstreamRequest<'_>) -> Result<RequestHeader> {
    let (upstream, endpoint, client_ip, body_len) =
        (to.upstream, to.endpoint, to.client_ip, to.body_len);
    let mut req = client.clone();
    req.set_version(Version::HTTP_11);
    for name in hop_by_hop(&client.headers) {
        req.remove_header(&name);
    }
    // sluice answers `Expect: 100-continue` itself and always sends the body at once.
    req.remove_header(&header::EXPECT);
    if to.identity {
        req.remove_header(&header::ACCEPT_ENCODING);
    }
    if let Some(len) = body_len {
        req.remove_header(&header::TRANSFER_ENCODING);
        req.insert_header(header::CONTENT_LENGTH, len)?;
    }
    req.insert_header(header::HOST, endpoint.authority.clone())?;
    // Before the configured headers, so an `authorization` in set_headers wins.
    if let Some(auth) = &endpoint.basic_auth {
        req.insert_header(header::AUTHORIZATION, auth.clone())?;
    }
    if let Some(ip) = client_ip {
        let xff = match client
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip.to_string(),
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    for (name, value) in upstream.set_headers.iter().chain(to.variant_headers) {
        req.insert_header(name.clone(), value.clone())?;
    }
    if !endpoint.base_path.is_empty() {
        let pq = client.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let uri: http::Uri = format!("{}{pq}", endpoint.base_path).parse().map_err(|_| {
            pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "bad upstream path")
        })?;
        req.set_uri(uri);
    }
    Ok(req)
}

/// The response header sent to the client.
pub fn client_response(
    upstream: &ResponseHeader,
    route: &str,
    endpoint: &str,
    head_request: bool,
) -> Result<ResponseHeader> {
    let mut resp = upstream.clone();
    resp.set_version(Version::HTTP_11);
    for name in hop_by_hop(&upstream.headers) {
        resp.remove_header(&name);
    }
    let status = resp.status.as_u16();
    let has_body = !head_request && status >= 200 && status != 204 && status != 304;
    // An h2 upstream has no framing header; keep the client connection alive with chunking.
    if has_body
        && !resp.headers.contains_key(header::CONTENT_LENGTH)
        && !resp.headers.contains_key(header::TRANSFER_ENCODING)
    {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    resp.insert_header(X_SLUICE_ROUTE, route)?;
    resp.insert_header(X_SLUICE_UPSTREAM, endpoint)?;
    // The variant is this gateway's to name (an upstream may be another sluice).
    resp.remove_header(X_SLUICE_VARIANT);
    Ok(resp)
}
