//! The admin listener, metrics, and keeping secrets out of logs and the config dump.

use serde_json::Value;
use sluice_e2e::{
    access_lines, chat_body, config, config_with_secrets, metric_value, status, Gateway, Mock,
};

/// A gateway whose admin needs the token `admin-SECRET2` and whose upstream key is secret.
fn guarded_gateway(mock: &Mock) -> Gateway {
    let yaml = config_with_secrets(&[&mock.url], "  - name: all\n    upstream: up\n");
    Gateway::start_with_env(
        &yaml,
        &[
            ("UPSTREAM_KEY", "sk-upstream-SECRET1"),
            ("ADMIN_TOKEN", "admin-SECRET2"),
        ],
    )
}

#[tokio::test]
async fn admin_token_guards_admin_but_not_metrics_and_config_is_redacted() {
    let a = Mock::start("a", &[]);
    let gw = guarded_gateway(&a);
    let client = reqwest::Client::new();
    assert_eq!(
        status(client.get(format!("{}/admin/config", gw.admin))).await,
        401
    );
    let wrong = client
        .get(format!("{}/admin/config", gw.admin))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let resp = client
        .get(format!("{}/admin/config", gw.admin))
        .bearer_auth("admin-SECRET2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("SECRET"), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["upstreams"]["up"]["set_headers"]["authorization"],
        "<redacted>"
    );
    assert_eq!(
        status(client.post(format!("{}/admin/reload", gw.admin))).await,
        401
    );
    assert_eq!(
        status(
            client
                .post(format!("{}/admin/reload", gw.admin))
                .bearer_auth("admin-SECRET2")
        )
        .await,
        200
    );
    assert_eq!(
        status(client.get(format!("{}/metrics", gw.admin))).await,
        200
    );
    assert_eq!(
        status(client.get(format!("{}/healthz", gw.admin))).await,
        200
    );
    assert_eq!(
        status(client.get(format!("{}/readyz", gw.admin))).await,
        200
    );
}

#[tokio::test]
async fn refuses_to_start_when_the_admin_token_variable_is_unset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.yaml");
    let yaml = config(
        &["http://127.0.0.1:1"],
        "",
        "  - name: all\n    upstream: up\n",
    )
    .replace("{listen}", "127.0.0.1:0")
    .replace(
        "  listen: \"{admin}\"\n",
        "  listen: \"0.0.0.0:0\"\n  token_env: SLUICE_TEST_UNSET_TOKEN\n",
    );
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(sluice_e2e::bin("sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SLUICE_TEST_UNSET_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn no_key_or_token_reaches_the_log() {
    let a = Mock::start("a", &[]);
    let yaml = config_with_secrets(&[&a.url], "  - name: chat\n    match: { model: \"*\" }\n    upstream: up\n  - name: all\n    upstream: up\n");
    let gw = Gateway::start_with(
        &yaml,
        &[
            ("UPSTREAM_KEY", "sk-upstream-SECRET1"),
            ("ADMIN_TOKEN", "admin-SECRET2"),
            ("RUST_LOG", "debug"),
        ],
        &["--log-format", "json"],
    );
    let client = reqwest::Client::new();
    let resp = client
        .post(format!(
            "{}/v1/chat/completions?api_key=sk-query-SECRET3",
            gw.url
        ))
        .bearer_auth("sk-client-SECRET4")
        .header("api-key", "azure-SECRET5")
        .body(chat_body("m", 100, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = client
        .get(format!("{}/admin/config", gw.admin))
        .bearer_auth("admin-SECRET2")
        .send()
        .await
        .unwrap();
    let _ = client
        .get(format!("{}/admin/config", gw.admin))
        .bearer_auth("admin-SECRET6-wrong")
        .send()
        .await
        .unwrap();
    gw.write_config(&yaml.replace("name: all", "name: all2"));
    gw.metrics_when(r#"sluice_config_reloads_total{result="ok"}"#, 1.0)
        .await;
    // Lines reach the file from a writer thread, a little after the event.
    let log = gw.log_until(|log| log.contains("config reloaded") && !access_lines(log).is_empty());
    assert!(!log.contains("SECRET"), "a secret reached the log:\n{log}");
    let access = access_lines(&log);
    assert_eq!(access.len(), 1, "one access line per request:\n{log}");
    let line = &access[0];
    assert_eq!(line["route"], "chat");
    assert_eq!(line["upstream"], "up");
    assert_eq!(line["endpoint"], a.url.as_str());
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/v1/chat/completions");
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(line.get("variant").is_some() && line.get("cache").is_some());
}

#[tokio::test]
async fn metrics_count_requests_latency_and_connection_reuse() {
    let a = Mock::start("a", &[]);
    let gw = Gateway::start(&config(
        &[&a.url],
        "",
        "  - name: chat\n    match: { path_prefix: /v1/chat }\n    upstream: up\n",
    ));
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let r = gw.chat(&client, chat_body("m", 10, false)).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(status(client.get(format!("{}/nope", gw.url))).await, 404);
    let (ok_200, not_found) = (
        r#"sluice_requests_total{code="200",route="chat",upstream="up",variant=""}"#,
        r#"sluice_requests_total{code="404",route="",upstream="",variant=""}"#,
    );
    let m = gw
        .metrics_until(|m| metric_value(m, ok_200) >= 5.0 && metric_value(m, not_found) >= 1.0)
        .await;
    assert_eq!(metric_value(&m, ok_200), 5.0, "{m}");
    assert_eq!(metric_value(&m, not_found), 1.0, "{m}");
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_request_duration_seconds_count{route="chat",variant=""}"#
        ),
        5.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"sluice_upstream_ttfb_seconds_count{route="chat",upstream="up",variant=""}"#
        ),
        5.0
    );
    assert_eq!(
        metric_value(&m, r#"sluice_inflight_requests{route="chat"}"#),
        0.0
    );
    assert_eq!(
        metric_value(
            &m,
            &format!(
                r#"sluice_upstream_connections_total{{endpoint="{}",reused="false",upstream="up"}}"#,
                a.url
            )
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            &format!(
                r#"sluice_upstream_connections_total{{endpoint="{}",reused="true",upstream="up"}}"#,
                a.url
            )
        ),
        4.0
    );
    assert!(m.contains("sluice_build_info{version="));
}

#[tokio::test]
async fn pooled_connections_are_reused_with_several_worker_threads() {
    let a = Mock::start("a", &[]);
    let yaml = config(&[&a.url], "", "  - name: all\n    upstream: up\n")
        .replace("  threads: 1\n", "  threads: 2\n");
    let gw = Gateway::start(&yaml);
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let r = client
            .get(format!("{}/v1/models", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let series = |reused: bool| {
        format!(
            r#"sluice_upstream_connections_total{{endpoint="{}",reused="{reused}",upstream="up"}}"#,
            a.url
        )
    };
    let (opened, reused) = (&series(false), &series(true));
    let m = gw
        .metrics_until(|m| metric_value(m, opened) + metric_value(m, reused) >= 200.0)
        .await;
    let (new, reused) = (metric_value(&m, opened), metric_value(&m, reused));
    assert_eq!(new + reused, 200.0, "{m}");
    assert!(
        new <= 2.0,
        "each worker thread should open one connection and reuse it, opened {new}"
    );
}

/// What an operator's scripts rely on: a lower-case `bearer` works (the scheme is
/// case-insensitive), a wrong method is a 405 naming the allowed one, and a purge of a route
/// that does not exist is a 404 listing the routes rather than a silent 200.
#[tokio::test]
async fn admin_answers_wrong_methods_unknown_routes_and_any_bearer_case() {
    let a = Mock::start("a", &[]);
    let gw = guarded_gateway(&a);
    let client = reqwest::Client::new();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let resp = client
            .get(format!("{}/admin/config", gw.admin))
            .header("authorization", format!("{scheme} admin-SECRET2"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "scheme {scheme}");
    }
    for (method, path, allow) in [
        (reqwest::Method::POST, "/metrics", "GET"),
        (reqwest::Method::DELETE, "/readyz", "GET"),
        (reqwest::Method::GET, "/admin/reload", "POST"),
        (reqwest::Method::GET, "/admin/cache/purge", "POST"),
        (reqwest::Method::PUT, "/admin/config", "GET"),
    ] {
        let resp = client
            .request(method.clone(), format!("{}{path}", gw.admin))
            .bearer_auth("admin-SECRET2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{method} {path}");
        let want = if allow == "GET" { "GET, HEAD" } else { allow };
        assert_eq!(resp.headers()["allow"], want, "{method} {path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed");
    }
    // A load balancer's HEAD probe gets the GET's status without a body.
    let head = client
        .head(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty());
    // Without the token an admin path says 401 whatever the method, revealing nothing.
    assert_eq!(
        status(client.get(format!("{}/admin/reload", gw.admin))).await,
        401
    );
    assert_eq!(status(client.get(format!("{}/nope", gw.admin))).await, 404);
    let purge = client
        .post(format!("{}/admin/cache/purge", gw.admin))
        .bearer_auth("admin-SECRET2")
        .body(r#"{"route": "chta"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 404);
    let v: Value = purge.json().await.unwrap();
    assert_eq!(v["error"]["code"], "route_not_found");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("routes: all"),
        "{v}"
    );
    let known = client
        .post(format!("{}/admin/cache/purge", gw.admin))
        .bearer_auth("admin-SECRET2")
        .body(r#"{"route": "all"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(known.status(), 200);
}
