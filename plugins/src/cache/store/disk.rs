//! L3: entries in a local file that survives restarts, bounded by the bytes of the encoded
//! entries it holds (oldest written are evicted first). redb is a well-kept, pure-Rust,
//! crash-safe embedded store (copy-on-write B-trees, ACID transactions): a crash costs at most
//! the last batch, never the file. Every call here blocks; the store runs them on its
//! runtime's blocking threads, never on a request's thread.

use super::queue::{Change, Queue};
use super::{DiskConfig, Lookup};
use crate::cache::{CacheKey, Entry};
use crate::metrics::TierMetrics;
use crate::outage::Outage;
use prometheus::IntCounter;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use std::sync::Arc;
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
/// The database file inside the configured directory.
const FILE_NAME: &str = "cache.redb";

pub(super) struct DiskTier {
    db: Database,
    max_bytes: u64,
    metrics: TierMetrics,
    outage: Outage,
}

/// What the meta table keeps.
#[derive(Debug, Clone, Copy)]
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
    /// Opens (or creates) `<path>/cache.redb`; an error names the path.
    pub(super) fn open(config: &DiskConfig, metrics: TierMetrics) -> Result<DiskTier, String> {
        let dir = &config.path;
        std::fs::create_dir_all(dir).map_err(|e| format!("disk path {}: {e}", dir.display()))?;
        let file = dir.join(FILE_NAME);
        let named = |e: redb::Error| format!("disk file {}: {e}", file.display());
        let db = Database::create(&file).map_err(|e| named(e.into()))?;
        let totals = create_tables(&db).map_err(named)?;
        let tier = DiskTier {
            db,
            max_bytes: config.max_bytes,
            outage: Outage::new("cache", "disk", metrics.errors.clone(), false),
            metrics,
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
        let found = || -> Result<Option<Option<Entry>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let entries = txn.open_table(ENTRIES)?;
            let value = entries.get(key.0)?;
            Ok(value.map(|v| Entry::decode(v.value().1)))
        };
        match found() {
            Ok(None) => {
                self.outage.recovered();
                Lookup::Miss
            }
            Ok(Some(Some(entry))) if entry.is_fresh(now_ms) => {
                self.outage.recovered();
                Lookup::Hit(entry)
            }
            Ok(Some(_)) => Lookup::Discard,
            Err(e) => {
                self.outage.failed(1, "read", &e);
                Lookup::Miss
            }
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
        let run = || -> Result<(Totals, T), redb::Error> {
            let txn = self.db.begin_write()?;
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
        };
        match run() {
            Ok((totals, out)) => {
                self.outage.recovered();
                self.show(totals);
                Some(out)
            }
            Err(e) => {
                self.outage.failed(ops, what, &e);
                None
            }
        }
    }

    fn show(&self, totals: Totals) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics.entries.set(clamp(totals.count));
        self.metrics.bytes.set(clamp(totals.bytes));
    }
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
