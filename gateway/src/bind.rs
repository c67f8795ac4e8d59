//! Listening sockets are bound before the server starts, so a taken port fails the start with
//! one clear line (instead of Pingora's bind retries and a panicked listener task in a process
//! that stays up), and readiness can say when every listener is accepting.
//!
//! Each socket is handed to Pingora through its table of listening fds (the table a graceful
//! upgrade also fills), keyed by the configured address, so Pingora builds its listener on our
//! socket instead of binding again. [`OnBound`] does that when the service starts, counts the
//! service as ready, and ends the process if the service's task panics.

use async_trait::async_trait;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// A socket bound and listening on a configured address.
pub struct BoundSocket {
    /// The address as configured: the key Pingora looks the socket up by.
    addr: String,
    fd: OwnedFd,
}

/// Binds `addr` (SO_REUSEADDR, no SO_REUSEPORT: a port another process listens on is refused).
/// `field` names the setting in the error, e.g. `server.listen`.
pub fn bind(addr: &str, field: &str) -> Result<BoundSocket, String> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{field}: `{addr}` is not an address like 127.0.0.1:8080"))?;
    let listener = TcpListener::bind(parsed).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "the address is already in use".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        format!("cannot listen on {addr} ({field}): {why}")
    })?;
    // Pingora registers the socket with tokio as it is, which needs it non-blocking.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr} ({field}): {e}"))?;
    Ok(BoundSocket {
        addr: addr.to_string(),
        fd: OwnedFd::from(listener),
    })
}

/// Whether every listener is accepting and the process is not draining: what `/readyz` says.
#[derive(Debug)]
pub struct Readiness {
    expected: usize,
    started: AtomicUsize,
    draining: AtomicBool,
}

impl Readiness {
    /// Readiness over `expected` listening services.
    #[must_use]
    pub fn new(expected: usize) -> Self {
        Readiness {
            expected,
            started: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    #[must_use]
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.started.load(Ordering::Acquire) >= self.expected
    }

    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    fn started(&self) {
        self.started.fetch_add(1, Ordering::AcqRel);
    }

    fn stopped(&self) {
        self.started.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a service learns that the server shuts down.
#[derive(Debug)]
pub enum Lifetime {
    /// Stops accepting when Pingora's shutdown starts (the proxy).
    Server,
    /// Stops on its own watch, so the admin can answer `/readyz` 503 while the proxy drains.
    Own(watch::Receiver<bool>),
}

/// A listening service that runs on sockets bound in advance.
pub struct OnBound<S> {
    name: String,
    inner: Option<S>,
    sockets: Vec<BoundSocket>,
    readiness: Arc<Readiness>,
    lifetime: Lifetime,
}

impl<S> OnBound<S> {
    #[must_use]
    pub fn new(
        name: &str,
        inner: S,
        sockets: Vec<BoundSocket>,
        readiness: Arc<Readiness>,
        lifetime: Lifetime,
    ) -> Self {
        OnBound {
            name: name.to_string(),
            inner: Some(inner),
            sockets,
            readiness,
            lifetime,
        }
    }
}

#[async_trait]
impl<S: Service + 'static> Service for OnBound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if let Some(table) = &fds {
            let mut table = table.lock();
            for socket in self.sockets.drain(..) {
                // An address already in the table was inherited from the old process.
                if table.get(&socket.addr).is_none() {
                    let fd = socket.fd.into_raw_fd();
                    table.add(socket.addr, fd);
                }
            }
        }
        let shutdown = match &self.lifetime {
            Lifetime::Server => shutdown,
            Lifetime::Own(watch) => watch.clone(),
        };
        self.readiness.started();
        let task = tokio::spawn(async move {
            inner.start_service(fds, shutdown, listeners_per_fd).await;
        });
        let result = task.await;
        self.readiness.stopped();
        if let Err(e) = result {
            if e.is_panic() {
                tracing::error!(service = %self.name, "listener failed; exiting");
                crate::access_log::flush(std::time::Duration::from_millis(500));
                std::process::exit(1);
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn threads(&self) -> Option<usize> {
        self.inner.as_ref().and_then(Service::threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.as_ref().and_then(Service::listen_addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_one_clear_error() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().to_string();
        let err = bind(&taken, "server.listen").err().unwrap();
        assert_eq!(
            err,
            format!("cannot listen on {taken} (server.listen): the address is already in use")
        );
        assert!(bind("127.0.0.1:0", "admin.listen").is_ok());
    }

    #[test]
    fn readiness_needs_every_listener_and_no_drain() {
        let r = Readiness::new(2);
        assert!(!r.is_ready());
        r.started();
        assert!(!r.is_ready());
        r.started();
        assert!(r.is_ready());
        r.start_draining();
        assert!(!r.is_ready());
        assert!(r.is_draining());
    }
}
