//! Phase tests run on a real Pingora session over an in-memory connection.

use pingora::proxy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;

/// A session whose request head (and whatever body follows) is `raw`; the other end is the
/// client, to read the answer from.
pub async fn session(raw: &[u8]) -> (Session, DuplexStream) {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    client.write_all(raw).await.unwrap();
    let mut session = Session::new_h1(Box::new(server));
    assert!(session.read_request().await.unwrap(), "a request head");
    (session, client)
}

/// What the client received so far.
pub async fn received(client: &mut DuplexStream) -> String {
    let mut buf = vec![0u8; 1 << 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(1), client.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A POST of `body` to `path` with a `content-length`.
pub fn post(path: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A POST /v1/chat/completions head with `headers`, for phases that take only the head.
pub fn request_head(headers: &[(&str, &str)]) -> pingora::http::RequestHeader {
    let mut req =
        pingora::http::RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    for (k, v) in headers {
        req.insert_header(k.to_string(), *v).unwrap();
    }
    req
}

/// An upstream on a real socket that answers every request on a connection with `answer`.
pub async fn upstream(answer: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}
