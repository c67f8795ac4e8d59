use super::*;

fn limits() -> ServerLimits {
    ServerLimits {
        max_header_bytes: 1024,
        max_uri_bytes: 100,
        max_headers: 5,
        ..ServerLimits::default()
    }
}

/// Scans `head` fed in pieces of `step` bytes; the result of the last scan.
fn scan_in_steps(head: &[u8], step: usize) -> Scanned {
    let mut scan = HeadScan::default();
    let mut result = Scanned::Partial;
    for end in (step..head.len() + step).step_by(step) {
        result = scan.advance(&head[..end.min(head.len())], &limits());
        if result != Scanned::Partial {
            break;
        }
    }
    result
}

#[test]
fn complete_heads_in_any_split() {
    let crlf = b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}";
    let lf = b"\r\nGET / HTTP/1.1\nhost: a\n\n";
    for step in [1, 2, 7, 1000] {
        assert_eq!(scan_in_steps(crlf, step), Scanned::Complete, "step {step}");
        assert_eq!(scan_in_steps(lf, step), Scanned::Complete, "step {step}");
    }
    assert_eq!(
        scan_in_steps(b"GET / HTTP/1.1\r\nhost: a\r\n", 3),
        Scanned::Partial
    );
}

#[test]
fn long_target_is_refused_before_the_line_ends() {
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
    assert_eq!(
        scan_in_steps(long.as_bytes(), 5),
        Scanned::Refused(Refusal::UriTooLong)
    );
    let partial = format!("GET /{}", "a".repeat(100));
    assert_eq!(
        scan_in_steps(partial.as_bytes(), 5),
        Scanned::Refused(Refusal::UriTooLong)
    );
    let fits = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(99));
    assert_eq!(scan_in_steps(fits.as_bytes(), 5), Scanned::Complete);
}

#[test]
fn header_count_and_size() {
    let five = "GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\ne: 5\r\n\r\n";
    assert_eq!(scan_in_steps(five.as_bytes(), 4), Scanned::Complete);
    let six = five.replace("\r\n\r\n", "\r\nf: 6\r\n\r\n");
    assert_eq!(
        scan_in_steps(six.as_bytes(), 4),
        Scanned::Refused(Refusal::TooManyHeaders)
    );
    let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "b".repeat(1100));
    assert_eq!(
        scan_in_steps(big.as_bytes(), 64),
        Scanned::Refused(Refusal::HeadTooLarge)
    );
    // Exactly at the limit passes; the body after the head does not count.
    let exact = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "b".repeat(1024 - 23));
    assert_eq!(exact.len(), 1024);
    let with_body = format!("{exact}{}", "z".repeat(5000));
    assert_eq!(
        scan_in_steps(with_body.as_bytes(), 1 << 20),
        Scanned::Complete
    );
}

#[test]
fn target_length() {
    assert_eq!(target_len(b"GET /abc HTTP/1.1"), 4);
    assert_eq!(target_len(b"GET /abc"), 4);
    assert_eq!(target_len(b"GET"), 0);
}

#[test]
fn refusals_are_json_with_connection_close() {
    let l = limits();
    for (r, status, code) in [
        (Refusal::Timeout, 408, "request_timeout"),
        (Refusal::UriTooLong, 414, "uri_too_long"),
        (Refusal::HeadTooLarge, 431, "headers_too_large"),
        (Refusal::TooManyHeaders, 431, "too_many_headers"),
    ] {
        let text = String::from_utf8(refusal_response(&r.error(&l)).to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], code);
    }
}

// === read_head from a pipelined start ===

/// A server-side stream whose client end is returned (kept open: dropping it ends the stream).
fn duplex() -> (Stream, tokio::io::DuplexStream) {
    let (server, client) = tokio::io::duplex(64 * 1024);
    (Box::new(server), client)
}

fn quick_limits() -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_millis(100),
        ..limits()
    }
}

async fn read_pipelined(stream: &mut Stream, start: &[u8]) -> Result<BytesMut, Stop> {
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let next = Next::Pipelined(BytesMut::from(start));
    read_head(stream, &quick_limits(), next, &shutdown).await
}

#[tokio::test]
async fn a_whole_pipelined_head_is_taken_without_reading() {
    let (mut stream, _client) = duplex();
    let start = b"GET /a HTTP/1.1\r\nhost: a\r\n\r\nGET /b HTTP/1.1\r\n";
    let head = read_pipelined(&mut stream, start).await;
    assert_eq!(head.as_deref().ok(), Some(&start[..]), "handed on whole");
}

#[tokio::test]
async fn a_pipelined_first_byte_waits_for_the_rest_of_its_head() {
    let (mut stream, mut client) = duplex();
    client.write_all(b"ET /b HTTP/1.1\r\n\r\n").await.unwrap();
    let head = read_pipelined(&mut stream, b"G").await;
    assert_eq!(head.as_deref().ok(), Some(&b"GET /b HTTP/1.1\r\n\r\n"[..]));
}

#[tokio::test]
async fn a_pipelined_head_is_held_to_header_timeout_and_limits() {
    let (mut stream, _client) = duplex();
    let started = Instant::now();
    let stalled = read_pipelined(&mut stream, b"GET /b HTTP/1.1\r\n").await;
    assert_eq!(stalled, Err(Stop::Refuse(Refusal::Timeout)));
    assert!(started.elapsed() >= Duration::from_millis(90));

    let (mut stream, _client) = duplex();
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(200));
    let refused = read_pipelined(&mut stream, long.as_bytes()).await;
    assert_eq!(refused, Err(Stop::Refuse(Refusal::UriTooLong)));
}

/// Found by the head_scan fuzz target: a request line without a version whose target is
/// exactly at the limit was refused when a read ended between its CR and LF.
#[test]
fn a_read_ending_at_the_lines_cr_does_not_lengthen_the_target() {
    let line = format!("GET /{}\r\n\r\n", "a".repeat(99));
    let at_cr = line.find('\r').unwrap() + 1;
    assert_eq!(
        scan_arriving(line.as_bytes(), &[], &limits()),
        Scanned::Complete
    );
    assert_eq!(
        scan_arriving(line.as_bytes(), &[at_cr], &limits()),
        Scanned::Complete
    );
}
