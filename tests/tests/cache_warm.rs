//! `sluice cache warm` pre-fills a running gateway's cache from a JSONL file of prompts.

use sluice_e2e::{bin, config, Gateway, Mock};
use std::process::Command;

#[tokio::test]
async fn warm_fills_the_cache_so_the_first_real_request_hits() {
    let mock = Mock::start("a", &[]);
    let gw = Gateway::start(&config(
        &[&mock.url],
        "",
        "  - name: chat\n    match: { path_prefix: /v1/chat/completions }\n    upstream: up\n    cache: { ttl: 10m }\n",
    ));
    let prompt = |n: usize| {
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"warm {n}"}}]}}"#)
    };
    let lines: Vec<String> = (0..5).map(prompt).collect();
    let file = gw.config.with_file_name("prompts.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").expect("write prompts");
    let warm = |key: &str| {
        Command::new(bin("sluice"))
            .args(["cache", "warm", "--config"])
            .arg(&gw.config)
            .arg("--prompts")
            .arg(&file)
            .args(["--api-key", key])
            .output()
            .expect("run sluice cache warm")
    };
    let out = warm("sk-team");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("stored 5, already cached 0, failed 0"),
        "{stdout}"
    );
    let again = warm("sk-team");
    assert!(String::from_utf8_lossy(&again.stdout).contains("stored 0, already cached 5"));

    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth("sk-team")
        .body(prompt(3))
        .send()
        .await
        .expect("chat");
    assert_eq!(resp.headers()["x-sluice-cache"], "hit");
    let other_key = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth("sk-other")
        .body(prompt(3))
        .send()
        .await
        .expect("chat");
    assert_eq!(
        other_key.headers()["x-sluice-cache"],
        "miss",
        "entries are per API key"
    );
}

#[test]
fn warm_names_the_bad_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("g.yaml");
    std::fs::write(
        &cfg,
        "upstreams:\n  up: { endpoints: [ { url: \"http://127.0.0.1:9\" } ] }\nroutes:\n  - { name: r, upstream: up }\n",
    )
    .expect("config");
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"model\":\"m\"}\nnot json\n").expect("prompts");
    let out = Command::new(bin("sluice"))
        .args(["cache", "warm", "--config"])
        .arg(&cfg)
        .arg("--prompts")
        .arg(&prompts)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p.jsonl:2: not JSON"), "{err}");
}
