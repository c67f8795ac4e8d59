//! `allocs passthrough|cache_hit`: heap allocations per request of sluice, counted by a global
//! allocator wrapping mimalloc (what sluice's binary uses) in this one process. sluice runs
//! here (1 worker thread) in front of nginx answering a fixed completion; a side thread sends
//! 2,000 warm-up POSTs over one keep-alive connection, then 20,000 counted ones, prints
//! allocations and bytes per request and appends them to `target/bench/allocs.md`. Allocations
//! on every thread count (the log writer's too). sluice's own log (access lines unless
//! `RUST_LOG=warn`) goes to `target/bench/allocs-SCENARIO.log`.

use sluice::access_log::{self, LogFormat};
use sluice_benches::chat_body;
use sluice_benches::load::procs::{fixed_upstream, wait_port, Running};
use sluice_benches::load::sluice::{one_endpoint, server_yaml, CACHE_ROUTES, PLAIN_ROUTES};
use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const WARM_UP: u64 = 2_000;
const REQUESTS: u64 = 20_000;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// mimalloc, counting each allocation and reallocation and the bytes asked for.
struct Counting;

// SAFETY: every call is passed on unchanged to mimalloc, which upholds GlobalAlloc's contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        mimalloc::MiMalloc.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        mimalloc::MiMalloc.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout);
    }
}

fn count(bytes: usize) {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The upstream and the temporary directory, ended before `process::exit` (which runs no drops).
static HELD: Mutex<Option<(Running, tempfile::TempDir)>> = Mutex::new(None);

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let routes = match scenario.as_str() {
        "passthrough" => PLAIN_ROUTES,
        "cache_hit" => CACHE_ROUTES,
        _ => finish(2, "usage: allocs passthrough|cache_hit"),
    };
    let (config, port) = match setup(&scenario, routes) {
        Ok(v) => v,
        Err(e) => finish(1, &format!("allocs {scenario}: {e}")),
    };
    let client_scenario = scenario.clone();
    let spawned = std::thread::Builder::new()
        .name("allocs-client".into())
        .spawn(move || match measure(&client_scenario, port) {
            Ok(line) => finish(0, &line),
            Err(e) => finish(1, &format!("allocs {client_scenario}: {e}")),
        });
    if let Err(e) = spawned {
        finish(1, &format!("allocs: starting the client thread: {e}"));
    }
    access_log::init(LogFormat::Text);
    let outcome = sluice::server::run(&config, false);
    finish(
        1,
        &format!("allocs {scenario}: sluice stopped: {outcome:?}"),
    );
}

/// Prints `line` (on stdout, since stderr is sluice's log), stops the upstream, exits.
fn finish(code: i32, line: &str) -> ! {
    println!("{line}");
    if let Ok(mut held) = HELD.lock() {
        held.take();
    }
    std::process::exit(code)
}

/// The workspace's `target/bench/`.
fn bench_dir() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace above the benches crate")?
        .join("target")
        .join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// Starts the upstream, writes sluice's config and sends stderr to the log file; the config's
/// path and sluice's port.
fn setup(scenario: &str, routes: &str) -> Result<(PathBuf, u16), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (up_port, upstream) = fixed_upstream(dir.path(), "1")?;
    let port = sluice_testkit::free_port();
    let yaml = format!(
        "{}upstreams:\n  up:\n{}routes:\n{routes}",
        server_yaml(port, 1),
        one_endpoint(up_port)
    );
    let config = dir.path().join("allocs.yaml");
    std::fs::write(&config, yaml).map_err(|e| format!("{}: {e}", config.display()))?;
    if let Ok(mut held) = HELD.lock() {
        *held = Some((upstream, dir));
    }
    let log = bench_dir()?.join(format!("allocs-{scenario}.log"));
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    // SAFETY: dup2 on two open descriptors; the file stays open as fd 2 after `file` drops.
    if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
        return Err(format!("redirecting stderr to {}", log.display()));
    }
    Ok((config, port))
}

/// Warms up, counts allocations over [`REQUESTS`] requests; the result line (also appended to
/// `target/bench/allocs.md`).
fn measure(scenario: &str, port: u16) -> Result<String, String> {
    wait_port(port, Duration::from_secs(10))?;
    let body = chat_body("bench-model", 1024);
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = connect(addr)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    for _ in 0..WARM_UP {
        exchange(&mut conn, addr, &request, &mut buf)?;
    }
    let (allocs, bytes) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let mut hits = 0;
    for _ in 0..REQUESTS {
        hits += u64::from(exchange(&mut conn, addr, &request, &mut buf)?);
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs;
    let bytes = BYTES.load(Ordering::Relaxed) - bytes;
    if scenario == "cache_hit" && hits != REQUESTS {
        return Err(format!(
            "{hits} of {REQUESTS} counted requests were cache hits"
        ));
    }
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "unset (info)".into());
    let (per_req, bytes_per_req) = (
        allocs as f64 / REQUESTS as f64,
        bytes as f64 / REQUESTS as f64,
    );
    let line = format!(
        "allocs {scenario} (RUST_LOG {rust_log}): {per_req:.1} allocations and {bytes_per_req:.0} bytes per request over {REQUESTS} requests"
    );
    append_row(scenario, &rust_log, per_req, bytes_per_req)?;
    Ok(line)
}

/// Appends a row to `target/bench/allocs.md`, writing its head first when it is new.
fn append_row(scenario: &str, rust_log: &str, per_req: f64, bytes: f64) -> Result<(), String> {
    let file = bench_dir()?.join("allocs.md");
    let mut text = String::new();
    if !file.exists() {
        text.push_str("# Allocations per request\n\nsluice in one process (1 worker thread, mimalloc under a counting global allocator) in front of nginx answering a fixed completion; one keep-alive connection POSTs a 1 KB chat body, 2,000 times to warm up, then 20,000 times counted. Allocations and reallocations on all threads.\n\n| scenario | RUST_LOG | allocations / request | bytes / request |\n|---|---|---|---|\n");
    }
    text.push_str(&format!(
        "| {scenario} | {rust_log} | {per_req:.1} | {bytes:.0} |\n"
    ));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", file.display()))
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// Sends `request` and reads its answer into `buf` without allocating (`buf` keeps its
/// capacity), reconnecting when the answer closes the connection (sluice's
/// `keepalive_requests`, 1,000 by default); whether it was a cache hit. Err unless 200 with a
/// Content-Length.
fn exchange(
    conn: &mut TcpStream,
    addr: SocketAddr,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<bool, String> {
    conn.write_all(request).map_err(|e| format!("write: {e}"))?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(a) = complete(buf)? {
            if buf.len() > a.total {
                return Err("more bytes than one answer".into());
            }
            if a.close {
                *conn = connect(addr)?;
            }
            return Ok(a.hit);
        }
        let n = conn.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What [`complete`] reads from an answer's head.
struct Answer {
    total: usize,
    hit: bool,
    close: bool,
}

/// The whole answer's length, whether it says `x-sluice-cache: hit` and whether it closes the
/// connection, once `buf` holds it.
fn complete(buf: &[u8]) -> Result<Option<Answer>, String> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let mut lines = buf[..head_end].split(|&b| b == b'\n');
    let status = lines.next().unwrap_or_default();
    if !status.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answer: {}", String::from_utf8_lossy(status)));
    }
    let (mut length, mut hit, mut close) = (None, false, false);
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        } else if name.eq_ignore_ascii_case(b"x-sluice-cache") {
            hit = value.eq_ignore_ascii_case(b"hit");
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        }
    }
    let length: usize = length.ok_or("an answer without Content-Length")?;
    let total = head_end + 4 + length;
    Ok((buf.len() >= total).then_some(Answer { total, hit, close }))
}
