//! Zero-downtime binary upgrade: a new `sluice run --upgrade` takes the listening sockets over
//! from the running one (sent SIGQUIT), which drains and exits. Under steady load with streams
//! in flight, no request fails and every stream completes.

use sluice_e2e::{bin, chat_body, config, Gateway, Mock, Proc};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    streams: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock() {
            e.push(why);
        }
    }
}

/// One client in a loop until `stop`: plain requests, or streams read to the end.
async fn client_loop(url: String, stream: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let client = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let sent = client
            .post(format!("{url}/v1/chat/completions"))
            .body(chat_body("m", 200, stream))
            .send()
            .await;
        let resp = match sent {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                tally.fail(format!("status {}", r.status()));
                continue;
            }
            Err(e) => {
                tally.fail(format!("send: {e:?}"));
                continue;
            }
        };
        match resp.text().await {
            Ok(text) if !stream || text.ends_with("data: [DONE]\n\n") => {
                let n = if stream { &tally.streams } else { &tally.ok };
                n.fetch_add(1, Ordering::Relaxed);
            }
            Ok(text) => tally.fail(format!("stream cut: {text}")),
            Err(e) => tally.fail(format!("body: {e:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_loses_no_request_and_no_stream() {
    let mock = Mock::start("a", &["--token-delay-ms", "40", "--tokens", "25"]);
    let mut old = Gateway::start(&config(
        &[&mock.url],
        "",
        "  - name: all\n    upstream: up\n",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(tokio::spawn(client_loop(
            old.url.clone(),
            i < 3,
            Arc::clone(&stop),
            Arc::clone(&tally),
        )));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The new process waits for the old one's sockets; SIGQUIT makes the old one send them.
    let log = old.config.with_file_name("upgraded.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let new = Command::new(bin("sluice"))
        .args(["run", "--upgrade", "--config"])
        .arg(&old.config)
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut new = Proc { child: new };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = tally.ok.load(Ordering::Relaxed) + tally.streams.load(Ordering::Relaxed);
    old.signal("QUIT");
    let quit_at = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = old.proc.child.try_wait() {
            break status;
        }
        assert!(
            quit_at.elapsed() < Duration::from_secs(20),
            "the old process must exit once drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "old process: {status:?}");
    // Traffic goes on, now all served by the new process.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let errors = tally.errors.lock().unwrap().clone();
    let (ok, streams) = (
        tally.ok.load(Ordering::Relaxed),
        tally.streams.load(Ordering::Relaxed),
    );
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failed requests during the upgrade: {errors:?}\nold log:\n{}\nnew log:\n{}",
        old.log_text(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!("upgrade under load: {ok} requests and {streams} streams, 0 failed");
    assert!(ok + streams > before + 20, "ok {ok}, streams {streams}");
    assert!(streams >= 6, "streams completed: {streams}");
    assert!(new.running(), "the new process serves on");
    let new_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(new_log.contains("sluice started"), "{new_log}");
    assert!(new_log.matches("status=200").count() > 10, "{new_log}");
    let ready = reqwest::get(format!("{}/readyz", old.admin)).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(old.log_text().contains("SIGQUIT"));
}

/// A SIGQUIT with no new process waiting would hand the sockets to nobody and shut the
/// instance down: it is ignored, and sluice keeps serving.
#[tokio::test]
async fn sigquit_without_a_waiting_process_keeps_serving() {
    let mock = Mock::start("a", &[]);
    let mut gw = Gateway::start(&config(
        &[&mock.url],
        "",
        "  - name: all\n    upstream: up\n",
    ));
    gw.signal("QUIT");
    let log = gw.log_until(|l| l.contains("SIGQUIT ignored"));
    assert!(log.contains("SIGQUIT ignored"), "{log}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gw.proc.running(), "{log}");
    let client = reqwest::Client::new();
    let resp = gw.chat(&client, chat_body("m", 10, false)).await;
    assert_eq!(resp.status(), 200);
    let ready = client.get(format!("{}/readyz", gw.admin)).send().await;
    assert_eq!(ready.unwrap().status(), 200);
}
