//! Memory and disk tiers, no Redis.

use super::*;

#[tokio::test]
async fn memory_serves_what_was_put() {
    let (store, metrics) = open(&config(None, None));
    let e = entry("chat", 100, now(), 60_000);
    store.put(key(1), Arc::clone(&e));
    let (got, from) = store.get(key(1), "chat", now()).await.expect("a hit");
    assert_eq!((got.as_ref(), from), (e.as_ref(), CacheTier::Memory));
    store.flush().await;
    let memory = tier(&metrics, CacheTier::Memory);
    assert_eq!(memory.entries.get(), 1);
    assert_eq!(memory.bytes.get(), e.weight() as i64);
}

#[tokio::test]
async fn unknown_key_is_a_miss_in_every_tier() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, metrics) = open(&config(None, Some(dir.path())));
    store.put(key(1), entry("chat", 10, now(), 60_000));
    store.flush().await;
    assert!(store.get(key(2), "chat", now()).await.is_none());
    assert_eq!(tier(&metrics, CacheTier::Disk).errors.get(), 0);
}

#[tokio::test]
async fn memory_stays_within_its_byte_bound() {
    let max = 64 * 1024;
    let config = StoreConfig {
        memory_max_bytes: max,
        ..config(None, None)
    };
    let (store, metrics) = open(&config);
    for n in 0..64 {
        store.put(key(n), entry("chat", 4096, now(), 60_000));
    }
    store.flush().await;
    let memory = tier(&metrics, CacheTier::Memory);
    let bytes = memory.bytes.get();
    assert!(bytes > 0 && bytes <= max as i64, "{bytes} bytes held");
    assert!(memory.evictions.get() > 0, "size evictions are counted");
    assert!(memory.entries.get() < 64);
}

#[tokio::test]
async fn disk_entries_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(None, Some(dir.path()));
    let e = entry("chat", 2000, now(), 60_000);
    let (entries, bytes) = {
        let (store, metrics) = open(&config);
        store.put(key(7), Arc::clone(&e));
        store.put(key(8), entry("embed", 500, now(), 60_000));
        store.flush().await;
        let disk = tier(&metrics, CacheTier::Disk);
        (disk.entries.get(), disk.bytes.get())
    };
    assert_eq!(entries, 2);
    assert!(bytes > 2500, "encoded bodies counted: {bytes}");

    let (store, metrics) = open(&config);
    let disk = tier(&metrics, CacheTier::Disk);
    assert_eq!((disk.entries.get(), disk.bytes.get()), (entries, bytes));
    let (got, from) = store.get(key(7), "chat", now()).await.expect("a hit");
    assert_eq!((got.as_ref(), from), (e.as_ref(), CacheTier::Disk));
    assert_eq!(
        tier_of(&store, key(7), "chat", now()).await,
        Some(CacheTier::Memory)
    );
}

#[tokio::test]
async fn disk_stays_within_its_byte_bound_evicting_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let max = 64 * 1024;
    let config = StoreConfig {
        disk: Some(DiskConfig {
            path: dir.path().to_path_buf(),
            max_bytes: max,
        }),
        ..config(None, None)
    };
    {
        let (store, metrics) = open(&config);
        for n in 0..40 {
            store.put(key(n), entry("chat", 4096, now(), 60_000));
            if n % 8 == 0 {
                store.flush().await;
            }
        }
        store.flush().await;
        let disk = tier(&metrics, CacheTier::Disk);
        let bytes = disk.bytes.get();
        assert!(
            bytes > max as i64 / 2 && bytes <= max as i64,
            "{bytes} bytes stored"
        );
        assert_eq!(disk.evictions.get() + disk.entries.get() as u64, 40);
    }
    let (store, _metrics) = open(&config);
    assert_eq!(
        tier_of(&store, key(39), "chat", now()).await,
        Some(CacheTier::Disk)
    );
    assert_eq!(
        tier_of(&store, key(0), "chat", now()).await,
        None,
        "oldest went first"
    );
}

#[tokio::test]
async fn expired_disk_entry_is_a_miss_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(None, Some(dir.path()));
    let at = now();
    {
        let (store, _) = open(&config);
        store.put(key(1), entry("chat", 100, at, 1_000));
        store.flush().await;
    }
    let (store, metrics) = open(&config);
    assert!(store.get(key(1), "chat", at + 5_000).await.is_none());
    store.flush().await;
    assert_eq!(tier(&metrics, CacheTier::Disk).entries.get(), 0);
}

#[tokio::test]
async fn unopenable_disk_path_is_an_error_naming_it() {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    let path = file.path().join("cache");
    let metrics = Metrics::new("test").expect("metrics");
    let err = CacheStore::open(&config(None, Some(&path)), &metrics)
        .err()
        .expect("a file is not a directory");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn store_serves_callers_on_several_runtimes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = open(&config(None, Some(dir.path())));
    let store = Arc::new(store);
    let on_own_runtime = |work: u64| {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                store.put(key(work), entry("chat", 100, now(), 60_000));
                store.flush().await;
                store.get(key(work), "chat", now()).await.map(|(_, t)| t)
            })
        })
    };
    let (a, b) = (on_own_runtime(1), on_own_runtime(2));
    assert_eq!(a.join().expect("thread a"), Some(CacheTier::Memory));
    assert_eq!(b.join().expect("thread b"), Some(CacheTier::Memory));
    drop(store);
    let (reopened, _) = open(&config(None, Some(dir.path())));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let found = runtime.block_on(reopened.get(key(2), "chat", now()));
    assert_eq!(found.map(|(_, t)| t), Some(CacheTier::Disk));
}

#[tokio::test]
async fn small_extensions_are_skipped_and_large_ones_kept() {
    let (store, _) = open(&config(None, None));
    let at = now();
    let e = entry("chat", 100, at, 10_000);
    store.put(key(1), Arc::clone(&e));
    store.extend(key(1), &e, at + 500);
    let (got, _) = store.get(key(1), "chat", at).await.expect("a hit");
    assert_eq!(
        got.expires_at_ms,
        at + 10_000,
        "a 500 ms gain on a 10 s step is noise"
    );
    store.extend(key(1), &e, at + 5_000);
    let (got, _) = store.get(key(1), "chat", at).await.expect("a hit");
    assert_eq!(got.expires_at_ms, at + 15_000);
}

#[test]
fn store_is_shareable_and_its_futures_are_send() {
    fn shareable<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: T) {}
    let (store, _) = open(&config(None, None));
    shareable(&store);
    send(store.get(key(1), "chat", 0));
    send(store.purge(Some("chat")));
    send(store.flush());
}
