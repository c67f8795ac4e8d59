//! mock-llm under the load benchmarks put on it: running out of file descriptors must not
//! end the process, or a benchmark measures a dead upstream.

use sluice_e2e::{bin, Proc, PATIENCE};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_mock_out_of_file_descriptors_keeps_serving_once_connections_close() {
    // 40 descriptors: the runtime's own plus a few connections, then accept fails (EMFILE).
    let mut child = Command::new("prlimit")
        .arg("--nofile=40:40")
        .arg(bin("mock-llm"))
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit runs mock-llm");
    let stdout = child.stdout.take().expect("mock stdout");
    let mut proc = Proc { child };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("mock-llm prints its address");
    let addr = line
        .split_whitespace()
        .last()
        .and_then(|u| u.strip_prefix("http://"))
        .expect("an http:// address")
        .to_string();

    let flood: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        proc.running(),
        "mock-llm exited when accept ran out of descriptors"
    );
    assert!(
        flood.len() > 40,
        "the backlog took more connections than descriptors"
    );
    drop(flood);

    let deadline = Instant::now() + PATIENCE;
    loop {
        match models(&addr) {
            Some(answer) if answer.starts_with("HTTP/1.1 200") => break,
            other => assert!(
                Instant::now() < deadline,
                "mock-llm does not answer after the flood: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /v1/models` on a fresh connection; the response's text, if any.
fn models(addr: &str) -> Option<String> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    c.read_to_string(&mut answer).ok()?;
    Some(answer)
}
