//! Helpers for tests that inject faults under load: many jobs waited for at once, the audio
//! objects storage holds, per-request timing, a worker's settled deliveries read from its log,
//! and an engine that fails one text on every delivery.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tts_contracts::VoiceInfo;
use tts_worker::engine::piper::PiperEngine;
use tts_worker::engine::{
    Audio, Engine, EngineError, EngineErrorKind, EngineHealth, Step, SynthesisInput,
};

use crate::TestApp;

/// How many job records are read at once when a test reads many.
const READ_AT_ONCE: usize = 16;

/// Every job's record as it is now, in the order of `ids` (a missing record reads as the
/// gateway's JSON error, which has no status).
pub async fn read_jobs(app: &TestApp, ids: &[String]) -> Vec<Value> {
    futures::stream::iter(ids)
        .map(|id| app.job(id))
        .buffered(READ_AT_ONCE)
        .collect()
        .await
}

/// Waits until every job in `ids` is terminal (`succeeded`, `failed` or `cancelled`) and returns
/// their records in the order of `ids`; fails naming the jobs still unfinished after `within`.
/// Records missing for a while (a job store that restarted empty) count as unfinished.
pub async fn wait_for_jobs(app: &TestApp, ids: &[String], within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_jobs(app, ids).await;
        let unfinished: Vec<&Value> = records.iter().filter(|r| !is_terminal(r)).collect();
        if unfinished.is_empty() {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} jobs unfinished after {within:?}, such as {}",
            unfinished.len(),
            ids.len(),
            unfinished[0]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a job record (as `GET /api/jobs/{id}` answers it) is terminal.
pub fn is_terminal(record: &Value) -> bool {
    matches!(
        record["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// The keys storage holds under `audio/`.
pub async fn audio_objects(app: &TestApp) -> BTreeSet<String> {
    app.audio
        .list("audio")
        .await
        .expect("storage lists")
        .into_iter()
        .collect()
}

/// The audio keys of the jobs `ids`: what storage should hold once each has succeeded once.
pub fn audio_keys(ids: &[String]) -> BTreeSet<String> {
    ids.iter()
        .map(|id| tts_contracts::audio_key(&id.parse().expect("a job id")))
        .collect()
}

/// Sends `request` and returns the response with the time it took to arrive.
pub async fn timed(request: reqwest::RequestBuilder) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let response = request.send().await.expect("request sent");
    (response, started.elapsed())
}

/// The `RUST_LOG` under which a worker process logs, besides its usual lines, each delivery it
/// settles ("delivery settled", with its outcome).
pub const LOG_SETTLED: &str = "info,tts_worker::service=debug";

/// The outcome in a worker's JSON log line saying it settled a delivery (`Succeeded`,
/// `Duplicate`, `Failed(..)`, `Retrying(..)`), for a worker started with [`LOG_SETTLED`].
pub fn settled_outcome(line: &str) -> Option<String> {
    let entry: Value = serde_json::from_str(line).ok()?;
    if entry["fields"]["message"] != "delivery settled" {
        return None;
    }
    Some(entry["fields"]["outcome"].as_str()?.to_string())
}

/// The code a [`PoisonEngine`] fails its poison text with.
pub const POISONED: &str = "poisoned";

/// The Piper voice, except that a text containing `poison` fails with a transient error on every
/// delivery, as a job that trips a fault in the engine's runtime each time it is tried would.
pub struct PoisonEngine {
    inner: &'static PiperEngine,
    poison: String,
    /// How many times the poison text was tried.
    poisoned_calls: AtomicUsize,
}

impl PoisonEngine {
    pub fn new(poison: &str) -> Arc<Self> {
        Arc::new(PoisonEngine {
            inner: crate::engines::piper(),
            poison: poison.to_string(),
            poisoned_calls: AtomicUsize::new(0),
        })
    }

    /// How many deliveries of the poison text reached the engine.
    pub fn poisoned_calls(&self) -> usize {
        self.poisoned_calls.load(Ordering::SeqCst)
    }
}

impl Engine for PoisonEngine {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        self.inner.voices()
    }

    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        if input.text.contains(&self.poison) {
            self.poisoned_calls.fetch_add(1, Ordering::SeqCst);
            return Err(EngineError::new(
                EngineErrorKind::Transient,
                POISONED,
                "the engine's runtime faulted on this text",
            ));
        }
        self.inner.synthesize(input, progress)
    }

    fn health(&self) -> EngineHealth {
        self.inner.health()
    }
}
