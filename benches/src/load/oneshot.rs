//! One HTTP/1.1 request on a fresh blocking connection, for the checks around a measurement
//! (is the primed POST a cache hit, what does `/metrics` say) rather than the load itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One whole answer.
#[derive(Debug, Clone)]
pub struct OneShotAnswer {
    pub status: u16,
    /// The value of the header the caller asked for, if the answer carries it.
    pub header: Option<String>,
    pub body: Vec<u8>,
}

/// Sends `method path` with `body` to `127.0.0.1:port` (`connection: close`) and reads the
/// answer to the end, keeping the value of `header`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &[u8],
    header: &str,
) -> Result<OneShotAnswer, String> {
    let what = |e: &dyn std::fmt::Display| format!("{method} {path} on port {port}: {e}");
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| what(&e))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| what(&e))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())
        .and_then(|()| conn.write_all(body))
        .map_err(|e| what(&e))?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).map_err(|e| what(&e))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| what(&"no HTTP response"))?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| what(&"bad status line"))?;
    let value = head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(header)
            .then(|| v.trim().to_string())
    });
    Ok(OneShotAnswer {
        status,
        header: value,
        body: resp[split + 4..].to_vec(),
    })
}
