//! The harness's redis-server guard: it answers PING, `stop` takes it away like an outage and
//! `restart` brings it back on the same port.

use sluice_e2e::RedisServer;
use std::io::ErrorKind;

#[test]
fn redis_server_starts_stops_and_restarts_on_its_port() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis.ping().expect("PING"), "+PONG");

    redis.stop();
    let err = redis.ping().expect_err("a stopped server must not answer");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    redis.restart();
    assert_eq!(redis.port(), port, "restart keeps the port");
    assert_eq!(redis.ping().expect("PING after restart"), "+PONG");
}

#[test]
fn two_servers_get_different_ports() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    assert_ne!(a.port(), b.port());
    assert_eq!(a.ping().unwrap(), "+PONG");
    assert_eq!(b.ping().unwrap(), "+PONG");
}
