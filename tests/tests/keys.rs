//! Client keys: only callers with one of the gateway's keys get through a route with
//! `auth: required`, within the key's routes and models; the caller's key never reaches the
//! upstream (the route's own does), a key removed by a reload stops working, and
//! `/admin/keys` lists keys without their hashes.

use sluice_e2e::{
    access_lines, config, get_json, metric_value, rss, run_python_check_with, sha256, status,
    Gateway, Mock,
};

/// The `hash:` of a key, computed here rather than by sluice.
fn hash_line(key: &str) -> String {
    format!("sha256:{}", sha256(key.as_bytes()))
}

const KEY_A: &str = "sk-sluice-e2e-key-a-0123456789";
const KEY_B: &str = "sk-sluice-e2e-key-b-9876543210";
const UPSTREAM_KEY: &str = "sk-upstream-org-key";

fn keys_config(mock: &str, with_b: bool) -> String {
    let b = if with_b {
        format!(
            "  - {{ name: app-b, hash: \"{}\", routes: [echo] }}\n",
            hash_line(KEY_B)
        )
    } else {
        String::new()
    };
    config(
        &[mock],
        &format!("    set_headers: {{ authorization: \"Bearer {UPSTREAM_KEY}\" }}\n"),
        "  - name: echo\n    upstream: up\n    match: { path_prefix: /mock }\n    auth: required\n\
         \x20 - name: chat\n    upstream: up\n    auth: required\n",
    ) + &format!(
        "keys:\n  - {{ name: app-a, team: red, hash: \"{}\", models: [\"mock-*\"] }}\n{b}",
        hash_line(KEY_A)
    )
}

#[tokio::test]
async fn only_known_keys_pass_and_the_upstream_sees_only_its_own_key() {
    let mock = Mock::start("m", &[]);
    let gw = Gateway::start_with(
        &keys_config(&mock.url, true),
        &[],
        &["--log-format", "json"],
    );
    let client = reqwest::Client::new();
    let echo = |key: Option<&str>, header: &str| {
        let req = client
            .post(format!("{}/mock/echo", gw.url))
            .body(r#"{"model":"mock-echo"}"#);
        match key {
            Some(k) if header == "authorization" => req.bearer_auth(k),
            Some(k) => req.header(header, k),
            None => req,
        }
    };
    assert_eq!(status(echo(None, "")).await, 401, "no key");
    assert_eq!(status(echo(Some("sk-made-up"), "authorization")).await, 401);
    for (key, header) in [(KEY_A, "authorization"), (KEY_B, "x-api-key")] {
        let seen: serde_json::Value = echo(Some(key), header)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let text = seen.to_string();
        assert!(
            !text.contains(key),
            "the caller's key reached the upstream: {text}"
        );
        assert_eq!(
            seen["headers"]["authorization"],
            format!("Bearer {UPSTREAM_KEY}"),
            "the route's own key replaces it: {text}"
        );
    }
    // app-b may use only the echo route.
    let chat_b = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(KEY_B)
        .body(r#"{"model":"mock-gpt-4o","messages":[]}"#);
    assert_eq!(status(chat_b).await, 403);

    let out = run_python_check_with("openai_keys_check.py", &gw, &[KEY_A]);
    assert!(out.contains("keys ok"), "{out}");

    let listed = get_json(&client, format!("{}/admin/keys", gw.admin)).await;
    assert_eq!(listed["keys"][0]["name"], "app-a");
    assert_eq!(listed["keys"][0]["team"], "red");
    assert_eq!(listed["keys"][1]["routes"], serde_json::json!(["echo"]));
    assert!(!listed.to_string().contains("sha256"), "{listed}");

    let keys_logged = |log: &str| -> Vec<String> {
        access_lines(log)
            .iter()
            .map(|v| v["key"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let log = gw.log_until(|l| keys_logged(l).iter().any(|k| k == "app-b"));
    let logged = keys_logged(&log);
    assert!(
        logged.iter().any(|k| k == "app-a"),
        "the access line names the key:\n{log}"
    );
    assert!(
        logged.iter().any(String::is_empty),
        "a refused caller has no key"
    );
    assert!(
        !log.contains(KEY_A) && !log.contains(KEY_B),
        "no key material in the log"
    );

    // A reload without app-b revokes it at once.
    let before = gw.metrics().await;
    gw.write_config(&keys_config(&mock.url, false));
    let reloaded = |text: &str| metric_value(text, "sluice_config_reloads_total{result=\"ok\"}");
    let want = reloaded(&before) + 1.0;
    gw.metrics_until(|m| reloaded(m) >= want).await;
    assert_eq!(status(echo(Some(KEY_B), "x-api-key")).await, 401, "revoked");
    assert_eq!(status(echo(Some(KEY_A), "authorization")).await, 200);
}

#[tokio::test]
async fn twenty_thousand_made_up_keys_cost_no_memory_and_no_redis_writes() {
    use futures_util::{stream, StreamExt};
    const SPRAYED: usize = 20_000;
    let mock = Mock::start("m", &[]);
    let redis = sluice_e2e::RedisServer::start();
    let yaml = config(
        &[&mock.url],
        "",
        "  - name: chat\n    upstream: up\n    auth: required\n    limits:\n      \
         - { name: per-key, key: api_key, requests_per_hour: 10, shared: true }\n      \
         - { name: per-key-local, key: api_key, requests_per_hour: 10 }\n",
    ) + &format!(
        "keys:\n  - {{ name: app-a, hash: \"{}\" }}\nredis:\n  url: \"{}\"\n",
        hash_line(KEY_A),
        redis.url()
    );
    let gw = Gateway::start(&yaml);
    let client = reqwest::Client::new();
    let send = |key: String| {
        client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .body(r#"{"model":"m","messages":[]}"#)
            .send()
    };
    assert_eq!(send(KEY_A.to_string()).await.unwrap().status(), 200);
    let warm = stream::iter(0..500)
        .map(|i| send(format!("sk-warm-{i}")))
        .buffer_unordered(32)
        .count()
        .await;
    assert_eq!(warm, 500);
    let pid = gw.proc.child.id();
    let (before, redis_before) = (rss(pid), redis.dbsize());
    let refused = stream::iter(0..SPRAYED)
        .map(|i| send(format!("sk-sprayed-{i}")))
        .buffer_unordered(32)
        .filter(|r| std::future::ready(r.as_ref().is_ok_and(|r| r.status() == 401)))
        .count()
        .await;
    assert_eq!(refused, SPRAYED, "every made-up key is refused");
    let growth = rss(pid).saturating_sub(before);
    println!("{SPRAYED} made-up keys: RSS grew {growth} bytes");
    assert!(
        growth < 8 << 20,
        "RSS grew {growth} bytes for {SPRAYED} made-up keys"
    );
    assert_eq!(redis.dbsize(), redis_before, "no Redis writes");
    let held = metric_value(
        &gw.metrics().await,
        "sluice_ratelimit_keys{limit=\"per-key-local\",route=\"chat\"}",
    );
    assert!(held <= 1.0, "no limit bucket for a made-up key: {held}");
}
