//! One stored response. An entry keeps the body in the form the upstream sent it (a JSON
//! completion or the raw SSE stream); [`super::sse`] converts it when a request asks for the
//! other form. Times are Unix milliseconds so an entry written by one instance ages correctly
//! when another reads it from Redis or disk.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How the body was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyForm {
    /// A whole JSON document (`chat.completion`, `text_completion`, embeddings, ...).
    Json,
    /// A `text/event-stream` body as received, `data: [DONE]` included.
    Sse,
}

/// A complete 2xx response, ready to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The route that stored it (purge by route).
    pub route: String,
    pub status: u16,
    pub content_type: String,
    pub form: BodyForm,
    pub body: Bytes,
    /// When it was stored (Unix ms): the `age` header counts from here.
    pub stored_at_ms: u64,
    /// When it expires (Unix ms); adaptive TTL moves this later, never past `max_expires_at_ms`.
    pub expires_at_ms: u64,
    /// The latest expiry adaptive TTL may give it (Unix ms).
    pub max_expires_at_ms: u64,
    /// The TTL a hit extends by, in ms (0: hits do not extend).
    pub extend_ms: u64,
    /// How long the upstream took to produce it: the time each hit saves.
    pub upstream_ms: u64,
    /// Tokens the upstream reported (`usage.total_tokens`): the tokens each hit saves.
    pub tokens: u64,
}

/// Version byte in front of every encoded entry, so a format change is a miss, not garbage.
const FORMAT: u8 = 1;

impl Entry {
    /// Whether it may still be served at `now_ms`.
    #[must_use]
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// Seconds since it was stored, for the `age` header.
    #[must_use]
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// The expiry after a hit at `now_ms`: `now + extend`, capped at the maximum; never earlier.
    #[must_use]
    pub fn extended_expiry(&self, now_ms: u64) -> u64 {
        if self.extend_ms == 0 {
            return self.expires_at_ms;
        }
        now_ms
            .saturating_add(self.extend_ms)
            .min(self.max_expires_at_ms)
            .max(self.expires_at_ms)
    }

    /// Remaining lifetime at `now_ms` in ms (0 when expired).
    #[must_use]
    pub fn ttl_ms(&self, now_ms: u64) -> u64 {
        self.expires_at_ms.saturating_sub(now_ms)
    }

    /// Approximate memory the entry holds, for byte-bounded tiers.
    #[must_use]
    pub fn weight(&self) -> usize {
        self.body.len() + self.route.len() + self.content_type.len() + 96
    }

    /// Serialized and LZ4-compressed, for Redis and disk.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let plain = postcard::to_stdvec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(plain.len() / 2 + 8);
        out.push(FORMAT);
        out.extend_from_slice(&lz4_flex::compress_prepend_size(&plain));
        out
    }

    /// The inverse of [`Entry::encode`]; `None` for bytes of another format or corrupt bytes.
    #[must_use]
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let (&format, rest) = bytes.split_first()?;
        if format != FORMAT {
            return None;
        }
        let plain = lz4_flex::decompress_size_prepended(rest).ok()?;
        postcard::from_bytes(&plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            route: "chat".into(),
            status: 200,
            content_type: "application/json".into(),
            form: BodyForm::Json,
            body: Bytes::from_static(br#"{"id":"x","choices":[]}"#),
            stored_at_ms: 1_000,
            expires_at_ms: 11_000,
            max_expires_at_ms: 61_000,
            extend_ms: 10_000,
            upstream_ms: 250,
            tokens: 42,
        }
    }

    #[test]
    fn encode_round_trips_and_rejects_garbage() {
        let e = entry();
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        assert_eq!(Entry::decode(b""), None);
        assert_eq!(Entry::decode(b"\x02abc"), None);
        let mut bad = e.encode();
        bad.truncate(bad.len() / 2);
        assert_eq!(Entry::decode(&bad), None);
    }

    #[test]
    fn hits_extend_expiry_up_to_the_cap() {
        let e = entry();
        assert!(e.is_fresh(10_999) && !e.is_fresh(11_000));
        assert_eq!(e.extended_expiry(5_000), 15_000);
        assert_eq!(e.extended_expiry(58_000), 61_000, "capped at max");
        assert_eq!(e.extended_expiry(500), 11_000, "never earlier");
        let fixed = Entry { extend_ms: 0, ..e };
        assert_eq!(fixed.extended_expiry(5_000), 11_000);
        assert_eq!(fixed.age_secs(3_500), 2);
    }
}
