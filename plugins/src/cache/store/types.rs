//! What the store and its tiers share: the disk tier's settings, a slow tier's lookup result,
//! the wall clock. A leaf, so the tiers never import the store that owns them.

use crate::cache::Entry;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// The local L3.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// A directory; the store keeps its database file `cache.redb` in it (created if missing).
    pub path: PathBuf,
    /// Bound on the encoded entries stored (the file itself is somewhat larger).
    pub max_bytes: u64,
}

/// What a slower tier found for a key.
pub(super) enum Lookup {
    Hit(Entry),
    Miss,
    /// A value that can never be served (corrupt, or expired on disk): delete it.
    Discard,
}

/// The wall clock in Unix ms, only where the API has no `now_ms` (put, moka's expiry).
pub(super) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
