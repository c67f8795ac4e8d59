//! Credentials in the config never reach what sluice shows: a password in an endpoint URL
//! (`http://user:password@host`, sent as basic auth), a variant's `headers:` values and a
//! Redis password stay out of /metrics, /admin/config, the log (text and JSON), response
//! headers, error bodies and `sluice check`.

use serde_json::Value;
use sluice_e2e::{bin, chat_body, config, free_port, Answer, Gateway, Mock};
use std::process::Command;

const PASSWORD: &str = "s3cretPW";
const VARIANT_KEY: &str = "sk-variantSECRET";
const REDIS_PASSWORD: &str = "redisPW9";

/// Fails with `what` if any secret of this file appears in `text`.
fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, VARIANT_KEY, REDIS_PASSWORD] {
        assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
    }
}

/// Upstream `up` at `http://user:s3cretPW@<mock>`, probed for health; one route whose split
/// has a variant that sends its own key; a Redis (nobody listens there) for the cache.
fn secret_config(mock_port: u16) -> String {
    let url = format!("http://user:{PASSWORD}@127.0.0.1:{mock_port}");
    let routes = format!(
        "  - name: all
    upstream: up
    split:
      allow_override: true
      variants:
        - {{ name: plain, weight: 1 }}
        - {{ name: keyed, weight: 1, headers: {{ authorization: \"Bearer {VARIANT_KEY}\" }} }}
"
    );
    config(
        &[&url],
        "    health: { path: /health, interval: 100ms, timeout: 100ms }\n",
        &routes,
    )
    .replace(
        "upstreams:\n",
        &format!(
            "redis:\n  url: \"redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0\"\n  timeout: 50ms\ncache:\n  redis: true\nupstreams:\n",
            free_port()
        ),
    )
    .replace(
        "    upstream: up\n    split:",
        "    upstream: up\n    cache: { ttl: 1m }\n    split:",
    )
}

/// The whole answer, with its headers as text, to a GET of `path` or, with a `model`, a chat
/// POST to it, in variant `variant`.
async fn ask(gw: &Gateway, model: Option<&str>, path: &str, variant: &str) -> (Answer, String) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", gw.url);
    let req = match model {
        Some(model) => client.post(url).body(chat_body(model, 50, false)),
        None => client.get(url),
    };
    let answer = Answer::read(req.header("x-sluice-variant", variant)).await;
    let headers = format!("{:?}", answer.headers);
    (answer, headers)
}

async fn secrets_stay_out(log_format: &str) {
    let mut mock = Mock::start("a", &[]);
    let port = mock.port();
    let gw = Gateway::start_with(&secret_config(port), &[], &["--log-format", log_format]);
    let shown = format!("http://127.0.0.1:{port}");

    for variant in ["plain", "keyed"] {
        let (answer, headers) = ask(&gw, Some(variant), "/v1/chat/completions", variant).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.header("x-sluice-upstream"), Some(shown.as_str()));
        assert_no_secret("response headers", &headers);
        assert_no_secret("a response body", &answer.body);
    }

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!("endpoint=\"{shown}\"")),
        "{metrics}"
    );
    assert_no_secret("/metrics", &metrics);
    assert!(!metrics.contains("user@"), "{metrics}");

    let view = Answer::read(reqwest::Client::new().get(format!("{}/admin/config", gw.admin))).await;
    assert_no_secret("/admin/config", &view.body);
    let v: Value = view.json();
    assert_eq!(
        v["upstreams"]["up"]["endpoints"][0]["url"],
        format!("http://user:<redacted>@127.0.0.1:{port}")
    );
    assert_eq!(
        v["routes"][0]["split"]["variants"][1]["headers"]["authorization"],
        "<redacted>"
    );
    assert_eq!(
        v["redis"]["url"]
            .as_str()
            .map(|u| u.starts_with("redis://:<redacted>@")),
        Some(true)
    );

    // The password is the upstream's basic auth, unless a variant sets its own authorization.
    let (plain, _) = ask(&gw, None, "/mock/echo", "plain").await;
    assert_eq!(plain.status, 200, "{plain:?}");
    // base64("user:s3cretPW")
    assert_eq!(
        plain.json()["headers"]["authorization"],
        "Basic dXNlcjpzM2NyZXRQVw=="
    );
    assert_eq!(plain.json()["headers"]["host"], format!("127.0.0.1:{port}"));
    let (keyed, _) = ask(&gw, None, "/mock/echo", "keyed").await;
    assert_eq!(
        keyed.json()["headers"]["authorization"],
        format!("Bearer {VARIANT_KEY}")
    );

    // The upstream dies: the answer and the health checker's lines name no secret.
    mock.stop();
    let (failed, headers) = ask(&gw, Some("after-stop"), "/v1/chat/completions", "plain").await;
    assert!(failed.status == 502 || failed.status == 503, "{failed:?}");
    assert_no_secret("an error's headers", &headers);
    assert_no_secret("an error body", &failed.body);
    let log = gw.log_until(|l| l.contains("endpoint unhealthy") && l.contains("redis"));
    assert!(log.contains("endpoint unhealthy"), "{log}");
    assert!(log.contains(&shown), "the log names the endpoint:\n{log}");
    assert_no_secret("the log", &log);
}

#[tokio::test]
async fn no_credential_in_text_logs_metrics_admin_or_answers() {
    secrets_stay_out("text").await;
}

#[tokio::test]
async fn no_credential_in_json_logs_metrics_admin_or_answers() {
    secrets_stay_out("json").await;
}

/// `sluice check` on `yaml`: its exit status and everything it printed.
fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.yaml");
    let yaml = yaml
        .replace("{listen}", "127.0.0.1:8080")
        .replace("{admin}", "127.0.0.1:9090");
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(bin("sluice"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run sluice check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_errors_never_quote_a_password() {
    let route = "  - name: all\n    upstream: up\n";
    let urls = [
        format!("ftp://user:{PASSWORD}@127.0.0.1:1"),
        format!("http://user:{PASSWORD}@127.0.0.1:1/?q=1"),
        format!("http://user:{PASSWORD}@127.0.0.1:port"),
        format!("http://user:{PASSWORD} x@127.0.0.1:1"),
        format!("user:{PASSWORD}@127.0.0.1:1"),
    ];
    for url in &urls {
        let (ok, out) = check(&config(&[url], "", route));
        assert!(!ok, "{url} passed:\n{out}");
        assert!(out.contains("endpoints[0].url"), "{out}");
        assert_no_secret("sluice check", &out);
    }
    // An error beside a good URL with a password, and one the YAML parser reports.
    let good = format!("http://user:{PASSWORD}@127.0.0.1:1");
    let (ok, out) = check(&config(
        &[&good],
        "",
        &format!("{route}    split: {{ variants: [ {{ name: v, weight: 1, headers: {{ authorization: \"Bearer {VARIANT_KEY}\\n\" }} }} ] }}\n"),
    ).replace("- url:", "- weight: 0\n        url:"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("endpoints[0].weight: must be at least 1"),
        "{out}"
    );
    assert!(out.contains("headers.authorization"), "{out}");
    assert_no_secret("sluice check", &out);
    let listed = config(&[&good], "", route).replace("      - url: ", "      - ");
    let (ok, out) = check(&listed);
    assert!(!ok, "{out}");
    assert!(out.contains("endpoints[0]"), "{out}");
    assert_no_secret("sluice check", &out);
    let redis = format!("redis:\n  url: \"http://:{REDIS_PASSWORD}@127.0.0.1:1\"\nupstreams:\n");
    let (ok, out) = check(&config(&[&good], "", route).replace("upstreams:\n", &redis));
    assert!(!ok, "{out}");
    assert!(out.contains("redis.url"), "{out}");
    assert_no_secret("sluice check", &out);
}
