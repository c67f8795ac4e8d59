//! The families operators' dashboards and alerts read, from a running sluice: process metrics,
//! the gateway's own time per route and phase, the OpenTelemetry GenAI families, and the limits
//! predictive alerts compare against (cache size, queue capacity, what budgets have left).
//! The whole exposition passes `promtool check metrics`.

use sluice_e2e::{config, metric_sum, metric_value, sha256, Gateway, Mock};
use std::io::Write;
use std::process::{Command, Stdio};

const KEY: &str = "sk-families-key";

fn yaml(mock: &Mock) -> String {
    let routes = "  - name: chat\n    upstream: up\n    auth: required\n    cache: { ttl: 60s }\n    limits:\n      - { name: tpm, key: route, tokens_per_minute: 100000, default_max_tokens: 64 }\n";
    config(
        &[&mock.url],
        "    max_concurrency: 4\n    queue: { max: 8, timeout: 2s }\n",
        routes,
    ) + &format!(
        "cache:\n  memory: {{ max_bytes: 16MiB }}\n\
         keys:\n  - {{ name: app-a, team: red, hash: \"sha256:{}\", budget: {{ usd: 5, per: 30d }} }}\n\
         pricing:\n  mock-gpt-4o: {{ input: 1, output: 100 }}\n",
        sha256(KEY.as_bytes())
    )
}

fn body(i: usize, stream: bool) -> String {
    serde_json::json!({
        "model": "mock-gpt-4o", "max_tokens": 16, "stream": stream,
        "messages": [{"role": "user", "content": format!("question {i}")}]
    })
    .to_string()
}

async fn scrape(client: &reqwest::Client, gw: &Gateway) -> String {
    client
        .get(format!("{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn operators_families_are_exported_and_promtool_finds_nothing_to_fix() {
    let mock = Mock::start("a", &[]);
    let gw = Gateway::start(&yaml(&mock));
    let client = reqwest::Client::new();
    // 6 answers (every other one streamed) and 2 cache hits of the first two.
    for i in [0, 1, 2, 3, 4, 5, 0, 1] {
        let resp = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(KEY)
            .body(body(i, i % 2 == 1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let text = scrape(&client, &gw).await;

    assert!(metric_value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(metric_value(&text, "process_open_fds") > 0.0);
    let started = metric_value(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - started).abs() < 600.0,
        "start time {started}, now {now}"
    );
    assert!(text.contains("\nprocess_cpu_seconds_total "));

    let chat = [("route", "chat")];
    assert_eq!(
        metric_sum(&text, "sluice_gateway_seconds_count", &chat),
        8.0
    );
    let phase = |p: &str| {
        metric_sum(
            &text,
            "sluice_gateway_phase_seconds_count",
            &[("route", "chat"), ("phase", p)],
        )
    };
    for p in ["route", "body_read", "split", "limits", "cache_lookup"] {
        assert_eq!(phase(p), 8.0, "phase {p}");
    }
    // Hits end at the cache: only the 6 forwarded requests queue and set up a forward.
    assert_eq!(phase("queue_wait"), 6.0);
    assert_eq!(phase("forward_setup"), 6.0);
    let gateway = metric_sum(&text, "sluice_gateway_seconds_sum", &chat);
    let total = metric_sum(&text, "sluice_request_duration_seconds_sum", &chat);
    assert!(
        gateway > 0.0 && gateway < total,
        "gateway {gateway} of {total}"
    );

    let genai = [
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "up"),
        ("gen_ai_request_model", "mock-gpt-4o"),
    ];
    let count = |name: &str, extra: &[(&str, &str)]| {
        let labels: Vec<(&str, &str)> = genai.iter().chain(extra).copied().collect();
        metric_sum(&text, name, &labels)
    };
    assert_eq!(
        count(
            "gen_ai_server_request_duration_seconds_count",
            &[("error_type", "")]
        ),
        8.0
    );
    assert_eq!(
        count("gen_ai_server_time_to_first_token_seconds_count", &[]),
        8.0
    );
    assert!(count("gen_ai_server_time_per_output_token_seconds_count", &[]) >= 6.0);
    for kind in ["input", "output"] {
        let n = count(
            "gen_ai_client_token_usage_count",
            &[("gen_ai_token_type", kind)],
        );
        assert_eq!(n, 6.0, "{kind} token usage of the 6 answers");
    }

    assert_eq!(
        metric_sum(&text, "sluice_cache_max_bytes", &[("tier", "memory")]),
        16_777_216.0
    );
    assert_eq!(
        metric_sum(&text, "sluice_queue_max", &[("upstream", "up")]),
        8.0
    );
    let left = metric_sum(
        &text,
        "sluice_key_budget_remaining_usd",
        &[("key", "app-a"), ("team", "red")],
    );
    assert!(
        left > 4.9 && left < 5.0,
        "the key has spent some of $5: {left} left"
    );

    promtool_check(&text);
}

/// `promtool check metrics` reads the exposition on stdin and lists every problem.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool (make deps installs it): {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
