//! Request ids and W3C Trace Context: the `traceparent` a request arrives with (or a new trace),
//! the one sluice sends upstream as the parent of its tries, and the `x-request-id` that ties a
//! client's answer, the access line and the upstream's request together.

use std::fmt;

/// The longest `x-request-id` kept from a client; a longer or stranger one is replaced.
pub const MAX_REQUEST_ID: usize = 64;

/// A `traceparent` header: version 00, trace id, parent (span) id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` value; `None` for anything the spec says to ignore (another
    /// length for version 00, upper-case hex, an all-zero id, version ff).
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        // Later versions may append fields after a `-`; their first 55 bytes read as 00's.
        let head = value.get(..55)?;
        let version = hex_byte(&head[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if version != 0 && value.get(55).is_some_and(|&b| b != b'-') {
            return None;
        }
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&head[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&head[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&head[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new sampled trace from 192 random bits (the ids are never all zero).
    #[must_use]
    pub fn new_trace(random: [u64; 3]) -> TraceParent {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&random[0].to_be_bytes());
        trace_id[8..].copy_from_slice(&(random[1] | 1).to_be_bytes());
        TraceParent {
            trace_id,
            span_id: (random[2] | 1).to_be_bytes(),
            flags: 1,
        }
    }

    /// The same trace with `span` as the parent: what the next hop sees.
    #[must_use]
    pub fn with_span(&self, span: u64) -> TraceParent {
        TraceParent {
            span_id: (span | 1).to_be_bytes(),
            ..*self
        }
    }

    /// The trace id as 32 lower-case hex digits.
    #[must_use]
    pub fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The trace id, printed as 32 lower-case hex digits without an allocation.
    #[must_use]
    pub fn trace_id(&self) -> TraceId<'_> {
        TraceId(&self.trace_id)
    }
}

/// See [`TraceParent::trace_id`].
pub struct TraceId<'a>(&'a [u8; 16]);

impl fmt::Display for TraceId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 32];
        hex_into(self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl TraceParent {
    /// `00-<trace>-<span>-<flags>`, the header's bytes, without an allocation.
    #[must_use]
    pub fn header_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[..2].copy_from_slice(b"00");
        hex_into(&self.trace_id, &mut out[3..35]);
        hex_into(&self.span_id, &mut out[36..52]);
        hex_into(&[self.flags], &mut out[53..55]);
        out
    }

    /// The trace id's 32 lower-case hex digits, without an allocation.
    #[must_use]
    pub fn trace_id_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&self.trace_id, &mut out);
        out
    }
}

impl fmt::Display for TraceParent {
    /// `00-<trace>-<span>-<flags>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.header_bytes();
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

/// Whether a client's `x-request-id` is kept: 1 to [`MAX_REQUEST_ID`] bytes of letters, digits
/// and `-_.:`, so it is safe in a header, a log line and a JSON string as it is.
#[must_use]
pub fn sane_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

/// `bytes` as lower-case hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes `bytes` as lower-case hex into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_round_trips() {
        let tp = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(tp.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.trace_id().to_string(), tp.trace_hex());
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), EXAMPLE);
        let next = tp.with_span(0x1234);
        assert_eq!(next.trace_id, tp.trace_id);
        assert_eq!(
            next.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001235-01"
        );
    }

    #[test]
    fn what_the_spec_says_to_ignore_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
        let later =
            TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra");
        assert!(
            later.is_some(),
            "a later version's extra fields are skipped"
        );
    }

    #[test]
    fn new_traces_are_never_zero_and_request_ids_are_plain() {
        let tp = TraceParent::new_trace([0, 0, 0]);
        assert!(TraceParent::parse(tp.to_string().as_bytes()).is_some());
        assert!(sane_request_id(b"req-1.a_b:c"));
        for bad in [&b""[..], b"a b", b"a\"b", b"\xc3\xa9", &[b'a'; 65]] {
            assert!(!sane_request_id(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn whatever_parses_prints_back_as_it_came_for_version_00(bytes in proptest::collection::vec(any::<u8>(), 0..70)) {
            if let Some(tp) = TraceParent::parse(&bytes) {
                if bytes.starts_with(b"00") {
                    let printed = tp.to_string();
                    prop_assert_eq!(printed.as_bytes(), &bytes[..]);
                }
            }
        }

        #[test]
        fn printed_traceparents_parse(a in any::<u64>(), b in any::<u64>(), c in any::<u64>(), s in any::<u64>()) {
            let tp = TraceParent::new_trace([a, b, c]).with_span(s);
            prop_assert_eq!(TraceParent::parse(tp.to_string().as_bytes()), Some(tp));
        }
    }
}
