//! Starting fails fast and says why: a taken port (proxy or admin) or two listeners on one
//! address exit non-zero within seconds with one clear line, instead of a process that stays up
//! deaf and reports ready.

use sluice_e2e::{bin, chat_body, config, free_port, status, Gateway, Mock};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `sluice run` on `yaml` until it exits (killed after `within`): its output and how long
/// it took.
fn run_until_exit(yaml: &str, within: Duration) -> (Output, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let start = Instant::now();
    let mut child = Command::new(bin("sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while start.elapsed() < within {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let _ = child.kill();
    (child.wait_with_output().unwrap(), took)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ports_config(listen: &str, admin: &str, mock: &str) -> String {
    config(&[mock], "", "  - name: all\n    upstream: up\n")
        .replace("{listen}", listen)
        .replace("{admin}", admin)
}

/// A taken port ends the start at once with one line naming the address and the setting.
fn assert_refused(out: &Output, took: Duration, addr: &str, field: &str) {
    let log = text(out);
    assert!(
        !out.status.success() && out.status.code() == Some(1),
        "must exit 1, got {:?} after {took:?}: {log}",
        out.status
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} to give up: {log}"
    );
    let line = format!("sluice: cannot listen on {addr} ({field}): the address is already in use");
    assert!(log.contains(&line), "want `{line}` in: {log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("sluice started"), "{log}");
}

#[test]
fn a_taken_proxy_port_exits_at_once() {
    let mock = Mock::start("a", &[]);
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let (out, took) = run_until_exit(
        &ports_config(&taken, &admin, &mock.url),
        Duration::from_secs(20),
    );
    assert_refused(&out, took, &taken, "server.listen");
}

#[test]
fn a_taken_admin_port_exits_at_once() {
    let mock = Mock::start("a", &[]);
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let (out, took) = run_until_exit(
        &ports_config(&listen, &taken, &mock.url),
        Duration::from_secs(20),
    );
    assert_refused(&out, took, &taken, "admin.listen");
}

#[tokio::test]
async fn a_second_sluice_on_the_same_ports_fails_and_the_first_keeps_serving() {
    let mock = Mock::start("a", &[]);
    let yaml = config(&[&mock.url], "", "  - name: all\n    upstream: up\n");
    let first = Gateway::start(&yaml);
    let listen = first.url.trim_start_matches("http://");
    let admin = first.admin.trim_start_matches("http://");
    // The admin port is free for the second: only the proxy port is shared with the first.
    let (out, took) = run_until_exit(
        &ports_config(listen, &format!("127.0.0.1:{}", free_port()), &mock.url),
        Duration::from_secs(20),
    );
    assert_refused(&out, took, listen, "server.listen");
    // Every request still reaches the first: the port was never shared.
    let client = reqwest::Client::new();
    for _ in 0..10 {
        let resp = first.chat(&client, chat_body("m", 10, false)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            status(client.get(format!("http://{admin}/readyz"))).await,
            200
        );
    }
}

#[test]
fn admin_and_proxy_on_one_address_is_a_config_error() {
    let mock = Mock::start("a", &[]);
    let port = free_port();
    for (listen, admin) in [
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")),
    ] {
        let yaml = ports_config(&listen, &admin, &mock.url);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        std::fs::write(&path, &yaml).unwrap();
        let check = Command::new(bin("sluice"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let log = text(&check);
        assert_eq!(check.status.code(), Some(1), "{log}");
        assert!(
            log.contains("admin.listen: ")
                && log.contains("also takes connections for server.listen[0]"),
            "{log}"
        );
        // `run` refuses the same file before binding anything.
        let (out, took) = run_until_exit(&yaml, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(took < Duration::from_secs(5));
        assert!(
            text(&out).contains("also takes connections"),
            "{}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn ready_only_once_every_listener_accepts() {
    let mock = Mock::start("a", &[]);
    let gw = Gateway::start(&config(
        &[&mock.url],
        "",
        "  - name: all\n    upstream: up\n",
    ));
    // `Gateway::start` returned on /readyz 200: the proxy port must accept and answer by then.
    let resp = gw
        .chat(&reqwest::Client::new(), chat_body("m", 10, false))
        .await;
    assert_eq!(resp.status(), 200);
    let log = gw.log_text();
    let started = log.find("sluice started").expect("started line");
    assert!(
        log[started..]
            .lines()
            .next()
            .unwrap_or("")
            .contains(&format!("listen={}", gw.url.trim_start_matches("http://"))),
        "{log}"
    );
    assert!(!log.contains("Some("), "{log}");
}
