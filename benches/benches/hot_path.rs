//! Micro-benchmarks of what runs on every request: path normalization, route matching, body parsing, metrics
//! recording, the prompt cache's key, L1 lookup and SSE conversions, rate and token limits,
//! the balancer's pick; and config compile time for a large policy. `cargo bench -p sluice-benches`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value};
use sluice::config::load::load_str;
use sluice::config::{compile, SharedState};
use sluice_benches::{chat_body, large_config, large_router};
use sluice_plugins::ab::split::Split;
use sluice_plugins::balance::{Balancer, EndpointStats, Strategy};
use sluice_plugins::body::RequestBody;
use sluice_plugins::cache::key::{KeyContext, KeyPolicy};
use sluice_plugins::cache::store::{CacheStore, StoreConfig};
use sluice_plugins::cache::{sse, BodyForm, CacheKey, Entry};
use sluice_plugins::limits::rate::RequestRate;
use sluice_plugins::limits::tokens::TokenBucket;
use sluice_plugins::limits::Rate;
use sluice_plugins::metrics::Metrics;
use sluice_plugins::request_target;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn route_matching(c: &mut Criterion) {
    let router = large_router(50);
    let mut g = c.benchmark_group("route_match_50_routes");
    let empty = HeaderMap::new();
    let mut team = HeaderMap::new();
    team.insert("x-team", HeaderValue::from_static("team-40"));
    g.bench_function("path_first", |b| {
        b.iter(|| router.select_head(black_box(&Method::POST), black_box("/v1/r0/chat"), &empty))
    });
    g.bench_function("path_last", |b| {
        b.iter(|| router.select_head(black_box(&Method::GET), black_box("/v1/r49/chat"), &empty))
    });
    g.bench_function("header", |b| {
        b.iter(|| router.select_head(black_box(&Method::POST), black_box("/v1/team/chat"), &team))
    });
    g.bench_function("model_glob", |b| {
        b.iter(|| {
            router.select_with_model(
                black_box(&Method::POST),
                black_box("/v1/models-route/chat"),
                &empty,
                Some(black_box("gpt-4o-mini")),
            )
        })
    });
    g.bench_function("no_match", |b| {
        b.iter(|| router.select_head(black_box(&Method::PUT), black_box("/nothing"), &empty))
    });
    g.finish();
}

fn body_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("body_parse");
    for size in [1024usize, 32 * 1024, 512 * 1024] {
        let body = chat_body("gpt-4o", size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| {
                let parsed = RequestBody::parse(black_box(body)).ok();
                black_box(parsed.as_ref().and_then(RequestBody::model).map(str::len))
            })
        });
    }
    g.finish();
}

fn metrics_recording(c: &mut Criterion) {
    let metrics = Metrics::new("bench").expect("metrics");
    let route = metrics.route("chat", "local", "");
    c.bench_function("metrics_record_request", |b| {
        b.iter(|| {
            route.inflight.inc();
            route.ttfb.observe(black_box(0.0012));
            route.duration.observe(black_box(0.0034));
            route.served.inc(black_box(200));
            route.inflight.dec();
        })
    });
}

fn config_compile(c: &mut Criterion) {
    let text = large_config(50, 20);
    let shared = SharedState::new(Metrics::new("bench").expect("metrics"));
    c.bench_function("config_load_and_compile_50_routes_20_upstreams", |b| {
        b.iter(|| {
            let loaded =
                load_str("bench.yaml", black_box(&text), &|_| Some("x".into())).expect("valid");
            compile(&loaded, &shared).expect("compiles")
        })
    });
}

/// What a caching route does with a body: parse it to a JSON object, then hash the canonical
/// form of the key fields (default include list, whitespace collapsed, scope none).
fn cache_key(c: &mut Criterion) {
    let policy = KeyPolicy::new(None, true);
    let keep = KeyPolicy::new(None, false);
    let ctx = KeyContext {
        route: "chat",
        path: "/v1/chat/completions",
        scope: b"",
        variant: "",
    };
    let mut parse = c.benchmark_group("cache_parse_map");
    for size in [1024usize, 32 * 1024, 512 * 1024] {
        let body = chat_body("gpt-4o", size);
        parse.throughput(Throughput::Bytes(body.len() as u64));
        parse.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<Map<String, Value>>(black_box(body)).ok())
        });
    }
    parse.finish();
    let mut key = c.benchmark_group("cache_key");
    for size in [1024usize, 32 * 1024, 512 * 1024] {
        let body = chat_body("gpt-4o", size);
        let map: Map<String, Value> = serde_json::from_slice(&body).expect("a JSON object");
        key.throughput(Throughput::Bytes(body.len() as u64));
        key.bench_with_input(BenchmarkId::new("collapse", size), &map, |b, map| {
            b.iter(|| policy.key(black_box(map), black_box(&ctx)))
        });
        // `whitespace: keep` (the default), for what collapsing costs.
        key.bench_with_input(BenchmarkId::new("keep", size), &map, |b, map| {
            b.iter(|| keep.key(black_box(map), black_box(&ctx)))
        });
    }
    key.finish();
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const COMPLETION: &str = r#"{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A fixed completion for benchmarking."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}"#;

/// A hit in the memory tier: `CacheStore::get` on a stored key, no Redis, no disk.
fn cache_l1_hit(c: &mut Criterion) {
    let metrics = Metrics::new("bench").expect("metrics");
    let config = StoreConfig {
        memory_max_bytes: 64 * 1024 * 1024,
        redis: None,
        disk: None,
    };
    let store = CacheStore::open(&config, &metrics).expect("memory store");
    let now = unix_ms();
    let key = CacheKey(0x5eed_cafe_f00d);
    store.put(
        key,
        Arc::new(Entry {
            route: "chat".into(),
            status: 200,
            content_type: "application/json".into(),
            form: BodyForm::Json,
            body: Bytes::from_static(COMPLETION.as_bytes()),
            stored_at_ms: now,
            expires_at_ms: now + 3_600_000,
            max_expires_at_ms: now + 3_600_000,
            extend_ms: 0,
            upstream_ms: 20,
            tokens: 16,
        }),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(store.flush());
    assert!(
        rt.block_on(store.get(key, "chat", now)).is_some(),
        "the entry just put is a hit"
    );
    c.bench_function("cache_l1_hit", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(store.get(black_box(key), "chat", now).await);
                }
                start.elapsed()
            })
        })
    });
    c.bench_function("cache_l1_miss", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(store.get(black_box(CacheKey(1)), "chat", now).await);
                }
                start.elapsed()
            })
        })
    });
    drop(rt);
    // The store's own runtime stops on drop, outside any async context.
    drop(store);
}

/// A recorded 20-event chat stream: role, 17 content deltas, finish with usage, `[DONE]`.
fn sse_stream() -> Bytes {
    let mut s = String::new();
    let chunk = |delta: &str, finish: &str, usage: &str| {
        format!(
            "data: {{\"id\":\"cmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]{usage}}}\n\n"
        )
    };
    s.push_str(&chunk(r#"{"role":"assistant","content":""}"#, "null", ""));
    for i in 0..17 {
        s.push_str(&chunk(&format!(r#"{{"content":"token{i} "}}"#), "null", ""));
    }
    s.push_str(&chunk(
        "{}",
        r#""stop""#,
        r#","usage":{"prompt_tokens":9,"completion_tokens":17,"total_tokens":26}"#,
    ));
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

/// Replaying an entry: splitting a stored stream into events, a completion into a stream,
/// and a stream into a completion.
fn cache_sse(c: &mut Criterion) {
    let stream = sse_stream();
    assert_eq!(sse::split_events(&stream).len(), 20);
    assert!(sse::synthesize(COMPLETION.as_bytes()).is_some());
    assert!(sse::assemble(&stream).is_some());
    c.bench_function("cache_sse_split_20_events", |b| {
        b.iter(|| sse::split_events(black_box(&stream)))
    });
    c.bench_function("cache_sse_synthesize_completion", |b| {
        b.iter(|| sse::synthesize(black_box(COMPLETION.as_bytes())))
    });
    c.bench_function("cache_sse_assemble_20_events", |b| {
        b.iter(|| sse::assemble(black_box(&stream)))
    });
}

/// What admission costs per request: a request-rate check on a warm key (allowed: a bucket
/// refilling every nanosecond; limited: one request an hour), and a token reservation settled
/// at its real usage.
fn limits(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits");
    let roomy =
        RequestRate::new(Rate::per(1_000_000_000, Duration::from_secs(1), 1_000).expect("rate"));
    assert!(roomy.check(42).is_allowed());
    g.bench_function("request_rate_check_allowed", |b| {
        b.iter(|| roomy.check(black_box(42)))
    });
    let tight = RequestRate::new(Rate::per(1, Duration::from_secs(3600), 1).expect("rate"));
    assert!(tight.check(42).is_allowed() && !tight.check(42).is_allowed());
    g.bench_function("request_rate_check_limited", |b| {
        b.iter(|| tight.check(black_box(42)))
    });
    let now = Instant::now();
    let tokens = TokenBucket::new(
        Rate::per(1_000_000, Duration::from_secs(60), 100_000).expect("rate"),
        now,
    );
    // Refunding the whole reservation leaves the bucket as it was, so every iteration is allowed.
    g.bench_function("token_bucket_reserve_settle", |b| {
        b.iter(|| {
            let reservation = tokens.reserve(black_box(42), black_box(4_000), now);
            tokens.settle(42, reservation.reserved, black_box(0), now);
            reservation
        })
    });
    assert!(tokens.reserve(42, 4_000, now).decision.is_allowed());
    g.finish();
}

/// `Balancer::pick` over 3 endpoints with live stats (one slower, one with requests in flight),
/// per strategy: what every forwarded request pays to choose its endpoint.
fn balancer_pick(c: &mut Criterion) {
    let now = Instant::now();
    let stats: Vec<Arc<EndpointStats>> =
        (0..3).map(|_| Arc::new(EndpointStats::new(now))).collect();
    stats[0].observe(Duration::from_millis(60), now);
    stats[1].observe(Duration::from_millis(2), now);
    stats[2].observe(Duration::from_millis(3), now);
    let _busy = stats[2].start();
    let mut g = c.benchmark_group("balancer_pick_3_endpoints");
    for (name, strategy) in [
        ("round_robin", Strategy::RoundRobin),
        ("weighted", Strategy::Weighted),
        ("least_outstanding", Strategy::LeastOutstanding),
        ("peak_ewma", Strategy::PeakEwma),
    ] {
        let b = Balancer::new(strategy, &[3, 1, 1], stats.clone());
        g.bench_function(name, |bench| bench.iter(|| b.pick(black_box(&[]), now)));
    }
    let b = Balancer::new(Strategy::PeakEwma, &[1, 1, 1], stats.clone());
    g.bench_function("peak_ewma_retry_after_one_tried", |bench| {
        bench.iter(|| b.pick(black_box(&[1]), now))
    });
    g.finish();
}

/// The split phase's decision: a sticky key's variant (two and five variants) or a draw.
fn split_assign(c: &mut Criterion) {
    let two = Split::new("chat", "exp-1", &[("control", 80), ("candidate", 20)]).unwrap();
    let five: Vec<(String, u32)> = (0..5).map(|i| (format!("v{i}"), 20)).collect();
    let five: Vec<(&str, u32)> = five.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    let five = Split::new("chat", "exp-1", &five).unwrap();
    let key = b"user-1234567890";
    let mut g = c.benchmark_group("split_assign");
    g.bench_function("sticky_2_variants", |b| {
        b.iter(|| two.assign(black_box(key)))
    });
    g.bench_function("sticky_5_variants", |b| {
        b.iter(|| five.assign(black_box(key)))
    });
    g.bench_function("draw_2_variants", |b| {
        b.iter(|| two.draw(black_box(0x9e37_79b9_7f4a_7c15)))
    });
    g.finish();
}

/// Every request's target is normalized before routing: the usual normal path is one scan.
fn request_target(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_target");
    for (name, target) in [
        ("normal", &b"/v1/chat/completions"[..]),
        ("normal_with_query", b"/v1/models?limit=20&order=desc"),
        ("dot_segments", b"/public/../v1/./chat//completions"),
        ("absolute_form", b"http://example.com/v1/chat/completions"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| request_target::normalize(black_box(target)).map(|t| t.len()))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    request_target,
    balancer_pick,
    split_assign,
    route_matching,
    body_parsing,
    metrics_recording,
    config_compile,
    cache_key,
    cache_l1_hit,
    cache_sse,
    limits
);
criterion_main!(benches);
