//! Live reload: file edits, SIGHUP and the admin endpoint swap the policy without failing
//! requests; a broken file keeps the running policy and is counted.

use sluice_e2e::{config, metric_value, status, Gateway, Mock, PATIENCE};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn to(url: &str) -> String {
    config(&[url], "", "  - name: all\n    upstream: up\n")
}

async fn served_by(client: &reqwest::Client, gw: &Gateway) -> String {
    let resp = client
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["x-mock-instance"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn file_edit_switches_upstream_promptly() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let gw = Gateway::start(&to(&a.url));
    let client = reqwest::Client::new();
    assert_eq!(served_by(&client, &gw).await, "a");
    let start = Instant::now();
    gw.write_config(&to(&b.url));
    // The watcher reacts within its 150 ms debounce plus a compile, well under a second when
    // idle; 3 s leaves room for a loaded machine and still fails a watcher that misses the
    // rename (nothing ever switches) or a reload by polling.
    while served_by(&client, &gw).await != "b" {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still on the old upstream after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        metric_value(
            &gw.metrics().await,
            "sluice_config_reloads_total{result=\"ok\"}"
        ) >= 1.0
    );
}

/// Waits until `/v1/models` is served by mock `name` (within 3 s, as above).
async fn switches_to(client: &reqwest::Client, gw: &Gateway, name: &str) {
    let start = Instant::now();
    while served_by(client, gw).await != name {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not on `{name}` after {:?}; log:\n{}",
            start.elapsed(),
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn in_place_edit_switches_upstream() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let gw = Gateway::start(&to(&a.url));
    let client = reqwest::Client::new();
    assert_eq!(served_by(&client, &gw).await, "a");
    // Truncate and rewrite the same inode, as `echo > file` or an editor without backups does.
    std::fs::write(&gw.config, gw.fill(&to(&b.url))).unwrap();
    switches_to(&client, &gw, "b").await;
}

/// Writes `yaml` as the ConfigMap volume's data dir `..<stamp>/gateway.yaml`.
fn configmap_data(dir: &Path, stamp: &str, yaml: &str) -> PathBuf {
    let data = dir.join(format!("..{stamp}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("gateway.yaml"), yaml).unwrap();
    data
}

/// Updates a ConfigMap volume the way the kubelet does: a new timestamped dir, a `..data_tmp`
/// symlink to it renamed over `..data`, then the old dir deleted.
fn configmap_update(dir: &Path, old: &str, new: &str, yaml: &str) {
    configmap_data(dir, new, yaml);
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{new}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(format!("..{old}"))).unwrap();
}

#[tokio::test]
async fn kubernetes_configmap_update_is_picked_up_without_sighup() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    // dir/gateway.yaml -> ..data/gateway.yaml, ..data -> ..2026_12_02_10_00_00.1
    let gw = Gateway::start_placed(&to(&a.url), &[], &[], |dir, text| {
        let volume = dir.join("volume");
        std::fs::create_dir(&volume).unwrap();
        configmap_data(&volume, "2026_12_02_10_00_00.1", text);
        std::os::unix::fs::symlink("..2026_12_02_10_00_00.1", volume.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/gateway.yaml", volume.join("gateway.yaml")).unwrap();
        volume.join("gateway.yaml")
    });
    let volume = gw.config.parent().unwrap().to_path_buf();
    let client = reqwest::Client::new();
    assert_eq!(served_by(&client, &gw).await, "a");

    configmap_update(
        &volume,
        "2026_12_02_10_00_00.1",
        "2026_12_02_10_05_00.2",
        &gw.fill(&to(&b.url)),
    );
    switches_to(&client, &gw, "b").await;
    // A second update: the watcher follows past the first swap's deleted dir.
    configmap_update(
        &volume,
        "2026_12_02_10_05_00.2",
        "2026_12_02_10_10_00.3",
        &gw.fill(&to(&a.url)),
    );
    switches_to(&client, &gw, "a").await;
    let m = gw
        .metrics_when("sluice_config_reloads_total{result=\"ok\"}", 2.0)
        .await;
    assert!(
        metric_value(&m, "sluice_config_reloads_total{result=\"ok\"}") >= 2.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "sluice_config_reloads_total{result=\"error\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn broken_file_keeps_old_policy_and_is_counted() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let gw = Gateway::start(&to(&a.url));
    let client = reqwest::Client::new();
    let broken = to(&b.url).replace("    upstream: up", "    upstrem: up");
    gw.write_config(&broken);
    let deadline = Instant::now() + PATIENCE;
    while metric_value(
        &gw.metrics().await,
        "sluice_config_reloads_total{result=\"error\"}",
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "broken reload not counted; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served_by(&client, &gw).await,
        "a",
        "old policy must keep serving"
    );
    let log = gw.log_text();
    assert!(
        log.contains("gateway.yaml:") && log.contains("routes[0].upstrem: unknown field `upstrem`"),
        "{log}"
    );

    // The admin endpoint reports the same errors and keeps the policy too.
    let resp = client
        .post(format!("{}/admin/reload", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    let first = body["error"]["errors"][0].as_str().unwrap();
    assert!(
        first.contains(":") && first.contains("unknown field `upstrem`"),
        "{first}"
    );
    assert_eq!(served_by(&client, &gw).await, "a");
}

#[tokio::test]
async fn ten_reloads_under_concurrent_load_fail_no_request() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let gw = Arc::new(Gateway::start(&to(&a.url)));
    let client = reqwest::Client::new();
    // Load runs until the last reload has landed, however long a loaded machine takes.
    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for i in 0..8 {
        let (client, gw, ok, failed, done) = (
            client.clone(),
            Arc::clone(&gw),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&done),
        );
        workers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let req = if i % 2 == 0 {
                    client.get(format!("{}/v1/models", gw.url))
                } else {
                    client
                        .post(format!("{}/v1/chat/completions", gw.url))
                        .body(sluice_e2e::chat_body("m", 2000, i % 4 == 1))
                };
                let success = match req.send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if success {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    // Ten reloads, by all three triggers, alternating the upstream.
    for n in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let url = if n % 2 == 0 { &b.url } else { &a.url };
        gw.write_config(&to(url));
        match n % 3 {
            0 => gw.signal("HUP"),
            1 => assert_eq!(
                status(client.post(format!("{}/admin/reload", gw.admin))).await,
                200
            ),
            _ => {} // the file watcher picks it up
        }
    }
    let m = gw
        .metrics_when("sluice_config_reloads_total{result=\"ok\"}", 10.0)
        .await;
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} requests failed during reloads ({ok} succeeded)"
    );
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert!(
        metric_value(&m, "sluice_config_reloads_total{result=\"ok\"}") >= 10.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "sluice_config_reloads_total{result=\"error\"}"),
        0.0,
        "{m}"
    );
}
