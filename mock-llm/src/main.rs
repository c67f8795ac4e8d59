//! mock-llm: an OpenAI-compatible upstream for sluice's tests, benches and demos.
//!
//! Replies are derived from the request (the SHA-256 of the body appears in the reply and in
//! `x-mock-body-sha256`), so a test can tell exactly what arrived. Knobs are set on the
//! command line and overridden per request by `x-mock-*` headers.

mod knobs;
mod replies;

use bytes::Bytes;
use clap::Parser;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use knobs::{Defaults, Knobs};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// An OpenAI-compatible mock LLM server.
#[derive(Parser, Debug)]
#[command(name = "mock-llm", version, about)]
pub struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8001 (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// Name reported in `x-mock-instance`, to tell instances apart.
    #[arg(long, default_value = "mock")]
    name: String,
    #[command(flatten)]
    defaults: Defaults,
    /// PEM certificate chain: serve HTTPS instead of HTTP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<String>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    tls_key: Option<String>,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Counters behind `GET /mock/stats`.
#[derive(Default)]
pub struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
}

pub struct State {
    name: String,
    defaults: Defaults,
    stats: Stats,
}

pub type Body = BoxBody<Bytes, std::io::Error>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "mock-llm {} listening on {}://{}",
        args.name,
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    let state = Arc::new(State {
        name: args.name,
        defaults: args.defaults,
        stats: Stats::default(),
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: the open connections still finish, so wait for
                // some to close instead of exiting under a benchmark's load.
                eprintln!("mock-llm {}: accept failed: {e}; retrying", state.name);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.stats.connections.fetch_add(1, Ordering::Relaxed);
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, Arc::clone(&state)));
            // HTTP/1.1, or HTTP/2 when the client opens with the h2 preface (h2c).
            let http =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                    Err(_) => return,
                },
                None => http.serve_connection(TokioIo::new(stream), svc).await,
            };
        });
    }
}

fn tls_acceptor(cert: &str, key: &str) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
        .ok_or_else(|| invalid(format!("{key}: no private key")))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| invalid(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Body>, std::convert::Infallible> {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let knobs = Knobs::from_request(&state.defaults, req.headers());
    Ok(replies::respond(req, &state, knobs).await)
}
