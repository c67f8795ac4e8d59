//! Purges that reach every instance: the Redis tier is shared, but each instance's memory and
//! disk tiers are its own. A purge publishes `<origin> *` or `<origin> route:<name>` on
//! `<prefix>:cache:purge`; every instance listens there and purges its own memory and disk
//! tiers (the origin has already). Classic pub/sub: on a cluster a message reaches every node,
//! so a listener on any one node hears them all.

use super::memory::MemoryTier;
use super::queue::Queue;
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

/// The message of a purge of everything (`None`) or of one route, from instance `origin`.
#[must_use]
pub(super) fn message(origin: u64, route: Option<&str>) -> String {
    match route {
        Some(route) => format!("{origin:016x} route:{route}"),
        None => format!("{origin:016x} *"),
    }
}

/// What a purge message asks, if it is one: its origin and route (`None`: everything).
#[must_use]
pub(super) fn parse(message: &str) -> Option<(u64, Option<String>)> {
    let (origin, what) = message.split_once(' ')?;
    let origin = u64::from_str_radix(origin, 16).ok()?;
    match what {
        "*" => Some((origin, None)),
        _ => Some((origin, Some(what.strip_prefix("route:")?.to_string()))),
    }
}

/// The tiers a purge told by another instance clears here.
pub(super) struct LocalTiers {
    pub memory: Arc<MemoryTier>,
    pub disk: Option<Queue>,
}

impl LocalTiers {
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
            Some((from, route)) if from != origin => local.purge(route.as_deref()).await,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{message, parse};

    #[test]
    fn messages_round_trip_and_junk_is_ignored() {
        assert_eq!(parse(&message(7, None)), Some((7, None)));
        assert_eq!(
            parse(&message(u64::MAX, Some("chat v2"))),
            Some((u64::MAX, Some("chat v2".into())))
        );
        for junk in ["", "zz *", "0000000000000001", "0000000000000001 drop"] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }
}
