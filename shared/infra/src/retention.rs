//! Retention: synthesised audio is removed once it is older than the configured retention, as
//! job records expire from the job store (`redis.job_ttl_secs`). Every gateway sweeps; deleting
//! an object twice is harmless, so several gateways need no coordination.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tts_contracts::AUDIO_PREFIX;

use crate::error::Result;
use crate::storage::AudioStore;

/// Deletes every audio object written more than `retention` ago. Returns how many it deleted.
pub async fn sweep(audio: &AudioStore, retention: Duration) -> Result<usize> {
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut deleted = 0;
    for (key, written) in audio.list_dated(AUDIO_PREFIX).await? {
        if written < cutoff {
            audio.delete(&key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Sweeps every `interval` until `stop` is cancelled. A failed sweep is logged and tried again at
/// the next interval.
pub async fn run(
    audio: AudioStore,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        match sweep(&audio, retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired audio removed"),
            Err(e) => tracing::warn!(error = %e, "the audio retention sweep failed"),
        }
    }
}
