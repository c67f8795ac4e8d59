//! The live policy: an `ArcSwap<Policy>` that every request loads once, and the reload path
//! (file watcher, SIGHUP, admin endpoint) that validates, compiles and swaps it. A bad file
//! leaves the running policy in place.

use crate::config::{compile, load_file, ConfigErrors, Policy, SharedState};
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
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

/// Reloads when what the config path leads to changes: an edit in place, a rename over it, or
/// a swap of a symlink on the way to it (a Kubernetes ConfigMap update renames `..data`).
/// Watches the directory of every link on that way and of the file itself, and reloads only
/// when the resolved file or its bytes differ from the last look, so unrelated writes there
/// (a log file) cost nothing.
pub fn watch_file(store: Arc<PolicyStore>) -> notify::Result<()> {
    let path = store.path.clone();
    let relevant: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    let (tx, rx) = mpsc::channel();
    let filter = Arc::clone(&relevant);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = filter.lock().unwrap_or_else(|p| p.into_inner());
        if !event.kind.is_access() && event.paths.iter().any(|p| relevant.contains(p)) {
            let _ = tx.send(());
        }
    })?;
    let mut watched = HashSet::new();
    follow(&mut watcher, &path, &mut watched, &relevant)?;
    let mut seen = Seen::of(&path);
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                while rx.recv_timeout(DEBOUNCE).is_ok() {}
                // A swap may have moved the file to a new directory: watch where it is now.
                if let Err(e) = follow(&mut watcher, &path, &mut watched, &relevant) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot watch the config file");
                }
                let now = Seen::of(&path);
                if now != seen {
                    seen = now;
                    let _ = store.reload("file");
                }
            }
        })?;
    Ok(())
}

/// Where the config path leads and what the file there holds, as last looked at.
#[derive(PartialEq, Eq)]
struct Seen {
    target: Option<PathBuf>,
    bytes: Option<Vec<u8>>,
}

impl Seen {
    fn of(path: &Path) -> Self {
        Seen {
            target: std::fs::canonicalize(path).ok(),
            bytes: std::fs::read(path).ok(),
        }
    }
}

/// Points the watcher at the directories on the way to `path` and publishes the entries there
/// whose change can change the file.
fn follow(
    watcher: &mut impl Watcher,
    path: &Path,
    watched: &mut HashSet<PathBuf>,
    relevant: &Mutex<HashSet<PathBuf>>,
) -> notify::Result<()> {
    let entries = resolution_entries(path);
    let dirs: HashSet<PathBuf> = entries
        .iter()
        .filter_map(|e| e.parent().map(Path::to_path_buf))
        .collect();
    for gone in watched.difference(&dirs) {
        // Fails when the directory was deleted, which already ended its watch.
        let _ = watcher.unwatch(gone);
    }
    for dir in dirs.difference(watched) {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    *watched = dirs;
    *relevant.lock().unwrap_or_else(|p| p.into_inner()) = entries;
    Ok(())
}

/// Most links followed while resolving the config path (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// The directory entries `path` goes through: each symlink met while resolving it (the path
/// itself, `..data`, a linked parent directory) and the file it ends at. Absolute, and
/// relative to resolved directories, so they match the paths the watcher reports.
fn resolution_entries(path: &Path) -> HashSet<PathBuf> {
    let mut entries = HashSet::new();
    let absolute =
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path));
    let mut todo: VecDeque<OsString> = VecDeque::new();
    let mut at = PathBuf::from("/");
    push_front(&mut todo, &mut at, &absolute);
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let next = at.join(&name);
        match std::fs::read_link(&next) {
            Ok(target) if links < MAX_LINKS => {
                links += 1;
                entries.insert(next);
                push_front(&mut todo, &mut at, &target);
            }
            _ => at = next,
        }
    }
    entries.insert(at);
    entries
}

/// Queues `path`'s components ahead of the rest; an absolute path restarts at the root.
fn push_front(todo: &mut VecDeque<OsString>, at: &mut PathBuf, path: &Path) {
    let mut names = Vec::new();
    for part in path.components() {
        match part {
            Component::RootDir => {
                *at = PathBuf::from("/");
                names.clear();
            }
            Component::Normal(name) => names.push(name.to_os_string()),
            Component::ParentDir if names.pop().is_none() => {
                at.pop();
            }
            Component::ParentDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    for name in names.into_iter().rev() {
        todo.push_front(name);
    }
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
