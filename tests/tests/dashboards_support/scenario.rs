//! One sluice with every feature the dashboards show, and traffic that makes each metric
//! family appear: a split, a cache on all three tiers (one disk file damaged before start,
//! a memory tier small enough to evict), request and token limits (one shared in Redis), a
//! queue that fills and times out, a client key with a dollar budget, a failing endpoint that
//! is retried and ejected, a dead upstream whose route falls back, an upstream whose retries
//! the budget refuses, streams, an upstream 5xx, a failed and a good reload, and Redis going away.
//! A second sluice without Redis keeps a key's budget itself.

use futures_util::future::join_all;
use serde_json::json;
use sluice_e2e::{config, free_port, metric_sum, sha256, Gateway, Mock, RedisServer};

/// The client key with a budget (`keys:` holds its hash).
const KEY: &str = "sk-sluice-dashboards-e2e";

/// The `authorization` of a caller sluice did not issue a key to (the limits count it by it).
const OTHER_KEY: &str = "Bearer sk-not-a-sluice-key";

/// The key of the second sluice, whose budget is its own (no Redis).
const LOCAL_KEY: &str = "sk-sluice-dashboards-local";

/// The running processes; dropping it stops them.
pub struct Scenario {
    pub gw: Gateway,
    /// A second sluice without Redis: a key budget kept by the instance itself (a budget in
    /// Redis has no per-instance remainder to report).
    pub local: Gateway,
    pub redis: RedisServer,
    _mocks: Vec<Mock>,
    _dir: tempfile::TempDir,
    yaml: String,
}

impl Scenario {
    /// Starts the mocks, Redis and sluice (traffic comes from [`Scenario::drive`]).
    pub fn start() -> Scenario {
        let good = Mock::start("good", &[]);
        let failing = Mock::start("failing", &["--status", "503"]);
        let failing2 = Mock::start("failing-2", &["--status", "503"]);
        let candidate = Mock::start("candidate", &[]);
        let slow = Mock::start("slow", &[]);
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("cache");
        std::fs::create_dir_all(&disk).unwrap();
        // Not a redb file: sluice sets it aside at start and counts a disk reset.
        std::fs::write(disk.join("cache.redb"), vec![0xa5u8; 4096]).unwrap();
        let yaml = format!(
            r#"server:
  listen: ["{{listen}}"]
  threads: 1
admin:
  listen: "{{admin}}"
redis: {{ url: "{redis}", timeout: 100ms }}
cache:
  memory: {{ max_bytes: 4KiB }}
  redis: true
  disk: {{ path: "{disk}", max_bytes: 1MiB }}
pricing:
  mock-gpt-4o: {{ input: 2.5, output: 10 }}
  "mock-small*": {{ input: 0.15, output: 0.6 }}
keys:
  - {{ name: app-a, team: red, hash: "sha256:{hash}", budget: {{ usd: 5, per: 30d }} }}
upstreams:
  primary:
    endpoints: [ {{ url: "{good}" }}, {{ url: "{failing}" }} ]
    retry: {{ attempts: 1, on: [503] }}
    outlier: {{ consecutive_failures: 2, base_ejection: 30s }}
  candidate:
    endpoints: [ {{ url: "{candidate}" }} ]
  slow:
    endpoints: [ {{ url: "{slow}" }} ]
    max_concurrency: 1
    queue: {{ max: 1, timeout: 300ms }}
  broken:
    endpoints: [ {{ url: "http://127.0.0.1:{dead1}" }}, {{ url: "http://127.0.0.1:{dead2}" }} ]
    retry: {{ attempts: 1, on: [connect] }}
  refusing:
    endpoints: [ {{ url: "{failing}" }}, {{ url: "{failing2}" }} ]
    retry: {{ attempts: 1, on: [503], budget: {{ ratio: 0, min_per_second: 0 }} }}
routes:
  - name: chat
    match: {{ path_prefix: /v1/chat/completions, headers: {{ x-test: chat }} }}
    upstream: primary
    auth: optional
    cache: {{ ttl: 60s }}
    limits:
      - {{ name: rps, key: api_key, requests_per_second: 1000, burst: 1000, shared: true }}
      - {{ name: tpm, key: api_key, tokens_per_minute: 1000000 }}
    split:
      salt: dashboards
      allow_override: true
      variants:
        - {{ name: control, weight: 80 }}
        - {{ name: candidate, weight: 20, upstream: candidate, set: {{ model: mock-small }} }}
  - name: limited
    match: {{ path_prefix: /v1/chat/completions, headers: {{ x-test: limited }} }}
    upstream: candidate
    limits:
      - {{ name: two-per-minute, key: api_key, requests_per_minute: 2, burst: 2 }}
      - {{ name: tokens, key: api_key, tokens_per_minute: 3000, default_max_tokens: 2000 }}
  - name: queued
    match: {{ path_prefix: /v1/chat/completions, headers: {{ x-test: queued }} }}
    upstream: slow
  - name: fallback
    match: {{ path_prefix: /v1/chat/completions, headers: {{ x-test: fallback }} }}
    upstream: broken
    fallback: [candidate]
  - name: refused
    match: {{ path_prefix: /v1/chat/completions, headers: {{ x-test: refused }} }}
    upstream: refusing
  - name: plain
    match: {{ path_prefix: /v1/ }}
    upstream: candidate
"#,
            redis = redis.url(),
            disk = disk.display(),
            hash = sha256(KEY.as_bytes()),
            good = good.url,
            failing = failing.url,
            candidate = candidate.url,
            slow = slow.url,
            failing2 = failing2.url,
            dead1 = free_port(),
            dead2 = free_port(),
        );
        let gw = Gateway::start(&yaml);
        let local = Gateway::start(&config(
            &[&candidate.url],
            "",
            &format!(
                "  - name: chat\n    upstream: up\n    auth: required\n\
                 keys:\n  - {{ name: app-b, team: blue, hash: \"sha256:{}\", budget: {{ usd: 5, per: 30d }} }}\n\
                 pricing:\n  \"mock-small*\": {{ input: 0.15, output: 0.6 }}\n",
                sha256(LOCAL_KEY.as_bytes())
            ),
        ));
        Scenario {
            gw,
            local,
            redis,
            _mocks: vec![good, failing, failing2, candidate, slow],
            _dir: dir,
            yaml,
        }
    }

    /// `host:port` of each sluice's admin listener, whose `/metrics` Prometheus scrapes.
    pub fn admin_addrs(&self) -> [&str; 2] {
        [&self.gw, &self.local].map(|gw| gw.admin.trim_start_matches("http://"))
    }

    /// A request with the local sluice's key, charged to its own budget.
    async fn spend_locally(&self, client: &reqwest::Client) {
        let resp = client
            .post(format!("{}/v1/chat/completions", self.local.url))
            .bearer_auth(LOCAL_KEY)
            .json(&json!({"model": "mock-small", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{}", self.local.log_text());
    }

    /// Sends the traffic that touches every feature; each step asserts what it must get, so
    /// a scenario that stops exercising something fails here rather than as an empty panel.
    pub async fn drive(&mut self) {
        let client = reqwest::Client::new();
        self.chat(&client).await;
        self.limited(&client).await;
        self.queued(&client).await;
        self.fallback(&client).await;
        self.plain(&client).await;
        self.reloads().await;
        self.redis_outage(&client).await;
        self.spend_locally(&client).await;
    }

    /// A lighter second round after Prometheus has seen the first: a rate over a series
    /// counts only what it gained after its first scrape, so the series the first round
    /// created must grow again for ratios and quantiles to have something to divide.
    pub async fn again(&self) {
        let client = reqwest::Client::new();
        let auth = format!("Bearer {KEY}");
        for (i, variant) in ["control", "candidate", "control", "candidate"]
            .iter()
            .enumerate()
        {
            let body = json!({"model": "mock-gpt-4o", "stream": i == 0, "max_tokens": 32,
                              "messages": [{"role": "user", "content": format!("again {}", i % 2)}]});
            let headers = [
                ("authorization", auth.as_str()),
                ("x-sluice-variant", *variant),
                ("x-mock-token-delay-ms", "2"),
            ];
            let (status, text, _) = self.post(&client, "chat", body, &headers).await;
            assert_eq!(status, 200, "{text}");
        }
        let body =
            json!({"model": "mock-small", "messages": [{"role": "user", "content": "again"}]});
        let other = [("authorization", OTHER_KEY)];
        let (status, _, _) = self.post(&client, "limited", body.clone(), &other).await;
        assert_eq!(status, 429, "still over two requests a minute");
        for route in ["queued", "fallback"] {
            let (status, text, _) = self.post(&client, route, body.clone(), &[]).await;
            assert_eq!(status, 200, "{route}: {text}");
        }
        self.plain(&client).await;
        self.spend_locally(&client).await;
    }

    /// One request to `/v1/chat/completions` on the route `x-test` names.
    async fn post(
        &self,
        client: &reqwest::Client,
        route: &str,
        body: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let mut req = client
            .post(format!("{}/v1/chat/completions", self.gw.url))
            .header("x-test", route)
            .json(&body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.expect("request");
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, resp.text().await.unwrap_or_default(), headers)
    }

    /// The split, cache and budget route: misses, hits, a bypass, coalesced requests and
    /// streams, on both variants, with the budgeted key; the control's upstream has a
    /// failing endpoint, retried and then ejected.
    async fn chat(&self, client: &reqwest::Client) {
        let auth = format!("Bearer {KEY}");
        let body = |i: usize, stream: bool| {
            json!({"model": "mock-gpt-4o", "stream": stream, "max_tokens": 32,
                   "messages": [{"role": "user", "content": format!("question {i} {}", "x".repeat(400))}]})
        };
        for round in ["miss", "hit"] {
            for i in 0..8 {
                let variant = if i % 2 == 0 { "control" } else { "candidate" };
                let headers = [
                    ("authorization", auth.as_str()),
                    ("x-sluice-variant", variant),
                    ("x-mock-token-delay-ms", "2"),
                ];
                let (status, text, h) = self
                    .post(client, "chat", body(i, i % 4 < 2), &headers)
                    .await;
                assert_eq!(
                    status,
                    200,
                    "chat {i} ({round}): {text}\n{}",
                    self.gw.log_text()
                );
                if round == "miss" {
                    assert_eq!(h["x-sluice-cache"], "miss", "chat {i}: {h:?}");
                }
            }
        }
        let no_store = [("cache-control", "no-store")];
        let (status, _, h) = self.post(client, "chat", body(0, false), &no_store).await;
        assert_eq!(status, 200);
        assert_eq!(h["x-sluice-cache"], "bypass", "{h:?}");
        // Two identical requests at once: the second waits for the first's answer.
        let slow = [
            ("x-mock-latency-ms", "500"),
            ("authorization", auth.as_str()),
            ("x-sluice-variant", "control"),
        ];
        let both =
            join_all((0..2).map(|_| self.post(client, "chat", body(100, false), &slow))).await;
        let results: Vec<_> = both
            .iter()
            .map(|(s, _, h)| (*s, h["x-sluice-cache"].clone()))
            .collect();
        assert!(
            results.iter().any(|(_, c)| c == "coalesced"),
            "one of two identical requests is coalesced: {results:?}"
        );
        let primary = [("upstream", "primary")];
        self.wait_for("sluice_upstream_retries_total", &primary, 1.0)
            .await;
        self.wait_for("sluice_upstream_ejections_total", &primary, 1.0)
            .await;
        self.wait_for("sluice_cache_evictions_total", &[("tier", "memory")], 1.0)
            .await;
        self.wait_for("sluice_cache_disk_resets_total", &[], 1.0)
            .await;
    }

    /// A route with two requests a minute and a 3,000-token budget: one passes, one is over
    /// the token budget, one over the request limit.
    async fn limited(&self, client: &reqwest::Client) {
        let auth = [("authorization", OTHER_KEY)];
        let body = |max_tokens: u32| {
            json!({"model": "mock-small", "max_tokens": max_tokens,
                   "messages": [{"role": "user", "content": "limited"}]})
        };
        // The first answer uses 1,500 tokens, so the second's 2,000 do not fit; the third is
        // over two requests a minute.
        let mut statuses = Vec::new();
        for (max_tokens, tokens) in [(2000, "1500"), (2000, "16"), (10, "16")] {
            let headers = [auth[0], ("x-mock-tokens", tokens)];
            let (status, text, _) = self
                .post(client, "limited", body(max_tokens), &headers)
                .await;
            statuses.push((status, text));
        }
        let codes: Vec<u16> = statuses.iter().map(|s| s.0).collect();
        assert_eq!(codes, [200, 429, 429], "{statuses:?}");
        let m = self.gw.metrics().await;
        for reason in ["token_budget", "rate_limit"] {
            let n = metric_sum(
                &m,
                "sluice_rejections_total",
                &[("route", "limited"), ("reason", reason)],
            );
            assert_eq!(n, 1.0, "{reason}: {statuses:?}");
        }
    }

    /// One slot and a queue of one: a long request holds the slot, the next waits and times
    /// out, the third finds the queue full; then one more is admitted after its wait.
    async fn queued(&self, client: &reqwest::Client) {
        let body =
            json!({"model": "mock-small", "messages": [{"role": "user", "content": "queued"}]});
        let holder = self.post(
            client,
            "queued",
            body.clone(),
            &[("x-mock-latency-ms", "1000")],
        );
        let waiter = async {
            self.wait_for("sluice_upstream_inflight", &[("upstream", "slow")], 1.0)
                .await;
            self.post(client, "queued", body.clone(), &[]).await
        };
        let refused = async {
            self.wait_for("sluice_queue_depth", &[("upstream", "slow")], 1.0)
                .await;
            self.post(client, "queued", body.clone(), &[]).await
        };
        let (held, waited, full) = tokio::join!(holder, waiter, refused);
        let codes = [held.0, waited.0, full.0];
        assert_eq!(codes, [200, 503, 503], "{held:?} {waited:?} {full:?}");
        assert!(
            waited.1.contains("queue_timeout") && full.1.contains("queue_full"),
            "{waited:?} {full:?}"
        );
        let (status, text, _) = self.post(client, "queued", body, &[]).await;
        assert_eq!(status, 200, "{text}");
    }

    /// The dead upstream: connect errors on both endpoints, then the fallback answers. And
    /// an upstream answering 503 whose retry budget (zero) refuses every retry: the 503 is
    /// relayed.
    async fn fallback(&self, client: &reqwest::Client) {
        let body =
            json!({"model": "mock-small", "messages": [{"role": "user", "content": "fall back"}]});
        for _ in 0..3 {
            let (status, text, h) = self.post(client, "fallback", body.clone(), &[]).await;
            assert_eq!(status, 200, "{text}\n{}", self.gw.log_text());
            assert_eq!(h["x-sluice-fallback"], "candidate", "{h:?}");
        }
        let (status, text, _) = self.post(client, "refused", body, &[]).await;
        assert_eq!(status, 503, "{text}");
        let refusing = [("upstream", "refusing")];
        self.wait_for(
            "sluice_upstream_retry_budget_exhausted_total",
            &refusing,
            1.0,
        )
        .await;
    }

    /// The passthrough route: a completion, an embedding and an upstream 500.
    async fn plain(&self, client: &reqwest::Client) {
        for (path, body, status) in [
            (
                "/v1/completions",
                json!({"model": "mock-small", "prompt": "hi"}),
                200,
            ),
            (
                "/v1/embeddings",
                json!({"model": "mock-small", "input": "hi"}),
                200,
            ),
            (
                "/v1/chat/completions",
                json!({"model": "mock-small", "messages": []}),
                500,
            ),
        ] {
            let resp = client
                .post(format!("{}{path}", self.gw.url))
                .header("x-mock-status", status.to_string())
                .json(&body)
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status().as_u16(), status, "{path}");
        }
    }

    /// A config that does not parse (rejected, the old one keeps serving), then a good one.
    async fn reloads(&self) {
        self.gw.write_config("routes: [\n");
        self.wait_for("sluice_config_reloads_total", &[("result", "error")], 1.0)
            .await;
        self.gw.write_config(&format!("{}# reloaded\n", self.yaml));
        self.wait_for("sluice_config_reloads_total", &[("result", "ok")], 1.0)
            .await;
    }

    /// Redis stops: the cache's Redis tier fails, the shared limit and the key's budget are
    /// decided locally, and requests are still answered.
    async fn redis_outage(&mut self, client: &reqwest::Client) {
        self.redis.stop();
        let auth = format!("Bearer {KEY}");
        for i in 0..3 {
            let body = json!({"model": "mock-gpt-4o", "messages": [{"role": "user", "content": format!("redis gone {i}")}]});
            let headers = [
                ("authorization", auth.as_str()),
                ("x-sluice-variant", "control"),
            ];
            let (status, text, _) = self.post(client, "chat", body, &headers).await;
            assert_eq!(status, 200, "{text}");
        }
        self.wait_for(
            "sluice_ratelimit_fallbacks_total",
            &[("route", "chat")],
            1.0,
        )
        .await;
        self.wait_for("sluice_cache_tier_errors_total", &[("tier", "redis")], 1.0)
            .await;
    }

    /// Polls `/metrics` until the sum of `name` with `labels` reaches `want`; fails if it never does.
    pub async fn wait_for(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let m = self
            .gw
            .metrics_until(|m| metric_sum(m, name, labels) >= want)
            .await;
        assert!(
            metric_sum(&m, name, labels) >= want,
            "{name}{labels:?} never reached {want}:\n{m}\nlog:\n{}",
            self.gw.log_text()
        );
    }
}
