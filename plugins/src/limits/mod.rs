//! Limits: who may send how many requests and spend how many tokens, and how many requests an
//! upstream takes at once. Engines only: they take keys (hashed client identities), counts and
//! time, and return decisions; the gateway's admission phases turn those into 429/503 answers
//! and `x-ratelimit-*` headers.

pub mod gate;
pub mod rate;
pub mod shared;
pub mod tokens;
pub mod usage;

use std::time::Duration;

/// Where one limit stands for one key after a decision: OpenAI's `x-ratelimit-*` trio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The bucket's capacity (requests or tokens).
    pub limit: u64,
    /// What the key may still take at once.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// One limit's answer for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed(LimitState),
    Limited {
        state: LimitState,
        /// The earliest time the same request could be admitted.
        retry_after: Duration,
    },
}

impl Decision {
    #[must_use]
    pub fn state(&self) -> LimitState {
        match self {
            Decision::Allowed(state) | Decision::Limited { state, .. } => *state,
        }
    }

    #[must_use]
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed(_))
    }
}

/// A GCRA bucket's shape: it holds `burst` units and gets one back every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: Duration,
    pub burst: u64,
}

impl Rate {
    /// `count` units per `period`, holding up to `burst`; `None` when any of them is zero.
    #[must_use]
    pub fn per(count: u64, period: Duration, burst: u64) -> Option<Rate> {
        if count == 0 || burst == 0 || period.is_zero() {
            return None;
        }
        let interval = Duration::from_nanos(
            u64::try_from(period.as_nanos() / u128::from(count)).unwrap_or(u64::MAX),
        );
        (!interval.is_zero()).then_some(Rate { interval, burst })
    }
}
