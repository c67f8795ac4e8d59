//! The shared buckets against a real `redis-server` each test starts on its own port.

use super::*;
use crate::test_redis::{eventually, raw_redis, RedisServer};
use redis::AsyncCommands;
use std::time::Instant;

const TIMEOUT: Duration = Duration::from_millis(250);

fn connect(server: &RedisServer) -> (Arc<SharedBuckets>, IntCounter) {
    let errors = IntCounter::new("limits_redis_errors", "test").expect("counter");
    let config = RedisConfig {
        timeout: TIMEOUT,
        ..RedisConfig::new(server.url())
    };
    let buckets = SharedBuckets::connect(&config, errors.clone()).expect("connects");
    (buckets, errors)
}

fn rate(count: u64, period: Duration, burst: u64) -> Rate {
    Rate::per(count, period, burst).expect("a valid rate")
}

fn per_minute(tokens: u64) -> Rate {
    rate(tokens, Duration::from_secs(60), tokens)
}

async fn take(buckets: &SharedBuckets, bucket: &str, n: u64, rate: Rate) -> Decision {
    buckets.reserve(bucket, n, rate).await.expect("reserve").0
}

fn retry_after(decision: Decision) -> Duration {
    match decision {
        Decision::Limited { retry_after, .. } => retry_after,
        Decision::Allowed(state) => panic!("expected a limit, got {state:?}"),
    }
}

async fn exists(server: &RedisServer, key: &str) -> bool {
    raw_redis(server).await.exists(key).await.expect("EXISTS")
}

#[tokio::test]
async fn burst_then_limited_with_retry_after_about_one_interval() {
    let server = RedisServer::start();
    let (buckets, errors) = connect(&server);
    let bucket = buckets.bucket("chat", "rpm", 1);
    let five_per_second = rate(5, Duration::from_secs(1), 5);
    let started = Instant::now();
    for left in (0..5).rev() {
        let (decision, n) = buckets
            .reserve(&bucket, 1, five_per_second)
            .await
            .expect("reserve");
        assert_eq!(n, 1);
        assert!(decision.is_allowed(), "{decision:?}");
        assert_eq!(decision.state().remaining, left);
        assert_eq!(decision.state().limit, 5);
    }
    let limited = take(&buckets, &bucket, 1, five_per_second).await;
    let elapsed = started.elapsed();
    let wait = retry_after(limited);
    let interval = Duration::from_millis(200);
    assert!(
        wait <= interval && wait + elapsed + Duration::from_millis(1) >= interval,
        "retry after {wait:?}, {elapsed:?} after the first"
    );
    let state = limited.state();
    assert_eq!(state.remaining, 0);
    assert!(state.reset <= 5 * interval && state.reset + elapsed >= 5 * interval - interval);

    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert!(take(&buckets, &bucket, 1, five_per_second)
        .await
        .is_allowed());
    assert_eq!(errors.get(), 0);
}

#[tokio::test]
async fn token_budget_admits_nine_reservations_of_110_in_1000_per_minute() {
    let server = RedisServer::start();
    let (buckets, _) = connect(&server);
    let bucket = buckets.bucket("chat", "tpm", 7);
    let tpm = per_minute(1000);
    for _ in 0..9 {
        assert!(take(&buckets, &bucket, 110, tpm).await.is_allowed());
        buckets
            .settle(&bucket, 0, tpm)
            .await
            .expect("settled at cost");
    }
    let tenth = take(&buckets, &bucket, 110, tpm).await;
    assert_eq!(tenth.state().remaining, 10);
    // 100 tokens short at 60 ms each, less what refilled since the first reservation.
    let wait = retry_after(tenth);
    assert!(
        wait <= Duration::from_secs(6) && wait > Duration::from_millis(5_500),
        "{wait:?}"
    );
}

#[tokio::test]
async fn refund_lets_the_next_reservation_pass() {
    let server = RedisServer::start();
    let (buckets, _) = connect(&server);
    let bucket = buckets.bucket("chat", "tpm", 7);
    let tpm = per_minute(1000);
    for _ in 0..9 {
        assert!(take(&buckets, &bucket, 110, tpm).await.is_allowed());
    }
    assert!(!take(&buckets, &bucket, 110, tpm).await.is_allowed());
    // The last answer used 10 tokens, not the 110 reserved.
    buckets.settle(&bucket, -100, tpm).await.expect("refund");
    let after = take(&buckets, &bucket, 110, tpm).await;
    assert!(after.is_allowed(), "{after:?}");
    assert_eq!(after.state().remaining, 0);
}

#[tokio::test]
async fn settle_charges_debt_and_a_full_refund_removes_the_key() {
    let server = RedisServer::start();
    let (buckets, _) = connect(&server);
    let bucket = buckets.bucket("chat", "tpm", 9);
    let tpm = per_minute(1000);

    buckets.settle(&bucket, -50, tpm).await.expect("refund");
    assert!(!exists(&server, &bucket).await, "a refund to a full bucket");

    buckets.settle(&bucket, 1500, tpm).await.expect("debt");
    let ttl: i64 = raw_redis(&server).await.pttl(&bucket).await.expect("PTTL");
    assert!((89_000..=90_002).contains(&ttl), "1500 × 60 ms, got {ttl}");
    let wait = retry_after(take(&buckets, &bucket, 1, tpm).await);
    assert!(
        wait > Duration::from_millis(30_000) && wait <= Duration::from_millis(30_060),
        "501 tokens short, got {wait:?}"
    );

    buckets.settle(&bucket, -1500, tpm).await.expect("refund");
    assert!(!exists(&server, &bucket).await, "back to full");
    let (decision, n) = buckets.reserve(&bucket, 5000, tpm).await.expect("reserve");
    assert_eq!((decision.is_allowed(), n), (true, 1000), "n is clamped");
    assert_eq!(decision.state().remaining, 0);
}

#[tokio::test]
async fn fractional_intervals_admit_exactly_the_burst() {
    let server = RedisServer::start();
    let (buckets, _) = connect(&server);
    let bucket = buckets.bucket("chat", "rps", 3);
    // 142 857.142 µs: no whole number of µs, nor of 0.25 µs steps.
    let seven_per_second = rate(7, Duration::from_secs(1), 7);
    for left in (0..7).rev() {
        let decision = take(&buckets, &bucket, 1, seven_per_second).await;
        assert!(decision.is_allowed(), "{decision:?}");
        assert_eq!(decision.state().remaining, left);
    }
    assert!(!take(&buckets, &bucket, 1, seven_per_second)
        .await
        .is_allowed());
}

#[tokio::test]
async fn two_instances_admit_one_budget() {
    let server = RedisServer::start();
    let (a, _) = connect(&server);
    let (b, _) = connect(&server);
    let bucket = a.bucket("chat", "rpm", 42);
    assert_eq!(bucket, b.bucket("chat", "rpm", 42));
    let rpm = per_minute(10);
    let (mut by_a, mut by_b) = (0, 0);
    for _ in 0..15 {
        by_a += u32::from(take(&a, &bucket, 1, rpm).await.is_allowed());
        by_b += u32::from(take(&b, &bucket, 1, rpm).await.is_allowed());
    }
    assert_eq!((by_a, by_b), (5, 5), "one budget of 10 between them");
}

/// A runtime of a caller's (like one of Pingora's worker threads), dropped after one call.
fn caller_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a caller's runtime")
}

#[test]
fn calls_from_other_runtimes_work_after_those_runtimes_are_gone() {
    let mut server = RedisServer::start();
    let (buckets, _) = connect(&server);
    let bucket = buckets.bucket("chat", "rpm", 5);
    let rpm = per_minute(10);
    for round in 0..3 {
        // A restart breaks the connection, so the next call makes redis-rs reconnect on the
        // runtime it runs on; a caller's runtime must not be that one.
        server.restart();
        let caller = caller_runtime();
        let failed = caller.block_on(buckets.reserve(&bucket, 1, rpm));
        assert!(
            failed.is_err(),
            "round {round}: the broken connection fails once"
        );
        let came_back = caller.block_on(eventually(Duration::from_secs(8), || async {
            buckets.is_up()
        }));
        assert!(came_back, "round {round}");
        drop(caller);
        let decision = caller_runtime().block_on(take(&buckets, &bucket, 1, rpm));
        assert!(decision.is_allowed(), "round {round}: {decision:?}");
        assert_eq!(decision.state().remaining, 9, "round {round}: a new Redis");
    }
}

#[tokio::test]
async fn dead_redis_fails_fast_and_comes_back_by_itself() {
    let mut server = RedisServer::start();
    let (buckets, errors) = connect(&server);
    let bucket = buckets.bucket("chat", "rpm", 1);
    let rpm = per_minute(10);
    assert!(take(&buckets, &bucket, 1, rpm).await.is_allowed());
    server.stop();

    let started = Instant::now();
    let failed = buckets.reserve(&bucket, 1, rpm).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        started.elapsed() < TIMEOUT + Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert!(!buckets.is_up());
    assert!(errors.get() >= 1);

    let started = Instant::now();
    let down = buckets.settle(&bucket, 1, rpm).await;
    assert_eq!(down, Err("limits: redis is down".to_string()));
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "fails at once"
    );

    server.restart();
    let came_back = eventually(Duration::from_secs(8), || async { buckets.is_up() }).await;
    assert!(came_back, "the probe reconnects by itself");
    let decision = take(&buckets, &bucket, 1, rpm).await;
    assert!(decision.is_allowed(), "{decision:?}");
    assert_eq!(decision.state().remaining, 9, "a new Redis, a full bucket");
}

#[tokio::test]
async fn a_key_of_the_wrong_type_is_an_error_and_a_short_outage() {
    let server = RedisServer::start();
    let (buckets, errors) = connect(&server);
    let bucket = buckets.bucket("chat", "rpm", 1);
    let rpm = per_minute(10);
    let mut raw = raw_redis(&server).await;
    let () = raw.hset(&bucket, "field", 1).await.expect("HSET");
    let failed = buckets.reserve(&bucket, 1, rpm).await;
    assert!(
        failed.as_ref().is_err_and(|e| e.contains("WRONGTYPE")),
        "{failed:?}"
    );
    assert!(!buckets.is_up());
    assert_eq!(errors.get(), 1);
    assert!(eventually(Duration::from_secs(3), || async { buckets.is_up() }).await);

    let () = raw.set(&bucket, "garbage").await.expect("SET");
    let failed = buckets.settle(&bucket, 1, rpm).await;
    assert!(
        failed.as_ref().is_err_and(|e| e.contains("not a bucket")),
        "{failed:?}"
    );
    assert!(eventually(Duration::from_secs(3), || async { buckets.is_up() }).await);
    let () = raw.del(&bucket).await.expect("DEL");
    assert!(take(&buckets, &bucket, 1, rpm).await.is_allowed());
}

#[tokio::test]
async fn a_bucket_is_one_key_whose_hash_tag_is_the_whole_bucket_id() {
    let server = RedisServer::start();
    let (buckets, _) = connect(&server);
    let bucket = buckets.bucket("chat:v1}", "tpm{x%", 0xabc);
    let id = "chat%3Av1%7D:tpm%7Bx%25:0000000000000abc";
    assert_eq!(bucket, format!("sluice:limit:{{{id}}}"));
    let tag = bucket
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag);
    assert_eq!(tag, Some(id), "Redis Cluster hashes the whole id");
    assert_ne!(buckets.bucket("a:b", "c", 1), buckets.bucket("a", "b:c", 1));

    let tpm = per_minute(1000);
    assert!(take(&buckets, &bucket, 100, tpm).await.is_allowed());
    let mut raw = raw_redis(&server).await;
    let keys: Vec<String> = raw.keys("*").await.expect("KEYS");
    assert_eq!(keys, vec![bucket.clone()]);
    let ttl: i64 = raw.pttl(&bucket).await.expect("PTTL");
    assert!((5_900..=6_002).contains(&ttl), "100 × 60 ms, got {ttl}");
}

/// `cargo test -p sluice-plugins --lib -- --ignored --nocapture reserve_latency`
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn reserve_latency_on_loopback() {
    let server = RedisServer::start();
    let (buckets, errors) = connect(&server);
    let rpm = per_minute(1_000_000);
    let mut samples = Vec::with_capacity(5_000);
    for n in 0..5_500_u64 {
        let bucket = buckets.bucket("chat", "rpm", n % 100);
        let started = Instant::now();
        buckets.reserve(&bucket, 1, rpm).await.expect("reserve");
        // The first 500 warm up the connection and the script cache.
        if n >= 500 {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    let at = |q: usize| samples[samples.len() * q / 100];
    println!(
        "reserve over {} calls: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        at(50),
        at(99),
        samples[samples.len() - 1]
    );
    assert_eq!(errors.get(), 0);
}
