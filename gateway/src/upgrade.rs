//! Where a `run --upgrade` process waits for the running one's listening sockets.
//!
//! Pingora makes the socket world-writable, so its directory must not be: whoever can reach
//! the socket can take the listeners (and with them the clients' requests) or hand the new
//! process sockets of their own. The default therefore lives in a directory only this user can
//! enter, named per set of listen addresses so instances never take each other's sockets.

use crate::config::spec::ServerSpec;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::Path;

/// The configured upgrade socket, or the default in a private directory (created if missing,
/// refused if another user can enter it).
pub fn socket_path(server: &ServerSpec) -> Result<String, String> {
    if let Some(path) = &server.upgrade_socket {
        return Ok(path.clone());
    }
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .map_err(|e| format!("upgrade socket: cannot tell this process's user: {e}"))?;
    let dir = std::env::temp_dir().join(format!("sluice-{uid}"));
    private_dir(&dir, uid)?;
    let hash = xxhash_rust::xxh3::xxh3_64(server.listen.join(",").as_bytes());
    Ok(dir
        .join(format!("upgrade-{hash:016x}.sock"))
        .to_string_lossy()
        .into_owned())
}

/// Creates `dir` with mode 0700, or checks that an existing one is ours and private.
fn private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    let refuse = |why: &str| {
        format!(
            "upgrade socket: {} {why}; set server.upgrade_socket to a path in a private directory",
            dir.display()
        )
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(refuse(&format!("cannot be created: {e}"))),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(&e.to_string()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(refuse("is not a directory only this user can enter"));
    }
    Ok(())
}

/// Whether a `run --upgrade` process waits on `path` (it creates the socket when it starts
/// waiting, and it is removed once the sockets are taken over or the wait gave up).
#[must_use]
pub fn new_process_waits(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// After the take-over: the socket is removed, so a later SIGQUIT to this process finds no
/// stale one and is not mistaken for an upgrade.
pub fn taken_over(path: &str) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!(socket = %path, "removing the upgrade socket: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_is_private() {
        let base = tempfile::tempdir().unwrap();
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let dir = base.path().join("sluice-x");
        private_dir(&dir, uid).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Existing and private: fine again; opened to others: refused.
        private_dir(&dir, uid).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let err = private_dir(&dir, uid).unwrap_err();
        assert!(err.contains("only this user"), "{err}");
    }

    #[test]
    fn only_a_socket_counts_as_a_waiting_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.sock");
        let path = path.to_str().unwrap();
        assert!(!new_process_waits(path));
        std::fs::write(path, b"stale").unwrap();
        assert!(!new_process_waits(path));
        std::fs::remove_file(path).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        assert!(new_process_waits(path));
        taken_over(path);
        assert!(!new_process_waits(path));
    }
}
