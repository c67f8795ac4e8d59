//! Human units in YAML: durations like `250ms`/`10s`/`5m`, sizes like `64KiB`/`10MiB`, and the
//! header names keys and scopes refer to.

use http::header::HeaderName;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m` or `h` (bare numbers are seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A byte size written as `<number><unit>` with unit `B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = split_number(s.trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration `{s}`: expected e.g. 250ms, 10s, 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in `{s}`: use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration `{s}` is too long"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s.trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size `{s}`: expected e.g. 64KiB, 10MiB"))?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "invalid size unit in `{s}`: use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    Ok((n * mult) as u64)
}

/// Whether a parse error message came from [`parse_duration`] or [`parse_size`]. serde_yaml
/// cannot place errors raised after a value was read, so the loader places these itself.
#[must_use]
pub fn is_unit_error(message: &str) -> bool {
    message.starts_with("invalid duration") || message.starts_with("invalid size")
}

/// Accepts a YAML string or a bare number.
struct TextOrNumber;

impl de::Visitor<'_> for TextOrNumber {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string like `10s` / `10MiB` or a number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_any(TextOrNumber)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_any(TextOrNumber)?;
        parse_size(&s).map(ByteSize).map_err(de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// The header a `header:NAME` key or scope names.
pub(super) fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        // Found by the config_load fuzz target: this panicked instead of being refused.
        let huge = format!("{}h", "9".repeat(400));
        assert_eq!(
            parse_duration(&huge).unwrap_err(),
            format!("duration `{huge}` is too long")
        );
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 * 1024 * 1024);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("10 MiBs").is_err());
    }
}
