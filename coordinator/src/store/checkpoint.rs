//! SQLite's WAL checkpoints, off the write path.
//!
//! By default SQLite checkpoints inside the commit that takes the write-ahead log past 1,000 pages: that commit
//! copies the log into the database file and syncs both, and with one connection every call queued behind it waits
//! (a scheduler pass every few seconds took 6–9 ms instead of 2.5). Here a task of the store's own, on a connection
//! of its own, checkpoints every [`EVERY`] instead; SQLite's checkpoints run beside the writer in WAL mode. The
//! writer still checkpoints past [`BACKSTOP_PAGES`], so a log cannot grow without bound if this task falls behind.

use std::time::Duration;

use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

/// How often the log is checkpointed.
pub(super) const EVERY: Duration = Duration::from_secs(1);

/// Log pages after which the writer checkpoints itself (`PRAGMA wal_autocheckpoint`): 64 MiB of 4 KiB pages.
pub(super) const BACKSTOP_PAGES: u32 = 16_384;

/// Starts checkpointing the SQLite store at `url` until the guard is dropped (with the store).
pub(super) async fn start(url: &str) -> Result<DropGuard, sqlx::Error> {
    let mut conn = url.parse::<AnyConnectOptions>()?.connect().await?;
    let stop = CancellationToken::new();
    let cancelled = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancelled.cancelled() => break,
                _ = every.tick() => {}
            }
            // PASSIVE: copies what no reader still needs, never waits for the writer or blocks it.
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut conn).await {
                Ok((_, log, copied)) => debug!(log, copied, "checkpointed the store's write-ahead log"),
                Err(e) => warn!(error = %e, "could not checkpoint the store's write-ahead log; trying again"),
            }
        }
        let _ = conn.close().await;
    });
    Ok(stop.drop_guard())
}
