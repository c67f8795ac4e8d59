//! Checks of where sluice listens: listen addresses that would share connections, and the
//! upgrade socket a `run --upgrade` process receives the listening sockets on.

use super::load::Errors;
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
        if let Some((_, other)) = seen.iter().find(|(a, _)| crate::bind::overlap(*a, addr)) {
            errors.at(
                &field,
                format!("`{text}` also takes connections for {other}: every listener needs its own address"),
            );
        }
        seen.push((addr, super::locate::render(&field)));
    }
}
