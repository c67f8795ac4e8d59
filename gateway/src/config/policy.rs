//! `Policy`: what the proxy runs on, compiled once from a validated [`Spec`]. Matchers,
//! balancers, peers and metric handles are built here so the request path only reads.
//! State that must outlive a reload (endpoint stats, metric families) lives in
//! [`SharedState`] and is re-attached by name.

use super::load::{ConfigError, ConfigErrors, LoadedSpec};
use super::locate::Seg;
use super::spec::{BalanceSpec, RetryOnSpec, Spec, UpstreamSpec};
use http::header::{HeaderName, HeaderValue};
use http::Method;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use sluice_plugins::balance::{Balancer, EndpointStats, Strategy};
use sluice_plugins::glob::Glob;
use sluice_plugins::metrics::{ConnectionMetrics, Metrics, RouteMetrics, StatusCounters};
use sluice_plugins::router::{RouteMatcher, Router};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// State shared by every policy generation.
pub struct SharedState {
    pub metrics: Metrics,
    endpoint_stats: Mutex<HashMap<(String, String), Arc<EndpointStats>>>,
}

impl SharedState {
    #[must_use]
    pub fn new(metrics: Metrics) -> Self {
        SharedState {
            metrics,
            endpoint_stats: Mutex::new(HashMap::new()),
        }
    }

    fn stats_for(&self, upstream: &str, url: &str) -> Arc<EndpointStats> {
        let Ok(mut map) = self.endpoint_stats.lock() else {
            return Arc::new(EndpointStats::new(Instant::now()));
        };
        Arc::clone(
            map.entry((upstream.to_string(), url.to_string()))
                .or_insert_with(|| Arc::new(EndpointStats::new(Instant::now()))),
        )
    }
}

/// A compiled, immutable configuration snapshot.
pub struct Policy {
    pub router: Router,
    pub routes: Vec<Route>,
    pub max_body_bytes: usize,
    pub unrouted: StatusCounters,
    /// The running spec with secrets replaced, for `GET /admin/config`.
    pub redacted: serde_json::Value,
}

pub struct Route {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub metrics: RouteMetrics,
}

pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balancer: Balancer,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub idle_timeout: Duration,
    pub connections: ConnectionMetrics,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

/// When a failed try is tried again on another endpoint.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on_connect: bool,
    pub on_timeout: bool,
    pub statuses: Vec<u16>,
}

impl RetryPolicy {
    #[must_use]
    pub fn on_status(&self, status: u16) -> bool {
        self.statuses.contains(&status)
    }
}

/// One endpoint: its URL parts and a lazily resolved Pingora peer.
pub struct Endpoint {
    pub url: String,
    pub authority: HeaderValue,
    pub base_path: String,
    host: String,
    port: u16,
    peer_template: PeerTemplate,
    peer: OnceCell<Arc<HttpPeer>>,
}

#[derive(Clone)]
struct PeerTemplate {
    tls: bool,
    sni: String,
    verify: bool,
    ca: Option<Arc<[WrappedX509]>>,
    http2: bool,
    timeouts: Timeouts,
    idle_timeout: Duration,
}

impl Endpoint {
    /// The peer to connect to, resolving the host name on first use.
    pub async fn peer(&self) -> Result<&Arc<HttpPeer>, String> {
        self.peer
            .get_or_try_init(|| async {
                let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
                let addr = addrs
                    .next()
                    .ok_or_else(|| format!("{} has no address", self.host))?;
                Ok(Arc::new(self.peer_template.build(addr)))
            })
            .await
    }
}

impl PeerTemplate {
    fn build(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.tls, self.sni.clone());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.timeouts.connect);
        o.total_connection_timeout = Some(self.timeouts.connect);
        o.idle_timeout = Some(self.idle_timeout);
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify;
        o.ca = self.ca.clone();
        if self.http2 {
            // h2 over TLS is negotiated by ALPN; plain-text h2 needs prior knowledge (h2c).
            if self.tls {
                o.set_http_version(2, 1)
            } else {
                o.set_http_version(2, 2)
            }
            o.max_h2_streams = 128;
        }
        peer
    }
}

/// The parts of an endpoint URL sluice needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub authority: String,
    pub base_path: String,
}

/// Parses `http(s)://host[:port][/base]`.
pub fn parse_endpoint_url(url: &str) -> Result<EndpointUrl, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{url}` must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{url}` must not have a query"));
    }
    Ok(EndpointUrl {
        tls,
        port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        host,
        authority: authority.as_str().to_string(),
        base_path: uri.path().trim_end_matches('/').to_string(),
    })
}

/// Compiles a validated spec. Fails only on what validation cannot see (e.g. unreadable CA files).
pub fn compile(loaded: &LoadedSpec, shared: &SharedState) -> Result<Policy, ConfigErrors> {
    let spec = &loaded.spec;
    let mut errors = Vec::new();
    let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
    for (name, up) in &spec.upstreams {
        match compile_upstream(loaded, name, up, shared) {
            Ok(u) => {
                upstreams.insert(name, Arc::new(u));
            }
            Err(e) => errors.push(e),
        }
    }
    let mut matchers = Vec::new();
    let mut routes = Vec::new();
    for route in &spec.routes {
        let Some(upstream) = upstreams.get(route.upstream.as_str()) else {
            continue;
        };
        let m = &route.matcher;
        matchers.push(RouteMatcher {
            path_prefix: m.path_prefix.clone(),
            methods: m
                .methods
                .iter()
                .filter_map(|s| Method::from_bytes(s.to_ascii_uppercase().as_bytes()).ok())
                .collect(),
            headers: m
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    HeaderName::from_bytes(k.as_bytes())
                        .ok()
                        .map(|k| (k, v.clone()))
                })
                .collect(),
            model: m.model.as_deref().map(Glob::new),
        });
        routes.push(Route {
            name: route.name.clone(),
            upstream: Arc::clone(upstream),
            metrics: shared.metrics.route(&route.name, &route.upstream, ""),
        });
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Policy {
        router: Router::new(matchers),
        routes,
        max_body_bytes: usize::try_from(spec.server.max_body_bytes.0).unwrap_or(usize::MAX),
        unrouted: shared.metrics.unrouted(),
        redacted: redact(spec),
    })
}

fn compile_upstream(
    loaded: &LoadedSpec,
    name: &str,
    up: &UpstreamSpec,
    shared: &SharedState,
) -> Result<Upstream, ConfigError> {
    // An error at `fields` below this upstream.
    let error_at = |fields: &[&str], message: String| {
        let mut path = vec![Seg::Key("upstreams".into()), Seg::Key(name.into())];
        path.extend(fields.iter().map(|f| Seg::Key((*f).into())));
        loaded.error_at(&path, message)
    };
    let ca = match &up.tls.ca_file {
        Some(path) => Some(load_ca(path).map_err(|m| error_at(&["tls", "ca_file"], m))?),
        None => None,
    };
    let timeouts = Timeouts {
        connect: up.timeouts.connect.0,
        first_byte: up.timeouts.first_byte.0,
        idle: up.timeouts.idle.0,
    };
    let mut endpoints = Vec::new();
    let mut stats = Vec::new();
    let mut weights = Vec::new();
    for ep in &up.endpoints {
        // Validation already checked the URL; a failure here is unreachable but still not a panic.
        let parsed = parse_endpoint_url(&ep.url).map_err(|m| error_at(&[], m))?;
        let template = PeerTemplate {
            tls: parsed.tls,
            sni: up.tls.sni.clone().unwrap_or_else(|| parsed.host.clone()),
            verify: up.tls.verify,
            ca: ca.clone(),
            http2: up.pool.http2,
            timeouts,
            idle_timeout: up.pool.idle_timeout.0,
        };
        let peer = OnceCell::new();
        // An address needs no lookup; a host name is resolved on first use, never at load.
        if let Ok(ip) = parsed.host.parse::<IpAddr>() {
            let _ = peer.set(Arc::new(template.build(SocketAddr::new(ip, parsed.port))));
        }
        endpoints.push(Endpoint {
            url: ep.url.clone(),
            authority: HeaderValue::from_str(&parsed.authority)
                .map_err(|e| error_at(&[], e.to_string()))?,
            base_path: parsed.base_path,
            host: parsed.host,
            port: parsed.port,
            peer_template: template,
            peer,
        });
        stats.push(shared.stats_for(name, &ep.url));
        weights.push(ep.weight);
    }
    let strategy = match up.balance {
        BalanceSpec::RoundRobin => Strategy::RoundRobin,
        BalanceSpec::Weighted => Strategy::Weighted,
        BalanceSpec::LeastOutstanding => Strategy::LeastOutstanding,
        BalanceSpec::PeakEwma => Strategy::PeakEwma,
    };
    let mut retry = RetryPolicy {
        attempts: up.retry.attempts,
        ..RetryPolicy::default()
    };
    for on in &up.retry.on {
        match on {
            RetryOnSpec::Status(s) => retry.statuses.push(*s),
            RetryOnSpec::Event(e) if e == "connect" => retry.on_connect = true,
            RetryOnSpec::Event(_) => retry.on_timeout = true,
        }
    }
    Ok(Upstream {
        name: name.to_string(),
        endpoints,
        balancer: Balancer::new(strategy, &weights, stats),
        timeouts,
        retry,
        set_headers: up
            .set_headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect(),
        idle_timeout: up.pool.idle_timeout.0,
        connections: shared.metrics.connections(name),
    })
}

/// Reads a PEM bundle of CA certificates.
fn load_ca(path: &str) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = item.map_err(|e| format!("{path}: bad PEM: {e}"))?.to_vec();
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{path}: bad certificate: {e}"))?;
        certs.push(WrappedX509::new(der, pingora::utils::tls::parse_x509));
    }
    if certs.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(certs.into())
}

/// The spec as JSON with header values (API keys) replaced.
fn redact(spec: &Spec) -> serde_json::Value {
    let mut v = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
    if let Some(ups) = v.get_mut("upstreams").and_then(|u| u.as_object_mut()) {
        for up in ups.values_mut() {
            if let Some(h) = up.get_mut("set_headers").and_then(|h| h.as_object_mut()) {
                for value in h.values_mut() {
                    *value = serde_json::Value::String("<redacted>".into());
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        let u = parse_endpoint_url("https://api.openai.com").unwrap();
        assert_eq!(
            (u.tls, u.port, u.host.as_str(), u.base_path.as_str()),
            (true, 443, "api.openai.com", "")
        );
        let u = parse_endpoint_url("http://127.0.0.1:8001/base/").unwrap();
        assert_eq!(
            (u.tls, u.port, u.authority.as_str(), u.base_path.as_str()),
            (false, 8001, "127.0.0.1:8001", "/base")
        );
        assert!(parse_endpoint_url("ftp://x").is_err());
        assert!(parse_endpoint_url("127.0.0.1:8001").is_err());
        assert!(parse_endpoint_url("http://x/?a=1").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let loaded = super::super::load::load_str(
            "t.yaml",
            "upstreams:\n  o:\n    endpoints: [{url: \"https://api.openai.com\"}]\n    set_headers: {authorization: \"Bearer sk-123\"}\nroutes:\n  - {name: r, upstream: o}\n",
            &|_| None,
        )
        .unwrap();
        let shared = SharedState::new(Metrics::new("t").unwrap());
        let p = compile(&loaded, &shared).unwrap();
        let text = p.redacted.to_string();
        assert!(!text.contains("sk-123"), "{text}");
        assert!(text.contains("<redacted>"));
    }
}
