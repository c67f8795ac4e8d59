//! Memory per idle keep-alive client connection, measured as a new user would: open N
//! connections, send one request on each and keep it open, compare the server's RSS before
//! and after; then check that every connection is still served.

use crate::load::procs::tree_rss_kib;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What the idle-connections scenario found for one system.
#[derive(Debug, Clone, Copy)]
pub struct IdleResult {
    pub connections: usize,
    /// RSS growth per connection, KiB (the process and its children, e.g. nginx's workers).
    pub kib_per_connection: f64,
    /// Connections that answered a second request after all were open.
    pub served_after: usize,
}

const REQUEST: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: bench\r\n\r\n";

/// Opens `n` keep-alive connections to `port`, one request each, and measures the RSS of
/// `pid` and its child processes.
pub fn idle_connections(port: u16, pid: u32, n: usize) -> Result<IdleResult, String> {
    raise_fd_limit(n as u64 + 1024)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = tree_rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("idle connection {i}: connect: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        exchange(&mut c).map_err(|e| format!("idle connection {i}: {e}"))?;
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = tree_rss_kib(pid);
    let mut served_after = 0;
    for c in &mut conns {
        served_after += usize::from(exchange(c).is_ok());
    }
    Ok(IdleResult {
        connections: n,
        kib_per_connection: after.saturating_sub(before) as f64 / n as f64,
        served_after,
    })
}

/// One request and its whole (Content-Length framed or chunked) answer; Err unless 200.
fn exchange(c: &mut TcpStream) -> Result<(), String> {
    c.write_all(REQUEST).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = complete(&buf) {
            let head = String::from_utf8_lossy(&buf[..end.min(buf.len())]);
            return if head.starts_with("HTTP/1.1 200") {
                Ok(())
            } else {
                Err(format!("answer: {}", head.lines().next().unwrap_or("")))
            };
        }
    }
}

/// The length of a complete response in `buf`, if it is complete.
fn complete(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return (buf.len() >= head_end + len).then_some(head_end + len);
    }
    buf.ends_with(b"0\r\n\r\n").then_some(buf.len())
}

/// Lets this process (and what it starts afterwards) open `want` files.
pub fn raise_fd_limit(want: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err("getrlimit failed".into());
        }
        if lim.rlim_cur >= want {
            return Ok(());
        }
        lim.rlim_cur = want.max(lim.rlim_cur);
        lim.rlim_max = lim.rlim_max.max(want);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(format!(
                "cannot raise the open-file limit to {want} (run as root or raise `ulimit -n`)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn responses_are_complete_by_length_or_last_chunk() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(complete(head), None);
        assert_eq!(complete(&[&head[..], b"ok"].concat()), Some(head.len() + 2));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        assert_eq!(complete(chunked), Some(chunked.len()));
    }
}
