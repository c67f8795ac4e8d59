//! The live policy: an `ArcSwap<Policy>` that every request loads once, and the reload path
//! (file watcher, SIGHUP, admin endpoint) that validates, compiles and swaps it. A bad file
//! leaves the running policy in place.

use crate::config::{compile, load_file, ConfigErrors, Policy, SharedState};
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Holds the running policy and knows how to rebuild it.
pub struct PolicyStore {
    current: ArcSwap<Policy>,
    shared: Arc<SharedState>,
    path: PathBuf,
    reloading: Mutex<()>,
}

impl PolicyStore {
    #[must_use]
    pub fn new(path: PathBuf, policy: Policy, shared: Arc<SharedState>) -> Self {
        PolicyStore {
            current: ArcSwap::from_pointee(policy),
            shared,
            path,
            reloading: Mutex::new(()),
        }
    }

    /// The snapshot a request keeps from start to end.
    #[must_use]
    pub fn load(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    #[must_use]
    pub fn shared(&self) -> &Arc<SharedState> {
        &self.shared
    }

    /// Re-reads the file; on success swaps the policy, on failure keeps the old one.
    pub fn reload(&self, trigger: &str) -> Result<(), ConfigErrors> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = load_file(&self.path).and_then(|loaded| compile(&loaded, &self.shared));
        self.shared.metrics.reload(result.is_ok());
        match result {
            Ok(policy) => {
                let old = self.current.load();
                let changed = |key: &str| old.redacted.get(key) != policy.redacted.get(key);
                if changed("server") || changed("admin") {
                    tracing::warn!(
                        trigger,
                        "server/admin settings changed: they take effect on restart"
                    );
                }
                // The tiers are opened once at start (they hold connections and files).
                if changed("cache")
                    || changed("redis")
                    || old.cache_tiers.is_some() != policy.cache_tiers.is_some()
                {
                    tracing::warn!(
                        trigger,
                        "cache tier settings changed: they take effect on restart"
                    );
                }
                if old.limits_redis != policy.limits_redis {
                    tracing::warn!(
                        trigger,
                        "shared limits' redis changed: it takes effect on restart (until then shared limits use what was connected at start, or local buckets)"
                    );
                }
                self.current.store(Arc::new(policy));
                tracing::info!(trigger, file = %self.path.display(), "config reloaded");
                Ok(())
            }
            Err(errors) => {
                tracing::error!(
                    trigger,
                    "config reload rejected, keeping the running policy:\n{errors}"
                );
                Err(errors)
            }
        }
    }
}

/// How long the file must be quiet before a reload: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Reloads when the file changes. Watches the directory, since editors replace files by rename.
pub fn watch_file(store: Arc<PolicyStore>) -> notify::Result<()> {
    let path = store.path.clone();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access()
                && event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
            {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            while rx.recv().is_ok() {
                while rx.recv_timeout(DEBOUNCE).is_ok() {}
                let _ = store.reload("file");
            }
        })?;
    Ok(())
}

/// Reloads on SIGHUP.
pub fn watch_sighup(store: Arc<PolicyStore>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                let _ = store.reload("sighup");
            }
        })?;
    Ok(())
}
