//! One endpoint of an upstream: its URL parts, its metric handles and the Pingora peer to
//! connect to. A host name is resolved on first use and again once `dns_ttl` has passed, so a
//! replica replaced behind DNS is found without a reload; an address needs no lookup.
//! Userinfo in the URL (`http://user:password@host`) is the endpoint's basic auth; it is
//! kept apart from the URL the endpoint is known by, so no label, log or header shows it.

use super::secret::redact_url;
use arc_swap::ArcSwapOption;
use base64::Engine;
use http::header::HeaderValue;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use sluice_plugins::metrics::EndpointMetrics;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Endpoint {
    /// The URL without its userinfo: the endpoint's name in labels, logs and headers.
    pub url: String,
    pub authority: HeaderValue,
    /// `authorization: Basic ...` from the URL's userinfo, marked sensitive.
    pub basic_auth: Option<HeaderValue>,
    pub base_path: String,
    pub metrics: EndpointMetrics,
    address: Address,
}

enum Address {
    Fixed(Arc<HttpPeer>),
    Named(NamedHost),
}

/// The `timeouts:` of an upstream, which each of its endpoints connects and reads with.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
}

/// A host name and the peer it last resolved to.
struct NamedHost {
    host: String,
    port: u16,
    ttl: Duration,
    template: PeerTemplate,
    resolved: ArcSwapOption<Resolved>,
    refreshing: AtomicBool,
}

/// Clears the "a lookup is under way" flag when the lookup ends, however it ends.
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct Resolved {
    peer: Arc<HttpPeer>,
    addr: SocketAddr,
    expires: Instant,
}

/// Everything of a peer but its address.
#[derive(Clone)]
pub(super) struct PeerTemplate {
    pub tls: bool,
    pub sni: String,
    pub verify: bool,
    pub ca: Option<Arc<[WrappedX509]>>,
    pub http2: bool,
    pub max_h2_streams: usize,
    pub timeouts: Timeouts,
    pub idle_timeout: Duration,
}

impl Endpoint {
    pub(super) fn new(
        parsed: EndpointUrl,
        authority: HeaderValue,
        template: PeerTemplate,
        dns_ttl: Duration,
        metrics: EndpointMetrics,
    ) -> Self {
        let address = match parsed.host.parse::<IpAddr>() {
            Ok(ip) => Address::Fixed(Arc::new(template.build(SocketAddr::new(ip, parsed.port)))),
            Err(_) => Address::Named(NamedHost {
                host: parsed.host,
                port: parsed.port,
                ttl: dns_ttl,
                template,
                resolved: ArcSwapOption::empty(),
                refreshing: AtomicBool::new(false),
            }),
        };
        Endpoint {
            url: parsed.url,
            authority,
            basic_auth: parsed.basic_auth,
            base_path: parsed.base_path,
            metrics,
            address,
        }
    }

    /// The peer to connect to at `now`, resolving the host name when due.
    pub async fn peer(&self, now: Instant) -> Result<Arc<HttpPeer>, String> {
        match &self.address {
            Address::Fixed(peer) => Ok(Arc::clone(peer)),
            Address::Named(named) => named.peer(now).await,
        }
    }
}

impl NamedHost {
    async fn peer(&self, now: Instant) -> Result<Arc<HttpPeer>, String> {
        let current = self.resolved.load_full();
        if let Some(r) = &current {
            // One request looks the name up again; the others keep the old address meanwhile.
            if now < r.expires || self.refreshing.swap(true, Ordering::Acquire) {
                return Ok(Arc::clone(&r.peer));
            }
        }
        // Handed back even if this request is dropped mid-lookup (its client left).
        let _refreshing = Refreshing(&self.refreshing);
        let looked_up = self.lookup().await;
        let result = match (looked_up, current) {
            (Ok(addr), Some(old)) if addr == old.addr => {
                self.keep(Arc::clone(&old.peer), addr, now);
                Ok(Arc::clone(&old.peer))
            }
            (Ok(addr), _) => {
                let peer = Arc::new(self.template.build(addr));
                self.keep(Arc::clone(&peer), addr, now);
                Ok(peer)
            }
            (Err(e), Some(old)) => {
                tracing::warn!(host = %self.host, error = %e, "re-resolving failed; keeping the last address");
                self.keep(Arc::clone(&old.peer), old.addr, now);
                Ok(Arc::clone(&old.peer))
            }
            (Err(e), None) => Err(e),
        };
        result
    }

    fn keep(&self, peer: Arc<HttpPeer>, addr: SocketAddr, now: Instant) {
        self.resolved.store(Some(Arc::new(Resolved {
            peer,
            addr,
            expires: now + self.ttl,
        })));
    }

    async fn lookup(&self) -> Result<SocketAddr, String> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))
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
            o.max_h2_streams = self.max_h2_streams;
        }
        peer
    }
}

/// The parts of an endpoint URL sluice needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// The URL as configured, without its userinfo.
    pub url: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]`, for the `Host` header.
    pub authority: String,
    pub base_path: String,
    pub basic_auth: Option<HeaderValue>,
}

/// Parses `http(s)://[user[:password]@]host[:port][/base]`. Errors show the URL with its
/// userinfo redacted.
pub fn parse_endpoint_url(url: &str) -> Result<EndpointUrl, String> {
    let quoted = redact_url(url);
    let uri: http::Uri = url.parse().map_err(|e| {
        let hint = if url.contains('@') {
            " (a user name or password must be percent-encoded)"
        } else {
            ""
        };
        format!("`{quoted}` is not a URL: {e}{hint}")
    })?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{quoted}` must start with http:// or https://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{quoted}` has no host"))?;
    let (userinfo, host_port) = match authority.as_str().rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority.as_str()),
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("`{quoted}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{quoted}` must not have a query"));
    }
    // `http` reads a port that is not a number as no port at all (then 80 or 443).
    let port_text = match host_port.rsplit_once(']') {
        Some((_, after)) => after.strip_prefix(':'),
        None => host_port.split_once(':').map(|(_, port)| port),
    };
    let port = match port_text.filter(|p| !p.is_empty()) {
        Some(text) => text
            .parse::<u16>()
            .map_err(|_| format!("`{quoted}` has an invalid port"))?,
        None if tls => 443,
        None => 80,
    };
    Ok(EndpointUrl {
        url: match userinfo {
            // The userinfo follows the scheme's `://`, before any other `@`.
            Some(userinfo) => url.replacen(&format!("{userinfo}@"), "", 1),
            None => url.to_string(),
        },
        tls,
        port,
        host,
        authority: host_port.to_string(),
        base_path: uri.path().trim_end_matches('/').to_string(),
        basic_auth: userinfo.filter(|u| !u.is_empty()).map(basic_auth),
    })
}

/// `Basic base64(user:password)` of percent-encoded userinfo (no password: an empty one).
fn basic_auth(userinfo: &str) -> HeaderValue {
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut credentials: Vec<u8> = percent_encoding::percent_decode_str(user).collect();
    credentials.push(b':');
    credentials.extend(percent_encoding::percent_decode_str(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    // Base64 is always a valid header value.
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugins::metrics::Metrics;

    fn endpoint(url: &str, ttl: Duration) -> Endpoint {
        let parsed = parse_endpoint_url(url).unwrap();
        let template = PeerTemplate {
            tls: false,
            sni: parsed.host.clone(),
            verify: false,
            ca: None,
            http2: false,
            max_h2_streams: 1,
            timeouts: Timeouts {
                connect: Duration::from_secs(1),
                first_byte: Duration::from_secs(1),
                idle: Duration::from_secs(1),
            },
            idle_timeout: Duration::from_secs(1),
        };
        let authority = HeaderValue::from_str(&parsed.authority).unwrap();
        let metrics = Metrics::new("t").unwrap().endpoint("u", url);
        Endpoint::new(parsed, authority, template, ttl, metrics)
    }

    #[tokio::test]
    async fn host_names_are_resolved_again_after_the_ttl() {
        let t0 = Instant::now();
        let ep = endpoint("http://localhost:9", Duration::from_secs(30));
        let first = ep.peer(t0).await.unwrap();
        let Address::Named(named) = &ep.address else {
            panic!("a name")
        };
        let expires = |n: &NamedHost| n.resolved.load_full().unwrap().expires;
        assert_eq!(expires(named), t0 + Duration::from_secs(30));
        let cached = ep.peer(t0 + Duration::from_secs(29)).await.unwrap();
        assert!(Arc::ptr_eq(&first, &cached));
        assert_eq!(
            expires(named),
            t0 + Duration::from_secs(30),
            "no lookup within the ttl"
        );
        let later = t0 + Duration::from_secs(31);
        let again = ep.peer(later).await.unwrap();
        assert_eq!(
            expires(named),
            later + Duration::from_secs(30),
            "looked up again"
        );
        assert!(
            Arc::ptr_eq(&first, &again),
            "same address: same peer, same pool"
        );
    }

    #[tokio::test]
    async fn a_lookup_dropped_midway_does_not_stop_later_ones() {
        let t0 = Instant::now();
        let ep = endpoint("http://localhost:9", Duration::from_secs(30));
        ep.peer(t0).await.unwrap();
        let later = t0 + Duration::from_secs(31);
        // Polled once (the lookup is pending on the blocking pool), then dropped.
        let _ = tokio::time::timeout(Duration::ZERO, ep.peer(later)).await;
        let Address::Named(named) = &ep.address else {
            panic!("a name")
        };
        assert!(
            !named.refreshing.load(Ordering::Acquire),
            "flag handed back"
        );
        ep.peer(later).await.unwrap();
        let expires = named.resolved.load_full().unwrap().expires;
        assert_eq!(expires, later + Duration::from_secs(30), "looked up again");
    }

    #[tokio::test]
    async fn addresses_need_no_lookup_and_unknown_names_fail() {
        let ep = endpoint("http://127.0.0.1:9", Duration::ZERO);
        assert!(matches!(ep.address, Address::Fixed(_)));
        assert!(ep.peer(Instant::now()).await.is_ok());
        let ep = endpoint("http://no-such-host.invalid:9", Duration::ZERO);
        assert!(ep.peer(Instant::now()).await.is_err());
    }

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
        assert!(parse_endpoint_url("http://x:port").is_err());
        assert!(parse_endpoint_url("http://x:99999").is_err());
        let u = parse_endpoint_url("http://[::1]:8001").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8001));
        assert_eq!(parse_endpoint_url("https://[::1]").unwrap().port, 443);
    }

    #[test]
    fn userinfo_is_basic_auth_and_left_out_of_the_url() {
        let u = parse_endpoint_url("http://user:s3cret@127.0.0.1:8001/base").unwrap();
        assert_eq!(u.url, "http://127.0.0.1:8001/base");
        assert_eq!(u.authority, "127.0.0.1:8001");
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8001));
        let auth = u.basic_auth.unwrap();
        // base64("user:s3cret")
        assert_eq!(auth, "Basic dXNlcjpzM2NyZXQ=");
        assert!(auth.is_sensitive());
        assert!(!format!("{auth:?}").contains("dXNl"), "Debug hides it");
        // Percent-encoded characters are decoded; a user alone has an empty password.
        let u = parse_endpoint_url("https://a%40b:p%3Aw@h").unwrap();
        assert_eq!(u.basic_auth.unwrap(), "Basic YUBiOnA6dw==");
        assert_eq!((u.url.as_str(), u.port), ("https://h", 443));
        let u = parse_endpoint_url("http://token@h:1").unwrap();
        assert_eq!(u.basic_auth.unwrap(), "Basic dG9rZW46");
        assert!(parse_endpoint_url("http://h:1")
            .unwrap()
            .basic_auth
            .is_none());
    }

    #[test]
    fn errors_never_quote_a_password() {
        for url in [
            "ftp://user:s3cret@h",
            "http://user:s3cret@h/?q=1",
            "http://user:s3cret@h:port",
            "http://user:s3 cret@h:1",
            "http://user:s3/cret@h:1",
            "user:s3cret@h:1",
            "http://user:s3cret@",
        ] {
            let e = parse_endpoint_url(url).unwrap_err();
            assert!(!e.contains("s3"), "{url}: {e}");
            assert!(e.contains("<redacted>"), "{url}: {e}");
        }
    }
}
