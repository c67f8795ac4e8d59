//! Purges and refreshes that reach every instance: the Redis tier is shared, but each
//! instance's memory and disk tiers are its own. A purge publishes `<origin> *` or
//! `<origin> route:<name>`, a `no-cache` refresh `<origin> key:<hex>:<route>`, on
//! `<prefix>:cache:purge`; every instance listens there and follows in its own memory and
//! disk tiers (the origin has already). Classic pub/sub: on a cluster a message reaches every node,
//! so a listener on any one node hears them all.

use super::memory::MemoryTier;
use super::queue::{Change, Queue};
use crate::cache::CacheKey;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The channel purges are told on.
#[must_use]
pub(super) fn channel(prefix: &str) -> String {
    format!("{prefix}:cache:purge")
}

/// What another instance did that this one's own tiers must follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Told {
    /// Purged everything (`None`) or one route.
    Purge(Option<String>),
    /// Stored a fresh answer for `key` of `route` (a `no-cache` refresh): older copies go.
    Refresh { route: String, key: CacheKey },
}

/// The message of `told`, from instance `origin`.
#[must_use]
pub(super) fn message(origin: u64, told: &Told) -> String {
    match told {
        Told::Purge(None) => format!("{origin:016x} *"),
        Told::Purge(Some(route)) => format!("{origin:016x} route:{route}"),
        Told::Refresh { route, key } => format!("{origin:016x} key:{}:{route}", key.hex()),
    }
}

/// What a message tells, if it is one of ours, and its origin.
#[must_use]
pub(super) fn parse(message: &str) -> Option<(u64, Told)> {
    let (origin, what) = message.split_once(' ')?;
    let origin = u64::from_str_radix(origin, 16).ok()?;
    if what == "*" {
        return Some((origin, Told::Purge(None)));
    }
    if let Some(route) = what.strip_prefix("route:") {
        return Some((origin, Told::Purge(Some(route.to_string()))));
    }
    let (hex, route) = what.strip_prefix("key:")?.split_once(':')?;
    let key = CacheKey(u128::from_str_radix(hex, 16).ok()?);
    let route = route.to_string();
    Some((origin, Told::Refresh { route, key }))
}

/// The tiers a purge told by another instance clears here.
pub(super) struct LocalTiers {
    pub memory: Arc<MemoryTier>,
    pub disk: Option<Queue>,
}

impl LocalTiers {
    async fn follow(&self, told: Told) {
        match told {
            Told::Purge(route) => self.purge(route.as_deref()).await,
            Told::Refresh { route, key } => {
                self.memory.remove(key).await;
                if let Some(disk) = &self.disk {
                    disk.push(Change::Remove { key, route });
                }
            }
        }
    }

    async fn purge(&self, route: Option<&str>) {
        let memory = self.memory.purge(route).await;
        let disk = match &self.disk {
            Some(disk) => disk.purge(route).await,
            None => 0,
        };
        tracing::info!(
            route = route.unwrap_or("*"),
            memory,
            disk,
            "cache purged by another instance"
        );
    }
}

/// Listens for other instances' purges on `handle`, reconnecting (through each of `urls` in
/// turn) with backoff for as long as the runtime runs.
pub(super) fn listen(
    urls: Vec<String>,
    channel: String,
    origin: u64,
    local: LocalTiers,
    handle: &Handle,
) {
    handle.spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        for url in urls.iter().cycle() {
            match subscribe(url, &channel, origin, &local).await {
                Ok(()) => backoff = FIRST_BACKOFF,
                Err(e) => tracing::debug!("cache: purge listener: {e}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// One subscription, until its connection ends.
async fn subscribe(
    url: &str,
    channel: &str,
    origin: u64,
    local: &LocalTiers,
) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
    pubsub.subscribe(channel).await.map_err(|e| e.to_string())?;
    let mut messages = pubsub.on_message();
    while let Some(m) = messages.next().await {
        let Ok(text) = m.get_payload::<String>() else {
            continue;
        };
        match parse(&text) {
            Some((from, told)) if from != origin => local.follow(told).await,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{message, parse, Told};
    use crate::cache::CacheKey;

    #[test]
    fn messages_round_trip_and_junk_is_ignored() {
        let key = CacheKey(0xabc);
        for told in [
            Told::Purge(None),
            Told::Purge(Some("chat v2".into())),
            Told::Refresh {
                route: "a:b".into(),
                key,
            },
        ] {
            assert_eq!(parse(&message(u64::MAX, &told)), Some((u64::MAX, told)));
        }
        for junk in [
            "",
            "zz *",
            "0000000000000001",
            "0000000000000001 drop",
            "01 key:xyz:r",
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }
}
