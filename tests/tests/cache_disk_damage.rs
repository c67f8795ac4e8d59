//! A damaged disk cache never stops the gateway: the file is set aside with one warning,
//! sluice starts on an empty cache and serves, and the reset is counted.

use sluice_e2e::{config, metric_value, Gateway, Mock};
use std::time::{Duration, Instant};

/// A caching route over `mock` with the disk tier in `dir`.
fn gateway(mock: &Mock, dir: &std::path::Path) -> Gateway {
    let routes =
        "  - name: chat\n    match: { model: \"*\" }\n    upstream: up\n    cache: { ttl: 60s }\n";
    Gateway::start(&format!(
        "{}cache:\n  disk: {{ path: \"{}\", max_bytes: 1MiB }}\n",
        config(&[&mock.url], "", routes),
        dir.display()
    ))
}

async fn ask(gw: &Gateway, client: &reqwest::Client) -> String {
    let resp = gw
        .chat(
            client,
            r#"{"model":"m","messages":[{"role":"user","content":"after the damage"}]}"#,
        )
        .await;
    assert_eq!(resp.status(), 200);
    resp.headers()
        .get("x-sluice-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_string()
}

#[tokio::test]
async fn garbage_cache_file_is_set_aside_and_sluice_serves() {
    let mock = Mock::start("a", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cache.redb");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &garbage).expect("garbage cache file");

    let mut gw = gateway(&mock, dir.path());
    let client = reqwest::Client::new();
    assert_eq!(ask(&gw, &client).await, "miss");
    assert_eq!(ask(&gw, &client).await, "hit");
    let m = gw
        .metrics_when("sluice_cache_entries{tier=\"disk\"}", 1.0)
        .await;
    assert_eq!(
        metric_value(&m, "sluice_cache_entries{tier=\"disk\"}"),
        1.0,
        "the fresh file stores: {m}"
    );
    assert_eq!(
        metric_value(&m, "sluice_cache_disk_resets_total"),
        1.0,
        "{m}"
    );

    let log = gw.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&file.display().to_string()))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning naming the file:\n{log}");
    assert!(warnings[0].contains("set aside"), "{}", warnings[0]);
    assert!(!log.contains("panicked"), "{log}");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cache.redb.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(aside[0].path()).expect("kept"), garbage);

    gw.signal("INT");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(status)) = gw.proc.child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "sluice did not exit on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(status.code(), Some(101), "no panic:\n{}", gw.log_text());
}
