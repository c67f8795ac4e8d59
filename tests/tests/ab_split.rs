//! A/B splits end to end: sticky weighted assignment over many users that survives a restart,
//! the candidate's upstream, model rewrite and headers, the override header, variant-separated
//! cache entries, a weight change by reload that moves only the users it must, per-variant
//! metrics and cost, and the per-request draw when a request has no sticky key.

mod ab_support;

use ab_support::*;
use sluice_e2e::{metric_sum, metric_value, Gateway, UpstreamCalls};

/// Tolerance of a variant's share over [`USERS`] users (about three standard deviations).
const SHARE_TOLERANCE: f64 = 0.03;

/// Users in the sweeps that measure a share.
const USERS: usize = 1_500;

fn assert_share(variants: &[String], want: f64, what: &str) {
    let got = share(variants, "candidate");
    assert!(
        (got - want).abs() <= SHARE_TOLERANCE,
        "{what}: candidate share {got:.4} over {} users, want {want} ± {SHARE_TOLERANCE}",
        variants.len()
    );
}

/// The users whose variants differ between `a` and `b`, with both variants.
fn moved<'a>(users: &'a [String], a: &[String], b: &[String]) -> Vec<(&'a str, String, String)> {
    users
        .iter()
        .zip(a.iter().zip(b))
        .filter(|(_, (x, y))| x != y)
        .map(|(u, (x, y))| (u.as_str(), x.clone(), y.clone()))
        .collect()
}

#[tokio::test]
async fn sticky_80_20_split_holds_per_user_and_across_a_restart() {
    let (control, cand) = mocks();
    let config = yaml(
        &control,
        &cand,
        "",
        &route("chat", CHAT, "", &Split::contract()),
    );
    let gw = Gateway::start(&config);
    let client = client();
    let users = users(USERS);
    let first = assign(&client, &gw, &users).await;
    eprintln!(
        "80/20 over {USERS} users: candidate share {:.4}",
        share(&first, "candidate")
    );
    assert_share(&first, 0.20, "80/20");

    let again = assign(&client, &gw, &users[..300]).await;
    let changed = moved(&users[..300], &first[..300], &again);
    assert!(
        changed.is_empty(),
        "asked again, users changed variant: {changed:?}"
    );

    drop(gw);
    let restarted = Gateway::start(&config);
    let after = assign(&client, &restarted, &users[..300]).await;
    let changed = moved(&users[..300], &first[..300], &after);
    assert!(
        changed.is_empty(),
        "after a restart, users changed variant: {changed:?}"
    );
}

#[tokio::test]
async fn the_candidate_reaches_its_upstream_with_the_model_and_headers_rewritten() {
    let (control, cand) = mocks();
    let split = Split::contract();
    let routes = format!(
        "{}{}",
        route("chat", CHAT, "", &split),
        route("echo", "/mock/echo", "", &split)
    );
    let gw = Gateway::start(&yaml(&control, &cand, "", &routes));
    let client = client();
    let answers = sweep(
        &client,
        &gw,
        &users(60).into_iter().map(Some).collect::<Vec<_>>(),
    )
    .await;
    let variants = variants(&answers, CAND_MOCK);
    for (a, v) in answers.iter().zip(&variants) {
        let want = if v == "candidate" {
            "mock-small"
        } else {
            "mock-gpt-4o"
        };
        assert_eq!(a.model(), want, "a {v} answer: {a:?}");
    }
    let seen = |name: &str| variants.iter().filter(|v| *v == name).count();
    assert!(
        seen("control") > 0 && seen("candidate") > 0,
        "60 users gave control {} and candidate {}",
        seen("control"),
        seen("candidate")
    );

    // mock-llm's echo path shows the headers that arrived: the candidate's, and only there.
    let mut echoed = Vec::new();
    for user in users(60) {
        let a = ask(&client, &gw, "/mock/echo", Some(&user), &[], prompt("echo")).await;
        assert_eq!(a.status, 200, "{a:?}");
        let experiment = a.json()["headers"]["x-experiment"]
            .as_str()
            .map(str::to_string);
        match (a.variant(), a.instance()) {
            ("candidate", CAND_MOCK) => assert_eq!(experiment.as_deref(), Some("cand"), "{a:?}"),
            ("control", CONTROL_MOCK) => assert_eq!(experiment, None, "{a:?}"),
            other => panic!("variant and mock {other:?}: {a:?}"),
        }
        echoed.push(a.variant().to_string());
    }
    assert!(
        echoed.iter().any(|v| v == "candidate") && echoed.iter().any(|v| v == "control"),
        "the echo route gave only {echoed:?}"
    );
}

#[tokio::test]
async fn the_override_header_forces_a_variant_only_when_allowed() {
    let (control, cand) = mocks();
    let allowed = Split::contract();
    let gw = Gateway::start(&yaml(
        &control,
        &cand,
        "",
        &route("chat", CHAT, "", &allowed),
    ));
    let client = client();
    let (ctl_user, cand_user) = control_and_candidate_users(&client, &gw).await;
    let force = |name| [("x-sluice-variant", name)];

    let a = ask(
        &client,
        &gw,
        CHAT,
        Some(&ctl_user),
        &force("candidate"),
        prompt("q"),
    )
    .await;
    assert_eq!(
        (a.status, a.variant(), a.instance()),
        (200, "candidate", CAND_MOCK),
        "{a:?}"
    );
    assert_eq!(a.model(), "mock-small", "{a:?}");
    let a = ask(
        &client,
        &gw,
        CHAT,
        Some(&cand_user),
        &force("control"),
        prompt("q"),
    )
    .await;
    assert_eq!(
        (a.status, a.variant(), a.instance()),
        (200, "control", CONTROL_MOCK),
        "{a:?}"
    );
    assert_eq!(a.model(), "mock-gpt-4o", "{a:?}");

    // An unknown name is the client's mistake: a 400 in OpenAI's shape, no upstream call.
    let (mut at_control, mut at_cand) = (UpstreamCalls::of(&control), UpstreamCalls::of(&cand));
    let before = (at_control.calls().await, at_cand.calls().await);
    let a = ask(
        &client,
        &gw,
        CHAT,
        Some(&ctl_user),
        &force("nope"),
        prompt("q"),
    )
    .await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        a.seen("content-type").starts_with("application/json"),
        "{a:?}"
    );
    let error = &a.json()["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()) && error["type"].is_string(),
        "not an OpenAI-shaped error: {a:?}"
    );
    assert_eq!(
        (at_control.calls().await, at_cand.calls().await),
        before,
        "a refused override reached an upstream"
    );

    // With allow_override: false the header is ignored and each user keeps their variant.
    let denied = Split {
        allow_override: false,
        ..Split::contract()
    };
    let gw = Gateway::start(&yaml(
        &control,
        &cand,
        "",
        &route("chat", CHAT, "", &denied),
    ));
    for (user, sticky, forced) in [
        (&ctl_user, "control", "candidate"),
        (&cand_user, "candidate", "control"),
        (&ctl_user, "control", "nope"),
    ] {
        let a = ask(&client, &gw, CHAT, Some(user), &force(forced), prompt("q")).await;
        assert_eq!(
            (a.status, a.variant()),
            (200, sticky),
            "x-sluice-variant: {forced} with allow_override: false, user {user}: {a:?}"
        );
    }
}

#[tokio::test]
async fn a_variant_never_serves_another_variants_cache_entry() {
    let (control, cand) = mocks();
    // Variants that send identical bodies to the same upstream: only the variant tells them apart.
    let same = Split {
        candidate: "",
        ..Split::contract()
    };
    let routes = route("chat", CHAT, "    cache: { ttl: 1m }\n", &same);
    let gw = Gateway::start(&yaml(&control, &cand, "", &routes));
    let client = client();
    let (ctl_user, cand_user) = control_and_candidate_users(&client, &gw).await;
    let mut upstream = UpstreamCalls::of(&control);
    let before = upstream.calls().await;

    let question = || prompt("the same question for both variants");
    let mut seen = Vec::new();
    for (user, want) in [
        (&ctl_user, ("control", "miss")),
        (&ctl_user, ("control", "hit")),
        (&cand_user, ("candidate", "miss")),
        (&cand_user, ("candidate", "hit")),
    ] {
        let a = ask(&client, &gw, CHAT, Some(user), &[], question()).await;
        assert_eq!(a.status, 200, "{a:?}");
        seen.push((a.variant().to_string(), a.cache().to_string()));
        assert_eq!(
            (a.variant(), a.cache()),
            want,
            "answers so far (variant, cache): {seen:?}; last: {a:?}"
        );
    }
    assert_eq!(
        upstream.calls().await - before,
        2,
        "one upstream call per variant"
    );

    let hits = |variant: &str, m: &str| {
        metric_sum(
            m,
            "sluice_cache_requests_total",
            &[("route", "chat"), ("variant", variant), ("result", "hit")],
        )
    };
    let m = gw
        .metrics_until(|m| hits("control", m) >= 1.0 && hits("candidate", m) >= 1.0)
        .await;
    assert_eq!(
        (hits("control", &m), hits("candidate", &m)),
        (1.0, 1.0),
        "cache hits by variant"
    );
}

#[tokio::test]
async fn raising_the_candidates_weight_by_reload_moves_only_control_users_in() {
    let (control, cand) = mocks();
    let with = |weights| {
        let split = Split {
            weights,
            ..Split::contract()
        };
        yaml(&control, &cand, "", &route("chat", CHAT, "", &split))
    };
    let gw = Gateway::start(&with((80, 20)));
    let client = client();
    let users = users(USERS);
    let before = assign(&client, &gw, &users).await;

    let reloads = metric_value(
        &gw.metrics().await,
        "sluice_config_reloads_total{result=\"ok\"}",
    );
    gw.write_config(&with((70, 30)));
    reloaded(&gw, reloads).await;
    let after = assign(&client, &gw, &users).await;

    let changed = moved(&users, &before, &after);
    let left: Vec<_> = changed
        .iter()
        .filter(|(_, b, _)| b == "candidate")
        .collect();
    let joined = changed.len() - left.len();
    eprintln!(
        "80/20 -> 70/30 over {USERS} users: candidate share {:.4} -> {:.4}; {} left the candidate, {joined} ({:.4}) moved control -> candidate",
        share(&before, "candidate"),
        share(&after, "candidate"),
        left.len(),
        joined as f64 / USERS as f64
    );
    assert!(left.is_empty(), "users left the candidate: {left:?}");
    assert_share(&after, 0.30, "70/30 after the reload");
    assert!(
        joined as f64 / USERS as f64 <= 0.13,
        "{joined} of {USERS} users moved: a reshuffle, not consistent bucketing"
    );

    let m = gw.metrics().await;
    let weight = |variant| {
        metric_sum(
            &m,
            "sluice_split_weight",
            &[("route", "chat"), ("variant", variant)],
        )
    };
    assert_eq!(
        (weight("control"), weight("candidate")),
        (70.0, 30.0),
        "sluice_split_weight after the reload"
    );
}

#[tokio::test]
async fn metrics_and_cost_are_kept_per_variant() {
    let (control, cand) = mocks();
    let pricing = "pricing:\n  mock-gpt-4o: { input: 2.5, output: 10 }\n  \"mock-small*\": { input: 0.15, output: 0.6 }\n";
    let routes = route("chat", CHAT, "", &Split::contract());
    let gw = Gateway::start(&yaml(&control, &cand, pricing, &routes));
    let client = client();
    let named: Vec<Option<String>> = users(150).into_iter().map(Some).collect();
    let answers = sweep(&client, &gw, &named).await;
    let variants = variants(&answers, CAND_MOCK);

    // What the clients saw, per variant: requests and the upstream's token counts.
    let tally = |name: &str| {
        let mine: Vec<_> = answers
            .iter()
            .zip(&variants)
            .filter(|(_, v)| *v == name)
            .map(|(a, _)| a.usage())
            .collect();
        let tokens = mine
            .iter()
            .fold((0u64, 0u64), |(p, c), (ap, ac)| (p + ap, c + ac));
        (mine.len() as f64, tokens.0 as f64, tokens.1 as f64)
    };
    let (ctl, cnd) = (tally("control"), tally("candidate"));
    assert!(
        ctl.0 > 0.0 && cnd.0 > 0.0,
        "150 users gave control {} and candidate {}",
        ctl.0,
        cnd.0
    );

    let sum = |m: &str, name: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("route", "chat")];
        all.extend_from_slice(labels);
        metric_sum(m, name, &all)
    };
    let tokens = |m: &str, variant, kind| {
        sum(
            m,
            "sluice_tokens_total",
            &[("variant", variant), ("kind", kind)],
        )
    };
    let m = gw
        .metrics_until(|m| {
            sum(m, "sluice_request_duration_seconds_count", &[]) >= ctl.0 + cnd.0
                && tokens(m, "candidate", "completion") >= cnd.2
                && tokens(m, "control", "completion") >= ctl.2
        })
        .await;
    for (variant, upstream, (requests, prompt_tokens, completion_tokens)) in [
        ("control", "control-up", ctl),
        ("candidate", "cand-up", cnd),
    ] {
        let v = [("variant", variant)];
        let vu = [("variant", variant), ("upstream", upstream)];
        for (metric, labels, want) in [
            ("sluice_requests_total", &vu[..], requests),
            ("sluice_request_duration_seconds_count", &v[..], requests),
            ("sluice_upstream_ttfb_seconds_count", &vu[..], requests),
            (
                "sluice_tokens_total",
                &[("variant", variant), ("kind", "prompt")][..],
                prompt_tokens,
            ),
            (
                "sluice_tokens_total",
                &[("variant", variant), ("kind", "completion")][..],
                completion_tokens,
            ),
        ] {
            assert_eq!(
                sum(&m, metric, labels),
                want,
                "{metric} {labels:?}; metrics:\n{m}"
            );
        }
    }

    // Cost is priced by the model the upstream was asked for, from the counted tokens.
    for (variant, input, output) in [("control", 2.5, 10.0), ("candidate", 0.15, 0.6)] {
        let (p, c) = (
            tokens(&m, variant, "prompt"),
            tokens(&m, variant, "completion"),
        );
        let want = p / 1e6 * input + c / 1e6 * output;
        let got = sum(&m, "sluice_cost_usd_total", &[("variant", variant)]);
        eprintln!("{variant}: {p} prompt + {c} completion tokens, cost {got} USD (want {want})");
        assert!(got > 0.0, "no cost for {variant}; metrics:\n{m}");
        assert!(
            (got - want).abs() <= want * 1e-9,
            "{variant}: sluice_cost_usd_total {got}, want {want} from {p} prompt and {c} completion tokens"
        );
    }
}

#[tokio::test]
async fn without_a_sticky_key_each_request_is_drawn_by_weight() {
    let (control, cand) = mocks();
    let gw = Gateway::start(&yaml(
        &control,
        &cand,
        "",
        &route("chat", CHAT, "", &Split::contract()),
    ));
    let client = client();
    let anonymous: Vec<Option<String>> = (0..200).map(|_| None).collect();
    let variants = variants(&sweep(&client, &gw, &anonymous).await, CAND_MOCK);
    let got = share(&variants, "candidate");
    eprintln!("200 requests without x-user-id: candidate share {got:.3}");
    assert!(
        (0.10..=0.30).contains(&got),
        "candidate share {got} over 200 anonymous requests, want 0.10..=0.30"
    );
}

#[tokio::test]
async fn an_error_sluice_makes_for_a_variant_still_names_it() {
    let (control, mut cand) = mocks();
    let gw = Gateway::start(&yaml(
        &control,
        &cand,
        "",
        &route("chat", CHAT, "", &Split::contract()),
    ));
    cand.stop();
    let client = client();
    let force = |name| [("x-sluice-variant", name)];
    let a = ask(&client, &gw, CHAT, None, &force("candidate"), prompt("q")).await;
    assert_eq!((a.status, a.variant()), (502, "candidate"), "{a:?}");
    assert!(a.json()["error"]["message"].is_string(), "{a:?}");
    let a = ask(&client, &gw, CHAT, None, &force("control"), prompt("q")).await;
    assert_eq!((a.status, a.variant()), (200, "control"), "{a:?}");
}
