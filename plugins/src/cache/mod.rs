//! The prompt cache's engines: canonical request keys ([`key`]), SSE record/replay and the
//! JSON ⇄ stream conversions that let one entry serve both forms ([`sse`]), the stored
//! [`Entry`] ([`entry`]), the tiers memory → Redis → disk ([`store`]) and single-flight of
//! identical misses ([`flight`]). Nothing here knows about Pingora or the clock: callers pass
//! the time in.

pub mod entry;
pub mod flight;
pub mod key;
pub mod sse;
pub mod store;

pub use entry::{BodyForm, Entry};

/// The cache's state that outlives requests and reloads: the tiers and the flights in progress.
pub struct PromptCache {
    pub store: std::sync::Arc<store::CacheStore>,
    pub flights: flight::Flights,
}

/// The 128-bit key of one cacheable request (route, path, scope and canonical body fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

impl CacheKey {
    /// 32 lower-case hex digits, as used in Redis keys and on disk.
    #[must_use]
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}
