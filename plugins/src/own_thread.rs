//! The one-thread runtimes the cache tiers and the shared limits run their Redis and disk work
//! on, so that work never waits on (or holds up) the proxy's worker threads.

use tokio::runtime::Runtime;

/// Starts a one-thread runtime named `thread`, then `start` on it. A failed start shuts the
/// runtime down in the background: dropping a runtime in async context panics, and the caller
/// may be in one.
pub fn start<T>(
    thread: &str,
    start: impl FnOnce(&Runtime) -> Result<T, String>,
) -> Result<(Runtime, T), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(thread)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start its runtime: {e}"))?;
    match start(&runtime) {
        Ok(started) => Ok((runtime, started)),
        Err(e) => {
            runtime.shutdown_background();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_work_runs_on_the_named_thread_and_a_failed_start_is_its_error() {
        let (runtime, ()) = super::start("sluice-test-own", |_| Ok(())).expect("starts");
        let name = runtime.block_on(async {
            tokio::spawn(async { std::thread::current().name().map(str::to_string) })
                .await
                .expect("joins")
        });
        assert_eq!(name.as_deref(), Some("sluice-test-own"));
        let failed = super::start("sluice-test-own", |_| Err::<(), _>("no".to_string()));
        assert_eq!(failed.err().as_deref(), Some("no"));
    }
}
