//! Checks of where sluice listens: listen addresses that would share connections, and the
//! upgrade socket a `run --upgrade` process receives the listening sockets on.

use super::errors::Errors;
use super::locate::field_path;
use super::spec::Spec;
use std::net::SocketAddr;

/// The longest path a Unix socket address holds (`sun_path`, less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

pub(super) fn check(errors: &mut Errors, spec: &Spec) {
    check_listeners_apart(errors, spec);
    if let Some(path) = &spec.server.upgrade_socket {
        if !path.starts_with('/') || path.len() > MAX_SOCKET_PATH {
            errors.at(
                &field_path!["server", "upgrade_socket"],
                format!("must be an absolute path of at most {MAX_SOCKET_PATH} bytes"),
            );
        }
    }
}

/// Two listeners on one address would share its connections (or fail to bind): each needs its own.
fn check_listeners_apart(errors: &mut Errors, spec: &Spec) {
    let mut seen: Vec<(SocketAddr, String)> = Vec::new();
    let proxy = spec
        .server
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| (field_path!["server", "listen", i].to_vec(), a));
    let admin = spec
        .admin
        .iter()
        .map(|a| (field_path!["admin", "listen"].to_vec(), &a.listen));
    for (field, text) in proxy.chain(admin) {
        let Ok(addr) = text.parse::<SocketAddr>() else {
            continue;
        };
        if let Some((_, other)) = seen.iter().find(|(a, _)| overlap(*a, addr)) {
            errors.at(
                &field,
                format!("`{text}` also takes connections for {other}: every listener needs its own address"),
            );
        }
        seen.push((addr, super::locate::render(&field)));
    }
}

/// Whether two listen addresses would take the same connections: the same port on the same
/// IP, or on a wildcard address that covers the other.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |w: SocketAddr, other: SocketAddr| {
        // [::] also takes IPv4 connections on Linux (IPV6_V6ONLY off by default).
        w.ip().is_unspecified() && (w.is_ipv6() || other.is_ipv4())
    };
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn overlapping_addresses() {
        assert!(overlap(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlap(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(overlap(addr("127.0.0.1:80"), addr("0.0.0.0:80")));
        assert!(overlap(addr("[::]:80"), addr("127.0.0.1:80")));
        assert!(overlap(addr("[::1]:80"), addr("[::]:80")));
        assert!(!overlap(addr("0.0.0.0:80"), addr("[::1]:80")));
        assert!(!overlap(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlap(addr("127.0.0.1:80"), addr("127.0.0.1:81")));
        assert!(!overlap(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
    }
}
