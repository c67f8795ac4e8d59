//! L3: entries in a local file that survives restarts, bounded by the bytes of the encoded
//! entries it holds (oldest written are evicted first). redb is a well-kept, pure-Rust,
//! crash-safe embedded store (copy-on-write B-trees, ACID transactions): a crash costs at most
//! the last batch, never the file. A file damaged otherwise (disk faults, outside writes) is
//! set aside and replaced by an empty one, at open or when met, never a reason to stop. Every
//! call here blocks; the store runs them on its runtime's blocking threads, never on a
//! request's thread.

use super::damage::{quietly, set_aside};
use super::queue::{Change, Queue};
use super::types::{DiskConfig, Lookup};
use crate::cache::{CacheKey, Entry};
use crate::metrics::TierMetrics;
use crate::outage::Outage;
use prometheus::IntCounter;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::runtime::Handle;

/// Entry key → (write sequence, encoded entry).
const ENTRIES: TableDefinition<u128, (u64, &[u8])> = TableDefinition::new("entries");
/// (write sequence, entry key) → (encoded size, route): eviction order and purge by route.
const BY_AGE: TableDefinition<(u64, u128), (u64, &str)> = TableDefinition::new("by_age");
/// The running totals below, so reopening a file needs no scan.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const STORED_BYTES: &str = "stored_bytes";
const ENTRY_COUNT: &str = "entry_count";
const NEXT_SEQUENCE: &str = "next_sequence";
/// How often, and how long, a file another process holds is tried again.
const HELD_RETRY: Duration = Duration::from_millis(250);
const HELD_PATIENCE: Duration = Duration::from_secs(600);
/// The database file inside the configured directory.
const FILE_NAME: &str = "cache.redb";

pub(super) struct DiskTier {
    current: RwLock<Current>,
    file: PathBuf,
    max_bytes: u64,
    metrics: TierMetrics,
    /// Damaged files replaced by empty ones.
    resets: IntCounter,
    outage: Outage,
    /// The file is held by another process (the old one during a binary upgrade): the tier
    /// is off, without counting errors, until [`DiskTier::wait_for_file`] opens it.
    held_elsewhere: AtomicBool,
}

/// The open file; operations share it, replacing it takes it whole.
struct Current {
    /// `None` once a damaged file could not be replaced: the tier is off until restart.
    db: Option<Database>,
    /// Bumped by each replacement, so damage met by several operations at once replaces once.
    generation: u64,
}

/// Why the file in place cannot be used.
enum Unusable {
    /// Its content: set it aside and start over.
    Damaged(String),
    /// Anything else (permissions, another process holds it): an error naming the path.
    Failed(redb::Error),
}

/// What the meta table keeps.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    bytes: u64,
    count: u64,
    next_sequence: u64,
}

impl Totals {
    /// Accounts for one entry of `size` bytes leaving the tier.
    fn forget(&mut self, size: u64) {
        self.bytes = self.bytes.saturating_sub(size);
        self.count = self.count.saturating_sub(1);
    }
}

/// The tables a write transaction changes (the meta table is handled by `transact`).
struct Tables<'t> {
    entries: Table<'t, u128, (u64, &'static [u8])>,
    by_age: Table<'t, (u64, u128), (u64, &'static str)>,
}

impl DiskTier {
    /// Opens (or creates) `<path>/cache.redb`; a damaged file is set aside for an empty one
    /// (counted in `resets`); any other failure is an error naming the path.
    pub(super) fn open(
        config: &DiskConfig,
        metrics: TierMetrics,
        resets: IntCounter,
    ) -> Result<DiskTier, String> {
        let dir = &config.path;
        std::fs::create_dir_all(dir).map_err(|e| format!("disk path {}: {e}", dir.display()))?;
        let file = dir.join(FILE_NAME);
        let (db, totals) = match open_file(&file) {
            Ok((db, totals)) => (Some(db), totals),
            Err(Unusable::Damaged(reason)) => {
                let (db, totals) = start_over(&file, &reason, &resets)?;
                (Some(db), totals)
            }
            Err(Unusable::Failed(redb::Error::DatabaseAlreadyOpen)) => {
                tracing::info!(
                    tier = "disk",
                    "cache: disk file {} is held by another process (an upgrade under way?); the disk tier starts when it is free",
                    file.display()
                );
                (None, Totals::default())
            }
            Err(Unusable::Failed(e)) => return Err(format!("disk file {}: {e}", file.display())),
        };
        let tier = DiskTier {
            held_elsewhere: AtomicBool::new(db.is_none()),
            current: RwLock::new(Current { db, generation: 0 }),
            file,
            max_bytes: config.max_bytes,
            outage: Outage::new("cache", "disk", metrics.errors.clone(), false),
            metrics,
            resets,
        };
        tier.show(totals);
        Ok(tier)
    }

    /// Starts this tier's background writer on `handle`; each batch is one blocking
    /// transaction on the runtime's blocking threads.
    pub(super) fn writer(
        self: &Arc<Self>,
        handle: &Handle,
        capacity: usize,
        errors: IntCounter,
    ) -> Queue {
        let (apply_tier, purge_tier) = (Arc::clone(self), Arc::clone(self));
        Queue::spawn(
            handle,
            capacity,
            errors,
            move |changes| {
                let tier = Arc::clone(&apply_tier);
                async move {
                    let _ = tokio::task::spawn_blocking(move || tier.apply(changes)).await;
                }
            },
            move |route| {
                let tier = Arc::clone(&purge_tier);
                async move {
                    tokio::task::spawn_blocking(move || tier.purge(route.as_deref()))
                        .await
                        .unwrap_or(0)
                }
            },
        )
    }

    /// Looks a key up; an expired or undecodable value is `Discard`.
    pub(super) fn read(&self, key: CacheKey, now_ms: u64) -> Lookup {
        let found = self.run("read", 1, |db| {
            let txn = db.begin_read()?;
            let entries = txn.open_table(ENTRIES)?;
            let value = entries.get(key.0)?;
            Ok(value.map(|v| Entry::decode(v.value().1)))
        });
        match found {
            Some(Some(Some(entry))) if entry.is_fresh(now_ms) => Lookup::Hit(entry),
            Some(Some(_)) => Lookup::Discard,
            Some(None) | None => Lookup::Miss,
        }
    }

    /// Writes a batch in one transaction, then evicts the oldest entries beyond the bound.
    pub(super) fn apply(&self, changes: Vec<Change>) {
        let evicted = self.transact("write", changes.len() as u64, |t, totals| {
            for change in &changes {
                match change {
                    Change::Put { key, entry, now_ms } => {
                        remove(t, totals, key.0)?;
                        let encoded = entry.encode();
                        let size = encoded.len() as u64;
                        if !entry.is_fresh(*now_ms) || size > self.max_bytes {
                            continue;
                        }
                        let sequence = totals.next_sequence;
                        totals.next_sequence += 1;
                        t.entries.insert(key.0, (sequence, encoded.as_slice()))?;
                        t.by_age
                            .insert((sequence, key.0), (size, entry.route.as_str()))?;
                        totals.bytes += size;
                        totals.count += 1;
                    }
                    Change::Remove { key, .. } => remove(t, totals, key.0)?,
                }
            }
            let mut evicted = 0;
            while totals.bytes > self.max_bytes {
                let Some((age, size)) = t
                    .by_age
                    .pop_first()?
                    .map(|(age, value)| (age.value(), value.value().0))
                else {
                    break;
                };
                t.entries.remove(age.1)?;
                totals.forget(size);
                evicted += 1;
            }
            Ok(evicted)
        });
        if let Some(evicted) = evicted {
            self.metrics.evictions.inc_by(evicted);
        }
    }

    /// Removes all entries or one route's; returns how many.
    pub(super) fn purge(&self, route: Option<&str>) -> u64 {
        self.transact("purge", 1, |t, totals| {
            let mut doomed = Vec::new();
            t.by_age.retain(|(_, key), (size, entry_route)| {
                let matches = route.is_none_or(|r| r == entry_route);
                if matches {
                    doomed.push((key, size));
                }
                !matches
            })?;
            for (key, size) in &doomed {
                t.entries.remove(*key)?;
                totals.forget(*size);
            }
            Ok(doomed.len() as u64)
        })
        .unwrap_or(0)
    }

    /// Runs `body` in one write transaction with the totals read before and written after;
    /// a failure is counted as `ops` failed operations of kind `what` and gives `None`.
    fn transact<T>(
        &self,
        what: &str,
        ops: u64,
        body: impl FnOnce(&mut Tables<'_>, &mut Totals) -> Result<T, redb::Error>,
    ) -> Option<T> {
        let (totals, out) = self.run(what, ops, |db| {
            let txn = db.begin_write()?;
            let done = {
                let mut tables = Tables {
                    entries: txn.open_table(ENTRIES)?,
                    by_age: txn.open_table(BY_AGE)?,
                };
                let mut meta = txn.open_table(META)?;
                let mut totals = read_totals(&meta)?;
                let out = body(&mut tables, &mut totals)?;
                write_totals(&mut meta, totals)?;
                (totals, out)
            };
            txn.commit()?;
            Ok(done)
        })?;
        self.show(totals);
        Some(out)
    }

    /// Runs `op` on the open file. A failure is counted as `ops` failed operations of kind
    /// `what` and gives `None`; damage (a corruption error, or a panic inside redb) also
    /// replaces the file with an empty one.
    fn run<T>(
        &self,
        what: &str,
        ops: u64,
        op: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Option<T> {
        let (outcome, generation) = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            let Some(db) = &current.db else {
                if !self.held_elsewhere.load(Ordering::Acquire) {
                    self.metrics.errors.inc_by(ops);
                }
                return None;
            };
            (quietly(|| op(db)), current.generation)
        };
        let damage = match outcome {
            Ok(Ok(out)) => {
                self.outage.recovered();
                return Some(out);
            }
            Ok(Err(e)) => match classify(e) {
                Unusable::Damaged(reason) => reason,
                Unusable::Failed(e) => {
                    self.outage.failed(ops, what, &e);
                    return None;
                }
            },
            Err(panic) => panic,
        };
        self.metrics.errors.inc_by(ops);
        self.replace(generation, &format!("{what}: {damage}"));
        None
    }

    /// Sets the damaged file aside for an empty one, unless that was done since `generation`.
    fn replace(&self, generation: u64, reason: &str) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.generation != generation {
            return;
        }
        current.generation += 1;
        if let Some(old) = current.db.take() {
            // Closing what a panic left behind may panic again; it is gone either way.
            let _ = quietly(move || drop(old));
        }
        match start_over(&self.file, reason, &self.resets) {
            Ok((db, totals)) => {
                current.db = Some(db);
                self.outage.clear();
                self.show(totals);
            }
            Err(e) => tracing::warn!(tier = "disk", "{e}; the disk tier is off until restart"),
        }
    }

    /// When another process holds the file, opens it once that process lets go (it exits at
    /// the end of its drain), trying every [`HELD_RETRY`] for at most [`HELD_PATIENCE`].
    pub(super) fn wait_for_file(self: &Arc<Self>, handle: &Handle) {
        if !self.held_elsewhere.load(Ordering::Acquire) {
            return;
        }
        let tier = Arc::clone(self);
        handle.spawn(async move {
            let deadline = tokio::time::Instant::now() + HELD_PATIENCE;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(HELD_RETRY).await;
                let file = tier.file.clone();
                let Ok(opened) = tokio::task::spawn_blocking(move || open_file(&file)).await else {
                    break;
                };
                match opened {
                    Err(Unusable::Failed(redb::Error::DatabaseAlreadyOpen)) => continue,
                    Ok((db, totals)) => {
                        let mut current =
                            tier.current.write().unwrap_or_else(PoisonError::into_inner);
                        current.db = Some(db);
                        tier.show(totals);
                        tier.held_elsewhere.store(false, Ordering::Release);
                        tracing::info!(
                            tier = "disk",
                            "cache: disk file {} opened",
                            tier.file.display()
                        );
                        return;
                    }
                    Err(Unusable::Damaged(reason)) => {
                        let generation = tier
                            .current
                            .read()
                            .unwrap_or_else(PoisonError::into_inner)
                            .generation;
                        tier.held_elsewhere.store(false, Ordering::Release);
                        tier.replace(generation, &reason);
                        return;
                    }
                    Err(Unusable::Failed(e)) => {
                        tracing::warn!(
                            tier = "disk",
                            "cache: disk file {}: {e}; the disk tier is off until restart",
                            tier.file.display()
                        );
                        break;
                    }
                }
            }
            tier.held_elsewhere.store(false, Ordering::Release);
        });
    }

    fn show(&self, totals: Totals) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.entries.set(clamp(totals.count));
        self.metrics.bytes.set(clamp(totals.bytes));
    }
}

/// Opens (or creates) `file` and its tables; returns the totals it holds.
fn open_file(file: &Path) -> Result<(Database, Totals), Unusable> {
    let opened = quietly(|| -> Result<_, redb::Error> {
        let db = Database::create(file)?;
        let totals = create_tables(&db)?;
        Ok((db, totals))
    });
    match opened {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(e)) => Err(classify(e)),
        Err(panic) => Err(Unusable::Damaged(panic)),
    }
}

/// Sets the damaged `file` aside and creates an empty one in its place; counts and logs it.
fn start_over(
    file: &Path,
    reason: &str,
    resets: &IntCounter,
) -> Result<(Database, Totals), String> {
    let failed = |e: &dyn std::fmt::Display| {
        format!(
            "disk file {} is damaged ({reason}) and cannot be replaced: {e}",
            file.display()
        )
    };
    let aside = set_aside(file).map_err(|e| failed(&e))?;
    resets.inc();
    tracing::warn!(
        tier = "disk",
        "cache: disk file {} is damaged ({reason}); set aside as {}, starting empty",
        file.display(),
        aside.display()
    );
    match open_file(file) {
        Ok(opened) => Ok(opened),
        Err(Unusable::Damaged(e)) => Err(failed(&e)),
        Err(Unusable::Failed(e)) => Err(failed(&e)),
    }
}

/// Whether an error says the file's content is unusable, rather than its access.
fn classify(e: redb::Error) -> Unusable {
    use redb::Error;
    match e {
        Error::Corrupted(_)
        | Error::UpgradeRequired(_)
        | Error::RepairAborted
        | Error::TransactionPoisoned
        | Error::TableTypeMismatch { .. }
        | Error::TableIsMultimap(_)
        | Error::TypeDefinitionChanged { .. }
        | Error::LockPoisoned(_) => Unusable::Damaged(e.to_string()),
        Error::Io(ref io) if damaged_io(io) => Unusable::Damaged(e.to_string()),
        e => Unusable::Failed(e),
    }
}

/// redb reports a file that is not a database, or shorter than its header says, as I/O.
fn damaged_io(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
    )
}

/// Creates the tables of a new file and returns the totals of an existing one.
fn create_tables(db: &Database) -> Result<Totals, redb::Error> {
    let txn = db.begin_write()?;
    let totals = {
        txn.open_table(ENTRIES)?;
        txn.open_table(BY_AGE)?;
        read_totals(&txn.open_table(META)?)?
    };
    txn.commit()?;
    Ok(totals)
}

/// Removes `key` if stored, keeping the index and totals in step.
fn remove(t: &mut Tables<'_>, totals: &mut Totals, key: u128) -> Result<(), redb::Error> {
    let old = t
        .entries
        .remove(key)?
        .map(|v| (v.value().0, v.value().1.len() as u64));
    if let Some((sequence, size)) = old {
        t.by_age.remove((sequence, key))?;
        totals.forget(size);
    }
    Ok(())
}

fn read_totals(meta: &impl ReadableTable<&'static str, u64>) -> Result<Totals, redb::Error> {
    let get =
        |name: &str| -> Result<u64, redb::Error> { Ok(meta.get(name)?.map_or(0, |v| v.value())) };
    Ok(Totals {
        bytes: get(STORED_BYTES)?,
        count: get(ENTRY_COUNT)?,
        next_sequence: get(NEXT_SEQUENCE)?,
    })
}

fn write_totals(meta: &mut Table<&str, u64>, totals: Totals) -> Result<(), redb::Error> {
    meta.insert(STORED_BYTES, totals.bytes)?;
    meta.insert(ENTRY_COUNT, totals.count)?;
    meta.insert(NEXT_SEQUENCE, totals.next_sequence)?;
    Ok(())
}
