//! Micro-benchmarks of what runs on every request: route matching, body parsing, metrics
//! recording; and config compile time for a large policy. `cargo bench -p sluice-benches`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Method};
use sluice::config::load::load_str;
use sluice::config::{compile, SharedState};
use sluice_benches::{chat_body, large_config, large_router};
use sluice_plugins::body::RequestBody;
use sluice_plugins::metrics::Metrics;

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

criterion_group!(
    benches,
    route_matching,
    body_parsing,
    metrics_recording,
    config_compile
);
criterion_main!(benches);
