//! Helpers for the A/B split end-to-end tests (`ab_split.rs`): configs with a control and a
//! candidate upstream, what an answer says about its variant, bounded-concurrency sweeps over many users, and
//! finding a user on each side of a split.

use futures_util::stream::{self, StreamExt};
use serde_json::json;
pub use sluice_e2e::Answer;
use sluice_e2e::{metric_value, Gateway, Mock, PATIENCE};
use std::time::{Duration, Instant};

/// The chat path every split route here serves.
pub const CHAT: &str = "/v1/chat/completions";

/// Requests in flight during a sweep: enough to keep both cores busy, few enough for one mock.
const IN_FLIGHT: usize = 16;

/// The `x-mock-instance` names of the two mocks.
pub const CONTROL_MOCK: &str = "control";
pub const CAND_MOCK: &str = "cand";

/// The candidate of the contract: its own upstream, a smaller model, an extra header.
pub const CAND_REWRITTEN: &str = "          upstream: cand-up\n          set: { model: mock-small }\n          headers: { x-experiment: \"cand\" }\n";

/// A route's split, rendered by [`route`].
pub struct Split<'a> {
    /// `sticky:` value, or "" for none.
    pub sticky: &'a str,
    pub allow_override: bool,
    /// Weights of `control` and `candidate`.
    pub weights: (u32, u32),
    /// Extra YAML lines of the candidate variant (10-space indent), e.g. [`CAND_REWRITTEN`].
    pub candidate: &'a str,
}

impl Split<'_> {
    /// The contract's split: 80/20 on `header:x-user-id`, overridable, rewritten candidate.
    pub fn contract() -> Split<'static> {
        Split {
            sticky: "header:x-user-id",
            allow_override: true,
            weights: (80, 20),
            candidate: CAND_REWRITTEN,
        }
    }
}

/// A route `name` for `path` to `control-up` with `extra` lines (4-space indent) and `split`.
pub fn route(name: &str, path: &str, extra: &str, split: &Split) -> String {
    let sticky = if split.sticky.is_empty() {
        String::new()
    } else {
        format!("      sticky: {}\n", split.sticky)
    };
    format!(
        "  - name: {name}\n    match: {{ path_prefix: {path} }}\n    upstream: control-up\n{extra}    split:\n      salt: exp-1\n{sticky}      allow_override: {}\n      variants:\n        - {{ name: control, weight: {} }}\n        - name: candidate\n          weight: {}\n{}",
        split.allow_override, split.weights.0, split.weights.1, split.candidate
    )
}

/// A whole config: upstreams `control-up` and `cand-up`, `top` lines (e.g. `pricing:`), routes.
pub fn yaml(control: &Mock, cand: &Mock, top: &str, routes: &str) -> String {
    format!(
        "server:\n  listen: [\"{{listen}}\"]\n  threads: 2\n  max_body_bytes: 8MiB\n  grace_period: 10s\nadmin:\n  listen: \"{{admin}}\"\nupstreams:\n  control-up: {{ endpoints: [ {{ url: \"{}\" }} ] }}\n  cand-up: {{ endpoints: [ {{ url: \"{}\" }} ] }}\n{top}routes:\n{routes}",
        control.url, cand.url
    )
}

/// The two mocks, named [`CONTROL_MOCK`] and [`CAND_MOCK`].
pub fn mocks() -> (Mock, Mock) {
    (Mock::start(CONTROL_MOCK, &[]), Mock::start(CAND_MOCK, &[]))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A chat body for model `mock-gpt-4o` saying `content`.
pub fn prompt(content: &str) -> String {
    json!({"model": "mock-gpt-4o", "messages": [{"role": "user", "content": content}]}).to_string()
}

/// What the A/B tests read from an answer; a missing header reads as `<none>`.
pub trait Seen {
    fn seen(&self, header: &str) -> &str;
    fn variant(&self) -> &str {
        self.seen("x-sluice-variant")
    }
    fn instance(&self) -> &str {
        self.seen("x-mock-instance")
    }
    /// The answer's `model` (mock-llm echoes the model it was asked for).
    fn model(&self) -> String;
    /// `usage.prompt_tokens` and `usage.completion_tokens`.
    fn usage(&self) -> (u64, u64);
}

impl Seen for Answer {
    fn seen(&self, header: &str) -> &str {
        self.header(header).unwrap_or("<none>")
    }
    fn model(&self) -> String {
        self.json()["model"]
            .as_str()
            .unwrap_or("<none>")
            .to_string()
    }
    fn usage(&self) -> (u64, u64) {
        let v = self.json();
        let n = |k: &str| v["usage"][k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
        (n("prompt_tokens"), n("completion_tokens"))
    }
}

/// POSTs `body` to `path` as `user` (the `x-user-id` header, when given) with `headers`.
pub async fn ask(
    client: &reqwest::Client,
    gw: &Gateway,
    path: &str,
    user: Option<&str>,
    headers: &[(&str, &str)],
    body: String,
) -> Answer {
    let mut req = client
        .post(format!("{}{path}", gw.url))
        .header("content-type", "application/json")
        .body(body);
    if let Some(user) = user {
        req = req.header("x-user-id", user);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Answer::read(req).await
}

/// `n` user ids, the same on every call.
pub fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// Each user (or, for `None`, an anonymous client) asks the chat path once, [`IN_FLIGHT`] at a
/// time; the answers in the order of `users`.
pub async fn sweep(
    client: &reqwest::Client,
    gw: &Gateway,
    users: &[Option<String>],
) -> Vec<Answer> {
    stream::iter(users.iter().enumerate())
        .map(|(i, user)| {
            let body = prompt(&format!("question {i} from {user:?}"));
            ask(client, gw, CHAT, user.as_deref(), &[], body)
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// The variant of each answer, after checking it succeeded and came from the variant's mock
/// (`cand_mock`: which mock the candidate's upstream is).
pub fn variants(answers: &[Answer], cand_mock: &str) -> Vec<String> {
    answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, 200, "{a:?}");
            let want_mock = match a.variant() {
                "control" => CONTROL_MOCK,
                "candidate" => cand_mock,
                other => panic!("x-sluice-variant is {other:?}: {a:?}"),
            };
            assert_eq!(a.instance(), want_mock, "{a:?}");
            a.variant().to_string()
        })
        .collect()
}

/// The sticky variant of each of `users` on the chat path of `gw` (candidate on `cand-up`).
pub async fn assign(client: &reqwest::Client, gw: &Gateway, users: &[String]) -> Vec<String> {
    let named: Vec<Option<String>> = users.iter().cloned().map(Some).collect();
    variants(&sweep(client, gw, &named).await, CAND_MOCK)
}

/// The share of `name` among `variants`.
pub fn share(variants: &[String], name: &str) -> f64 {
    variants.iter().filter(|v| *v == name).count() as f64 / variants.len() as f64
}

/// A user whose sticky variant is control and one whose is candidate, by trying ids in turn
/// (each with a prompt of its own, so no two probes share a cache entry).
pub async fn control_and_candidate_users(
    client: &reqwest::Client,
    gw: &Gateway,
) -> (String, String) {
    let (mut control, mut candidate) = (None, None);
    for i in 0..200 {
        let user = format!("probe-{i}");
        let a = ask(client, gw, CHAT, Some(&user), &[], prompt(&user)).await;
        assert_eq!(a.status, 200, "{a:?}");
        match a.variant() {
            "control" => control = control.or(Some(user)),
            "candidate" => candidate = candidate.or(Some(user)),
            other => panic!("x-sluice-variant is {other:?}: {a:?}"),
        }
        if let (Some(c), Some(k)) = (&control, &candidate) {
            return (c.clone(), k.clone());
        }
    }
    panic!(
        "200 users did not give one of each variant: control {control:?}, candidate {candidate:?}"
    );
}

/// Waits until `sluice_config_reloads_total{result="ok"}` exceeds `before`.
pub async fn reloaded(gw: &Gateway, before: f64) {
    let ok = "sluice_config_reloads_total{result=\"ok\"}";
    let deadline = Instant::now() + PATIENCE;
    while metric_value(&gw.metrics().await, ok) <= before {
        assert!(
            Instant::now() < deadline,
            "no successful reload within {PATIENCE:?}; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
