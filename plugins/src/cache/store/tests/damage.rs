//! A damaged disk file, found at open or under the running tier: it is set aside, the tier
//! starts empty and serves, the reset is counted once, and nothing panics.

use super::*;
use std::path::{Path, PathBuf};

/// Entries a filled file holds.
const STORED: u64 = 60;

/// Fills a disk tier in `dir` with [`STORED`] entries of ~2 KB and closes it; returns them.
async fn filled(dir: &Path) -> Vec<Arc<Entry>> {
    let (store, _) = open(&config(None, Some(dir)));
    let entries: Vec<_> = (0..STORED)
        .map(|n| entry("chat", 2000 + n as usize, now(), 600_000))
        .collect();
    for (n, e) in entries.iter().enumerate() {
        store.put(key(n as u64), Arc::clone(e));
    }
    store.flush().await;
    entries
}

/// `len` bytes that are not a database.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn file(dir: &Path) -> PathBuf {
    dir.join("cache.redb")
}

/// Overwrites the middle half of the file with noise.
fn scribble_middle(path: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let size = std::fs::metadata(path).expect("file").len();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    f.seek(SeekFrom::Start(size / 4)).expect("seek");
    f.write_all(&noise(size as usize / 2, size))
        .expect("scribble");
    f.sync_all().expect("sync");
}

/// The damaged files set aside in `dir`.
fn set_aside(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("cache.redb.damaged-"))
        })
        .collect();
    found.sort();
    found
}

/// `sluice_cache_disk_resets_total` as exported.
fn resets(metrics: &Metrics) -> f64 {
    let text = metrics.encode();
    let scrape = crate::ab::exposition::parse(&text).expect("an exposition");
    let resets = scrape
        .matching("sluice_cache_disk_resets_total", &[])
        .next();
    resets
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no disk reset counter in:\n{text}"))
}

/// Opens the store on the damaged file in `dir` (which held `stored`, if anything) and checks
/// that no lookup serves damaged data, the file is set aside, one reset is counted, and new
/// entries are stored and served (across a restart too).
async fn starts_over_and_serves(dir: &Path, stored: &[Arc<Entry>]) {
    let (store, metrics) = open(&config(None, Some(dir)));
    for n in 0..STORED {
        if let Some((got, _)) = store.get(key(n), "chat", now()).await {
            let want = stored.get(n as usize).map(AsRef::as_ref);
            assert!(
                want == Some(got.as_ref()),
                "key {n}: a hit is never damaged data"
            );
        }
    }
    store.flush().await;
    let aside = set_aside(dir);
    assert_eq!(aside.len(), 1, "one file set aside: {aside:?}");
    assert_eq!(resets(&metrics), 1.0);
    assert_eq!(
        tier(&metrics, CacheTier::Disk).entries.get(),
        0,
        "starts empty"
    );

    let e = entry("chat", 300, now(), 600_000);
    store.put(key(1000), Arc::clone(&e));
    store.flush().await;
    assert_eq!(tier(&metrics, CacheTier::Disk).entries.get(), 1);
    drop(store);
    let (store, metrics) = open(&config(None, Some(dir)));
    let (got, from) = store.get(key(1000), "chat", now()).await.expect("a hit");
    assert_eq!((got.as_ref(), from), (e.as_ref(), CacheTier::Disk));
    assert_eq!(resets(&metrics), 0.0, "the fresh file is sound");
}

#[tokio::test]
async fn empty_file_is_a_new_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(file(dir.path()), b"").expect("write");
    let (store, metrics) = open(&config(None, Some(dir.path())));
    store.put(key(1), entry("chat", 300, now(), 600_000));
    store.flush().await;
    assert_eq!(tier(&metrics, CacheTier::Disk).entries.get(), 1);
    assert_eq!(resets(&metrics), 0.0, "nothing to keep, nothing set aside");
    assert!(set_aside(dir.path()).is_empty());
}

#[tokio::test]
async fn garbage_file_is_set_aside_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(file(dir.path()), noise(100, 7)).expect("write");
    starts_over_and_serves(dir.path(), &[]).await;
}

#[tokio::test]
async fn file_cut_in_half_is_set_aside_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path()).await;
    let bytes = std::fs::read(file(dir.path())).expect("read");
    std::fs::write(file(dir.path()), &bytes[..bytes.len() / 2]).expect("truncate");
    starts_over_and_serves(dir.path(), &[]).await;
}

#[tokio::test]
async fn file_scribbled_in_the_middle_is_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stored = filled(dir.path()).await;
    scribble_middle(&file(dir.path()));
    starts_over_and_serves(dir.path(), &stored).await;
}

#[tokio::test]
async fn file_damaged_under_the_running_tier_is_set_aside_and_the_tier_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stored = filled(dir.path()).await;
    let (store, metrics) = open(&config(None, Some(dir.path())));
    scribble_middle(&file(dir.path()));

    for (n, e) in stored.iter().enumerate() {
        if let Some((got, _)) = store.get(key(n as u64), "chat", now()).await {
            assert!(
                got.as_ref() == e.as_ref(),
                "key {n}: a hit is never damaged data"
            );
        }
    }
    store.flush().await;
    assert_eq!(resets(&metrics), 1.0, "the damage was met and counted once");
    assert_eq!(set_aside(dir.path()).len(), 1);
    assert!(tier(&metrics, CacheTier::Disk).errors.get() >= 1);

    let e = entry("chat", 300, now(), 600_000);
    store.put(key(1000), Arc::clone(&e));
    store.flush().await;
    drop(store);
    let (store, metrics) = open(&config(None, Some(dir.path())));
    let (got, from) = store.get(key(1000), "chat", now()).await.expect("a hit");
    assert_eq!((got.as_ref(), from), (e.as_ref(), CacheTier::Disk));
    assert_eq!(tier_of(&store, key(0), "chat", now()).await, None);
    assert_eq!(resets(&metrics), 0.0);
}

#[tokio::test]
async fn repeated_damage_keeps_few_files_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..4 {
        std::fs::write(file(dir.path()), noise(100, round + 1)).expect("write");
        let (store, _) = open(&config(None, Some(dir.path())));
        drop(store);
    }
    let aside = set_aside(dir.path());
    assert_eq!(
        aside.len(),
        1,
        "a crash loop cannot fill the disk: {aside:?}"
    );
    let kept = std::fs::read(&aside[0]).expect("kept");
    assert!(kept == noise(100, 4), "the newest is kept");
}

/// During a binary upgrade the old process still holds the file: the new one starts without
/// the disk tier (no errors counted, nothing set aside) and opens the file, entries and all,
/// once the old one lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_held_by_another_process_is_opened_when_it_lets_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    filled(dir.path()).await;
    let holder = redb::Database::create(file(dir.path())).expect("the old process holds it");
    let (store, metrics) = open(&config(None, Some(dir.path())));
    assert_eq!(tier_of(&store, key(1), "chat", now()).await, None);
    assert_eq!(tier(&metrics, CacheTier::Disk).errors.get(), 0);
    assert!(set_aside(dir.path()).is_empty());
    drop(holder);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tier_of(&store, key(1), "chat", now()).await != Some(CacheTier::Disk) {
        assert!(
            std::time::Instant::now() < deadline,
            "the disk tier never opened the released file"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tier(&metrics, CacheTier::Disk).entries.get(), STORED as i64);
    assert_eq!(resets(&metrics), 0.0);
}
