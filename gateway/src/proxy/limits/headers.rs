//! OpenAI's rate-limit headers: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, for
//! the tightest limit of each kind.

use http::header::{HeaderName, HeaderValue};
use sluice_plugins::limits::LimitState;
use sluice_plugins::openai_error::human_duration;

/// Which limits a header trio describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
}

/// The three headers for `kind`.
pub fn rate_headers(kind: Kind, state: LimitState) -> [(HeaderName, HeaderValue); 3] {
    let [limit, remaining, reset] = match kind {
        Kind::Requests => [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        Kind::Tokens => [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    };
    let reset_value = HeaderValue::from_str(&human_duration(state.reset))
        .unwrap_or(HeaderValue::from_static("0ms"));
    [
        (
            HeaderName::from_static(limit),
            HeaderValue::from(state.limit),
        ),
        (
            HeaderName::from_static(remaining),
            HeaderValue::from(state.remaining),
        ),
        (HeaderName::from_static(reset), reset_value),
    ]
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
        let h = rate_headers(Kind::Requests, state);
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
