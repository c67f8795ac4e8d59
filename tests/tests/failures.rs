//! Dead, hung and TLS upstreams.

use serde_json::Value;
use sluice_e2e::{chat_body, config, free_port, Gateway, Mock};
use std::time::{Duration, Instant};

#[tokio::test]
async fn dead_upstream_is_502_json() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&config(&[&dead], "", "  - name: all\n    upstream: up\n"));
    let resp = reqwest::get(format!("{}/v1/models", gw.url)).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_failed");
    assert_eq!(v["error"]["type"], "upstream_error");
}

#[tokio::test]
async fn retry_moves_to_a_live_endpoint() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let live = Mock::start("live", &[]);
    let retry = "    retry: { attempts: 1, on: [connect] }\n";
    let gw = Gateway::start(&config(
        &[&dead, &live.url],
        retry,
        "  - name: m\n    match: { model: \"*\" }\n    upstream: up\n",
    ));
    let client = reqwest::Client::new();
    for _ in 0..6 {
        let resp = gw.chat(&client, chat_body("x", 50_000, false)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-mock-instance"], "live");
    }
}

#[tokio::test]
async fn hung_upstream_is_504_within_first_byte_timeout() {
    let hung = Mock::start("hung", &["--latency-ms", "30000"]);
    // The other timeouts are far from first_byte, so the bound below tells them apart.
    let timeouts = "    timeouts: { connect: 10s, first_byte: 400ms, idle: 10s }\n";
    let gw = Gateway::start(&config(
        &[&hung.url],
        timeouts,
        "  - name: all\n    upstream: up\n",
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let start = Instant::now();
    let resp = client
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .expect("an answer before the upstream's 30 s");
    let took = start.elapsed();
    assert_eq!(resp.status(), 504);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
    // Never early; late only by scheduling (up to 3.6 s here), and well before the 10 s
    // connect or idle timeout would have fired instead.
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(4),
        "took {took:?}"
    );
}

#[tokio::test]
async fn https_upstream_with_private_ca_works() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let (cert_path, key_path, ca_path) = (
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&cert_path, leaf.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();

    let mock = Mock::start(
        "tls",
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    assert!(mock.url.starts_with("https://"));
    let port = mock.url.rsplit(':').next().unwrap();
    let url = format!("https://localhost:{port}");
    let tls = format!("    tls: {{ ca_file: \"{}\" }}\n", ca_path.display());
    let gw = Gateway::start(&config(&[&url], &tls, "  - name: all\n    upstream: up\n"));
    let client = reqwest::Client::new();
    let resp = gw.chat(&client, chat_body("m", 10, false)).await;
    assert_eq!(resp.status(), 200, "{}", gw.log_text());
    assert_eq!(resp.headers()["x-mock-instance"], "tls");

    // Without the private CA the certificate is not trusted: 502, not a silent downgrade.
    let untrusted = Gateway::start(&config(&[&url], "", "  - name: all\n    upstream: up\n"));
    let resp = client
        .get(format!("{}/v1/models", untrusted.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn retried_status_passes_the_upstreams_own_answer_when_tries_run_out() {
    let (b1, b2) = (
        Mock::start("b1", &["--status", "503"]),
        Mock::start("b2", &["--status", "503"]),
    );
    let retry = "    retry: { attempts: 1, on: [503] }\n";
    let gw = Gateway::start(&config(
        &[&b1.url, &b2.url],
        retry,
        "  - name: all\n    upstream: up\n",
    ));
    let client = reqwest::Client::new();
    // GET: retried once on the other endpoint, then that endpoint's 503 is passed through.
    let resp = client
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().get("x-mock-instance").is_some(),
        "the upstream's answer, not a gateway error"
    );
    // A streamed (unread) POST body cannot be replayed: the first 503 is passed through as is.
    let resp = gw.chat(&client, chat_body("m", 10, false)).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("x-mock-instance").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "mock_error");
}
