//! The live status page: headless Chromium loads `GET /` from a running sluice under traffic
//! (the admin token given in the URL fragment) and the rendered page shows every configured
//! route with traffic, every endpoint's health and the split's variants; `/admin/stats` keeps
//! its documented shape and its token; the page loads nothing from outside.

use serde_json::Value;
use sluice_e2e::{chat_body, status, workspace, Gateway, Mock};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "status-SECRET";

fn gateway(a: &Mock, b: &Mock) -> Gateway {
    let yaml = format!(
        "server:\n  listen: [\"{{listen}}\"]\n  threads: 1\nadmin:\n  listen: \"{{admin}}\"\n  token_env: ADMIN_TOKEN\n\
         upstreams:\n  up:\n    endpoints:\n      - url: \"{a}\"\n      - url: \"{b}\"\n\
         cache:\n  memory: {{ max_bytes: 16MiB }}\n\
         routes:\n  - name: cached\n    upstream: up\n    match: {{ path_prefix: /v1/chat }}\n    cache: {{ ttl: 60s }}\n\
         \x20 - name: ab\n    upstream: up\n    split:\n      variants:\n        - {{ name: control, weight: 1 }}\n        - {{ name: candidate, weight: 1 }}\n",
        a = a.url,
        b = b.url
    );
    Gateway::start_with_env(&yaml, &[("ADMIN_TOKEN", TOKEN)])
}

/// Sends requests to both routes until `stop`.
fn drive(gw: &Gateway, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let url = gw.url.clone();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let body = chat_body("m", 64, false);
            let _ = client
                .post(format!("{url}/v1/chat/completions"))
                .body(body.clone())
                .send()
                .await;
            let _ = client
                .post(format!("{url}/other/{i}"))
                .body(body)
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Runs headless Chromium on a fresh profile; a missing Chromium fails the test.
fn chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium (make deps installs it): {e}"));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-` attributes of each `<tr>` the page rendered.
fn rows(dom: &str) -> Vec<Vec<(String, String)>> {
    dom.split("<tr ")
        .skip(1)
        .map(|tr| {
            let tag = &tr[..tr.find('>').unwrap_or(tr.len())];
            tag.split("\" ")
                .filter_map(|attr| {
                    let (k, v) = attr.split_once("=\"")?;
                    Some((
                        k.trim().trim_start_matches("data-").to_string(),
                        v.trim_end_matches('"').replace("&amp;", "&"),
                    ))
                })
                .collect()
        })
        .collect()
}

fn attr<'a>(row: &'a [(String, String)], name: &str) -> Option<&'a str> {
    row.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_every_route_with_traffic_every_endpoint_and_the_variants() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let gw = gateway(&a, &b);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = drive(&gw, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let page = format!("{}/#token={TOKEN}", gw.admin);
    let shot = workspace().join("target/status-page.png");
    let (dom, _) = tokio::task::spawn_blocking(move || {
        let dom = chromium(&["--dump-dom", &page]);
        let shot_arg = format!("--screenshot={}", shot.display());
        (dom, chromium(&["--window-size=1280,800", &shot_arg, &page]))
    })
    .await
    .unwrap();
    let shot = workspace().join("target/status-page.png");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();

    let rows = rows(&dom);
    for route in ["cached", "ab"] {
        let row = rows
            .iter()
            .find(|r| attr(r, "route") == Some(route) && attr(r, "rps").is_some())
            .unwrap_or_else(|| panic!("no row for route {route} in\n{dom}"));
        let rps: f64 = attr(row, "rps").unwrap().parse().unwrap();
        assert!(rps > 0.0, "route {route} shows {rps} req/s\n{dom}");
    }
    for mock in [&a, &b] {
        let row = rows
            .iter()
            .find(|r| attr(r, "endpoint") == Some(mock.url.as_str()))
            .unwrap_or_else(|| panic!("no row for endpoint {} in\n{dom}", mock.url));
        assert_eq!(attr(row, "healthy"), Some("true"), "{dom}");
    }
    for variant in ["control", "candidate"] {
        assert!(
            rows.iter()
                .any(|r| attr(r, "route") == Some("ab") && attr(r, "variant") == Some(variant)),
            "variant {variant} missing\n{dom}"
        );
    }
    assert!(!dom.contains(TOKEN), "the token stays out of the page");
    let png = std::fs::metadata(&shot).expect("screenshot written");
    assert!(png.len() > 10_000, "screenshot is {} bytes", png.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_keep_their_shape_and_need_the_admin_token() {
    let (a, b) = (Mock::start("a", &[]), Mock::start("b", &[]));
    let gw = gateway(&a, &b);
    let client = reqwest::Client::new();
    let stats = format!("{}/admin/stats", gw.admin);
    assert_eq!(status(client.get(&stats)).await, 401);
    // The page itself holds no data, so it needs no token.
    assert_eq!(status(client.get(format!("{}/", gw.admin))).await, 200);
    for _ in 0..5 {
        let body = chat_body("m", 64, false);
        let r = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let v: Value = client
        .get(&stats)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "cached")
        .unwrap_or_else(|| panic!("{v}"));
    for field in [
        "rps",
        "error_rate",
        "p50_s",
        "p99_s",
        "gateway_p99_s",
        "cache_hit_rate",
        "rate_limited",
    ] {
        assert!(route.get(field).is_some(), "routes[].{field} missing: {v}");
    }
    let endpoint = &v["endpoints"][0];
    for field in ["upstream", "endpoint", "healthy", "ewma_s", "inflight"] {
        assert!(
            endpoint.get(field).is_some(),
            "endpoints[].{field} missing: {v}"
        );
    }
    let variant = &v["variants"][0];
    for field in ["route", "variant", "share"] {
        assert!(
            variant.get(field).is_some(),
            "variants[].{field} missing: {v}"
        );
    }
}

#[test]
fn the_page_is_self_contained() {
    let page = std::fs::read_to_string(workspace().join("gateway/src/admin/status.html")).unwrap();
    let lower = page.to_ascii_lowercase();
    for outside in [
        "<script src",
        "<link",
        "<img",
        "@import",
        "url(",
        "src=\"http",
        "href=\"http",
    ] {
        assert!(
            !lower.contains(outside),
            "the status page loads `{outside}`"
        );
    }
}
