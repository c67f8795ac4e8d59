//! One HTTP answer, read whole: from reqwest, or parsed off a raw socket.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// Parses one whole HTTP/1.1 response (content-length or chunked) from the front of
    /// `bytes`, read off a raw socket: the answer and how many bytes it took.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<(Answer, usize)> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let mut headers = HeaderMap::new();
        for (name, value) in lines.filter_map(|l| l.split_once(':')) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (body, used) = if let Some(len) = get("content-length") {
            let len: usize = len.parse().ok()?;
            (bytes.get(end..end + len)?.to_vec(), end + len)
        } else {
            assert_eq!(
                get("transfer-encoding"),
                Some("chunked"),
                "a framed answer: {head}"
            );
            let mut body = Vec::new();
            let mut at = end;
            loop {
                let line_end = at + bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
                let size = std::str::from_utf8(&bytes[at..line_end]).ok()?;
                let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
                let data = line_end + 2;
                body.extend_from_slice(bytes.get(data..data + size)?);
                at = data + size + 2;
                if bytes.len() < at {
                    return None;
                }
                if size == 0 {
                    break;
                }
            }
            (body, at)
        };
        Some((
            Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
            used,
        ))
    }

    /// Sends `req` and reads the whole answer.
    pub async fn read(req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("an answer");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.expect("the whole body");
        Answer {
            status,
            headers,
            body,
        }
    }

    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// What `x-sluice-cache` says about the answer (`<none>` when it is absent).
    #[must_use]
    pub fn cache(&self) -> &str {
        self.header("x-sluice-cache").unwrap_or("<none>")
    }

    /// A header that must be a whole number.
    #[must_use]
    pub fn number(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} must be a whole number: {self:?}"))
    }

    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The `data:` payloads of an SSE body, in order.
    #[must_use]
    pub fn events(&self) -> Vec<&str> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect()
    }
}
