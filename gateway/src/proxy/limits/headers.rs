//! OpenAI's rate-limit headers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, for
//! the tightest limit of each kind.

use http::header::{HeaderName, HeaderValue};
use sluice_plugins::limits::LimitState;
use sluice_plugins::openai_error::human_duration;

/// The three headers for `kind` (`requests` or `tokens`).
pub fn rate_headers(kind: &str, state: LimitState) -> Vec<(HeaderName, HeaderValue)> {
    let values = [
        ("limit", state.limit.to_string()),
        ("remaining", state.remaining.to_string()),
        ("reset", human_duration(state.reset)),
    ];
    values
        .into_iter()
        .filter_map(|(what, value)| {
            let name = HeaderName::from_bytes(format!("x-ratelimit-{what}-{kind}").as_bytes());
            Some((name.ok()?, HeaderValue::from_str(&value).ok()?))
        })
        .collect()
}

/// The tighter of two states: the one with less remaining.
pub fn tighter(current: Option<LimitState>, next: LimitState) -> Option<LimitState> {
    match current {
        Some(c) if c.remaining <= next.remaining => Some(c),
        _ => Some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn headers_read_like_openai() {
        let state = LimitState {
            limit: 600,
            remaining: 599,
            reset: Duration::from_millis(100),
        };
        let h = rate_headers("requests", state);
        let text: Vec<String> = h
            .iter()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        assert_eq!(
            text,
            [
                "x-ratelimit-limit-requests: 600",
                "x-ratelimit-remaining-requests: 599",
                "x-ratelimit-reset-requests: 100ms"
            ]
        );
    }

    #[test]
    fn the_tightest_limit_wins() {
        let s = |remaining| LimitState {
            limit: 10,
            remaining,
            reset: Duration::ZERO,
        };
        let t = tighter(tighter(tighter(None, s(5)), s(2)), s(7));
        assert_eq!(t.map(|s| s.remaining), Some(2));
    }
}
