//! An access line written straight into a byte buffer, in the same text and JSON shapes the
//! tracing formatter gives other events, without its per-field visitor and `fmt` machinery.

use chrono::{DateTime, Utc};
use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one access line says.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    /// Logged only when the client named the request itself (else it equals the request id).
    pub trace_id: Option<[u8; 32]>,
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub endpoint: &'a str,
    pub status: u16,
    pub served_by: &'a str,
    pub duration: Duration,
    pub ttfb: Option<Duration>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub cache: &'a str,
    pub variant: &'a str,
    pub key: Option<&'a str>,
    pub error: &'a str,
}

/// How lines are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Text { ansi: bool },
    Json,
}

thread_local! {
    /// The last second formatted, `YYYY-MM-DDTHH:MM:SS`: a busy thread formats it once a second.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

impl AccessLine<'_> {
    /// Appends the line and its newline to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>, shape: Shape, at: SystemTime) {
        match shape {
            Shape::Text { ansi } => self.text(out, at, ansi),
            Shape::Json => self.json(out, at),
        }
    }

    fn text(&self, out: &mut Vec<u8>, at: SystemTime, ansi: bool) {
        if ansi {
            out.extend_from_slice(b"\x1b[2m");
            timestamp(out, at);
            out.extend_from_slice(b"\x1b[0m \x1b[32m INFO\x1b[0m access: request");
        } else {
            timestamp(out, at);
            out.extend_from_slice(b"  INFO access: request");
        }
        let mut field = |name: &str, value: Value<'_>| {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            value.text(out);
        };
        self.fields(&mut field);
        out.push(b'\n');
    }

    fn json(&self, out: &mut Vec<u8>, at: SystemTime) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, at);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        let mut field = |name: &str, value: Value<'_>| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            value.json(out);
        };
        self.fields(&mut field);
        out.extend_from_slice(b",\"target\":\"access\"}\n");
    }

    /// The fields in their order, absent optional ones left out.
    fn fields(&self, field: &mut impl FnMut(&str, Value<'_>)) {
        field("request_id", Value::Str(self.request_id));
        if let Some(trace_id) = &self.trace_id {
            field(
                "trace_id",
                Value::Str(std::str::from_utf8(trace_id).unwrap_or("")),
            );
        }
        field("method", Value::Str(self.method));
        field("path", Value::Str(self.path));
        field("route", Value::Str(self.route));
        field("upstream", Value::Str(self.upstream));
        field("endpoint", Value::Str(self.endpoint));
        field("status", Value::Int(u64::from(self.status)));
        field("served_by", Value::Str(self.served_by));
        field("duration_ms", Value::Millis(self.duration));
        field("ttfb_ms", Value::Millis(self.ttfb.unwrap_or_default()));
        field("bytes_in", Value::Int(self.bytes_in as u64));
        field("bytes_out", Value::Int(self.bytes_out as u64));
        field("cache", Value::Str(self.cache));
        field("variant", Value::Str(self.variant));
        if let Some(key) = self.key {
            field("key", Value::Str(key));
        }
        field("error", Value::Str(self.error));
    }
}

enum Value<'a> {
    Str(&'a str),
    Int(u64),
    /// Milliseconds to the microsecond, as the shortest decimal (`12.345`, `0.5`, `3.0`).
    Millis(Duration),
}

impl Value<'_> {
    fn text(&self, out: &mut Vec<u8>) {
        match self {
            // The quoting and escapes of Rust's `Debug`, as tracing writes string fields.
            Value::Str(s) if plain(s) => quoted(out, s),
            Value::Str(s) => {
                let _ = write!(out, "{s:?}");
            }
            _ => self.number(out),
        }
    }

    fn json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Str(s) if plain(s) => quoted(out, s),
            Value::Str(s) => {
                let _ = serde_json::to_writer(&mut *out, s);
            }
            _ => self.number(out),
        }
    }

    fn number(&self, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        match self {
            Value::Int(n) => out.extend_from_slice(digits.format(*n).as_bytes()),
            Value::Millis(d) => {
                let micros = d.as_micros();
                out.extend_from_slice(digits.format(micros / 1000).as_bytes());
                out.push(b'.');
                let frac = (micros % 1000) as u32;
                let places = [frac / 100, frac / 10 % 10, frac % 10];
                let last = places.iter().rposition(|&p| p != 0).unwrap_or(0);
                out.extend(places[..=last].iter().map(|&p| b'0' + p as u8));
            }
            Value::Str(_) => {}
        }
    }
}

/// Printable ASCII without quote or backslash: written as is in both shapes.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC, as tracing's formatter writes it.
fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let when = i64::try_from(secs)
                .ok()
                .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
                .unwrap_or_default();
            let mut cursor = &mut text[..];
            let _ = write!(cursor, "{}", when.format("%Y-%m-%dT%H:%M:%S"));
            *cached = secs;
        }
        out.extend_from_slice(text);
    });
    let micros = since.subsec_micros();
    let mut digits = itoa::Buffer::new();
    let frac = digits.format(micros);
    out.push(b'.');
    out.extend(std::iter::repeat_n(b'0', 6 - frac.len()));
    out.extend_from_slice(frac.as_bytes());
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> AccessLine<'static> {
        AccessLine {
            request_id: "a82bdbd06b0778566f1ccb4adc13ced5",
            method: "POST",
            path: "/v1/chat/completions",
            route: "bench",
            upstream: "up",
            endpoint: "http://127.0.0.1:18771",
            status: 200,
            served_by: "upstream",
            duration: Duration::from_micros(8436),
            ttfb: Some(Duration::from_micros(917)),
            bytes_in: 57,
            bytes_out: 333,
            ..AccessLine::default()
        }
    }

    fn at(secs: u64, micros: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
    }

    fn written(l: &AccessLine<'_>, shape: Shape, when: SystemTime) -> String {
        let mut out = Vec::new();
        l.write_to(&mut out, shape, when);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_line_is_the_tracing_formatters_shape() {
        assert_eq!(
            written(&line(), Shape::Text { ansi: false }, at(1_780_000_000, 621_221)),
            "2026-05-28T20:26:40.621221Z  INFO access: request request_id=\"a82bdbd06b0778566f1ccb4adc13ced5\" method=\"POST\" path=\"/v1/chat/completions\" route=\"bench\" upstream=\"up\" endpoint=\"http://127.0.0.1:18771\" status=200 served_by=\"upstream\" duration_ms=8.436 ttfb_ms=0.917 bytes_in=57 bytes_out=333 cache=\"\" variant=\"\" error=\"\"\n"
        );
    }

    #[test]
    fn json_line_parses_with_every_field_and_escapes_what_needs_it() {
        let mut l = line();
        l.error = "upstream said \"no\"\n\u{1} é";
        l.key = Some("team-a");
        l.trace_id = Some(*b"4bf92f3577b34da6a3ce929d0e0e4736");
        l.ttfb = None;
        let text = written(&l, Shape::Json, at(951_782_400, 5));
        assert!(text.ends_with("}\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["timestamp"], "2000-02-29T00:00:00.000005Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "request");
        assert_eq!(v["target"], "access");
        assert_eq!(v["error"], "upstream said \"no\"\n\u{1} é");
        assert_eq!(v["key"], "team-a");
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 8.436);
        assert_eq!(v["ttfb_ms"], 0.0);
        assert_eq!(v["bytes_out"], 333);
    }

    #[test]
    fn text_escapes_strings_as_debug_does() {
        let mut l = line();
        l.path = "/a\"b\\c\td";
        let text = written(&l, Shape::Text { ansi: false }, at(0, 0));
        assert!(text.starts_with("1970-01-01T00:00:00.000000Z  INFO access: request "));
        assert!(
            text.contains(&format!("path={:?} ", "/a\"b\\c\td")),
            "{text}"
        );
    }

    #[test]
    fn millis_are_the_shortest_decimal_of_whole_microseconds() {
        let ms = |micros: u64| {
            let mut out = Vec::new();
            Value::Millis(Duration::from_micros(micros)).text(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(ms(0), "0.0");
        assert_eq!(ms(3000), "3.0");
        assert_eq!(ms(500), "0.5");
        assert_eq!(ms(1050), "1.05");
        assert_eq!(ms(12_345), "12.345");
        for micros in [1, 7, 10, 999, 1001, 123_456_789] {
            let parsed: f64 = ms(micros).parse().unwrap();
            assert_eq!(parsed, micros as f64 / 1000.0);
        }
    }

    #[test]
    fn timestamps_cross_seconds_days_and_leap_days() {
        let ts = |secs, micros| {
            let mut out = Vec::new();
            timestamp(&mut out, at(secs, micros));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(ts(1_709_208_000, 999_999), "2024-02-29T12:00:00.999999Z");
        assert_eq!(ts(1_709_208_001, 0), "2024-02-29T12:00:01.000000Z");
        assert_eq!(ts(4_102_444_799, 10), "2099-12-31T23:59:59.000010Z");
        assert_eq!(ts(1_709_208_000, 1), "2024-02-29T12:00:00.000001Z");
    }
}
