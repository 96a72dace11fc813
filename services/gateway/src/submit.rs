//! Turning a request into a queued job: validation, the job record, idempotency, the queue.

use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use tts_contracts::{
    AudioFormat, JobId, JobMessage, JobRecord, JobSpec, SPEED_RANGE, SynthesizeRequest,
    TraceParent, VoiceInfo, VoiceStatus, failure,
};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::error::AppError;
use crate::limits::DeferredCount;

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A checked request: the job to queue and the format its audio is to be delivered in.
pub struct Validated {
    pub job: JobMessage,
    pub format: AudioFormat,
}

/// Checks a request against the API's rules and the live fleet, and builds its job.
pub async fn validate(
    state: &AppState,
    caller: &Caller,
    request: SynthesizeRequest,
) -> Result<Validated, AppError> {
    // Checked first: a format that cannot be delivered must not cost a job.
    let format = match request.format.as_deref() {
        Some(name) => crate::audio::parse_format(name)?,
        None => AudioFormat::default(),
    };
    let text = request.text.trim();
    if text.is_empty() {
        return Err(AppError::unprocessable(
            "invalid_text",
            "text must not be empty",
        ));
    }
    let chars = text.chars().count();
    let max = state.options.max_text_chars;
    if chars > max {
        return Err(AppError::unprocessable(
            "text_too_long",
            format!("text has {chars} characters; at most {max} are accepted"),
        ));
    }
    let speed = request.speed.unwrap_or(1.0);
    let (min_speed, max_speed) = SPEED_RANGE;
    if !speed.is_finite() || !(min_speed..=max_speed).contains(&speed) {
        return Err(AppError::unprocessable(
            "invalid_speed",
            format!("speed must be between {min_speed} and {max_speed}"),
        ));
    }
    if request.voice_id.trim().is_empty() {
        return Err(AppError::unprocessable(
            "invalid_voice",
            "voice_id must not be empty",
        ));
    }
    let voice = resolve_voice(state, caller, &request.voice_id).await?;
    let language = match request.language {
        Some(l) if l.trim().is_empty() => {
            return Err(AppError::unprocessable(
                "invalid_language",
                "language must not be empty",
            ));
        }
        Some(l) => {
            if !voice.speaks(&l) {
                return Err(AppError::unprocessable(
                    "unsupported_language",
                    format!(
                        "voice {} speaks {}, not {l}",
                        voice.voice_id, voice.language
                    ),
                ));
            }
            l
        }
        None => voice.language.clone(),
    };
    // A stock voice carries the range its engine announced; a cloned one takes its engine's,
    // as the live workers announce it.
    let speeds = voice
        .speed_range
        .or_else(|| state.registry.engine_speed_range(&voice.engine))
        .unwrap_or_default();
    if !speeds.contains(speed) {
        return Err(AppError::unprocessable(
            "unsupported_speed",
            if speeds.min == speeds.max {
                format!(
                    "voice {} can only be spoken at speed {}, not {speed}",
                    voice.voice_id, speeds.min
                )
            } else {
                format!(
                    "voice {} can be spoken at speeds {} to {}, not {speed}",
                    voice.voice_id, speeds.min, speeds.max
                )
            },
        ));
    }
    let job = JobMessage {
        job_id: Uuid::new_v4(),
        engine: voice.engine,
        created_at: Utc::now(),
        tenant: caller.tenant.clone(),
        spec: JobSpec::Synthesize {
            text: text.to_string(),
            voice_id: voice.voice_id,
            language,
            speed,
            // A streamed answer marks its job in `stream::submit`.
            streamed: false,
        },
    };
    Ok(Validated { job, format })
}

/// A stock voice of a live worker, or a cloned voice that is ready and whose engine has a live
/// worker.
pub(crate) async fn resolve_voice(
    state: &AppState,
    caller: &Caller,
    voice_id: &str,
) -> Result<VoiceInfo, AppError> {
    if let Some(voice) = state.registry.voice(voice_id) {
        return Ok(voice);
    }
    // A stock voice this gateway has heard of, whose workers are all gone: come back later,
    // rather than wait for a worker that may never come.
    if let Some(gone) = state.registry.heard_voice(voice_id) {
        return Err(AppError::unavailable_for_now(
            "engine_unavailable",
            format!(
                "no live worker of engine {} serves voice {voice_id} now",
                gone.engine
            ),
            RETRY_AFTER_SECS,
        ));
    }
    let unknown = || {
        AppError::unprocessable(
            "unknown_voice",
            format!(
                "voice {voice_id:?} is not available; GET /api/voices lists the voices that are"
            ),
        )
    };
    // Another tenant's voice does not exist for this caller.
    let Some(record) = state
        .deps
        .voices
        .get(voice_id)
        .await?
        .filter(|r| caller.owns(r.tenant.as_deref()))
    else {
        return Err(unknown());
    };
    match record.info.status {
        VoiceStatus::Ready => {}
        VoiceStatus::Enrolling => {
            return Err(AppError::client(
                StatusCode::CONFLICT,
                "voice_not_ready",
                format!("voice {voice_id} is still enrolling; follow its job for progress"),
            ));
        }
        VoiceStatus::Failed => {
            let reason = record
                .error
                .map(|e| format!("{}: {}", e.error, e.message))
                .unwrap_or_else(|| "no reason recorded".into());
            return Err(AppError::unprocessable(
                "voice_failed",
                format!("voice {voice_id} failed to enrol ({reason})"),
            ));
        }
    }
    if state.registry.engine_nodes(&record.info.engine).is_empty() {
        return Err(AppError::unavailable_for_now(
            "engine_unavailable",
            format!(
                "no live worker runs engine {}, which voice {voice_id} needs",
                record.info.engine
            ),
            RETRY_AFTER_SECS,
        ));
    }
    Ok(record.info)
}

/// Seconds a client is told to wait when there is no capacity for its request now.
pub(crate) const RETRY_AFTER_SECS: u64 = 5;

/// Backpressure for requests that wait for their result: refused with 503 and `Retry-After`
/// when no live worker runs the engine or its queue is deeper than `gateway.max_queue_depth`,
/// rather than waiting for a worker that may never come.
async fn check_capacity(state: &AppState, engine: &str) -> Result<(), AppError> {
    // A degraded worker (its engine's servers unreachable) takes no jobs, so it does not count.
    if state.registry.serving_nodes(engine).is_empty() {
        return Err(AppError::unavailable_for_now(
            "engine_unavailable",
            format!("no live worker of engine {engine} is taking jobs now"),
            RETRY_AFTER_SECS,
        ));
    }
    let depth = state.depths.depth(state, engine).await?;
    if depth > state.options.max_queue_depth {
        return Err(AppError::unavailable_for_now(
            "queue_full",
            format!(
                "{depth} jobs are waiting for engine {engine}; try again shortly or submit with POST /api/jobs"
            ),
            RETRY_AFTER_SECS,
        ));
    }
    Ok(())
}

/// How long a queue depth read for one sync request answers for the next ones. Asking the
/// queue costs a round trip to NATS on every sync request otherwise; a bound on the queue's
/// depth needs no fresher reading than this, since it only keeps the wait of a sync request from
/// growing without limit.
const DEPTH_FRESH_FOR: std::time::Duration = std::time::Duration::from_millis(100);

/// The latest depth read of each engine's queue and when it was read.
#[derive(Default)]
pub struct QueueDepths {
    read: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u64)>>,
}

impl QueueDepths {
    /// The engine's queue depth: the latest reading while it is fresh, else the queue's answer.
    /// Only readings within the bound are reused, so that a full queue is asked again each time
    /// and is seen to drain as soon as it does.
    async fn depth(&self, state: &AppState, engine: &str) -> Result<u64, AppError> {
        let now = std::time::Instant::now();
        let fresh = |(at, depth): &(std::time::Instant, u64)| {
            now.duration_since(*at) < DEPTH_FRESH_FOR && *depth <= state.options.max_queue_depth
        };
        if let Some((_, depth)) = self.lock().get(engine).filter(|r| fresh(r)) {
            return Ok(*depth);
        }
        let depth = state.deps.queue.depth(engine).await?;
        self.lock().insert(engine.to_string(), (now, depth));
        Ok(depth)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (std::time::Instant, u64)>>
    {
        // Every update is a single insert, so a poisoned lock holds nothing half-written.
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The request's `Idempotency-Key`, checked: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        AppError::client(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )
    };
    let key = value.to_str().map_err(|_| invalid())?;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(key.to_string()))
}

/// The result of a submission: a new job, or the one an idempotency key already named.
pub struct Submitted {
    pub job_id: JobId,
    pub replayed: bool,
}

impl Submitted {
    /// Names the job in an answer's headers (`X-Job-Id`, and `Idempotent-Replayed` for a job an
    /// earlier request made). A streamed answer sends them before the audio, so that a client
    /// that loses the stream can still read the job by id.
    pub fn tag(&self, headers: &mut axum::http::HeaderMap) {
        use axum::http::HeaderValue;
        headers.insert(
            "x-job-id",
            HeaderValue::from_str(&self.job_id.to_string()).expect("a uuid is a valid header"),
        );
        if self.replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
    }
}

/// Whether a submission applies [`check_capacity`]: requests that wait for their result do, so
/// that they are refused at once rather than wait for a worker that may never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    Apply,
    Skip,
}

/// Records the job as queued, then queues it. The record comes first so that a worker that
/// takes the job at once finds it, and a client that polls at once sees `queued`. With an
/// idempotency key already claimed for another job, nothing is queued and that job is
/// returned: a retry, through any gateway, finds the job its first attempt made. `format` goes on
/// the record (workers store WAV whatever it is) for `GET /api/jobs/{id}/audio` to answer in.
/// `count` is the request's count against the shared rate limits, taken here: together with the
/// record for a new job, alone for a replayed one.
pub async fn submit(
    state: &AppState,
    job: JobMessage,
    format: Option<AudioFormat>,
    idempotency_key: Option<&str>,
    backpressure: Backpressure,
    trace: &TraceParent,
    count: Option<&DeferredCount>,
) -> Result<Submitted, AppError> {
    // Keys are scoped to the tenant: two tenants may use the same key for different jobs.
    let scoped = idempotency_key.map(|k| format!("{}:{k}", job.tenant.as_deref().unwrap_or("-")));
    let idempotency_key = scoped.as_deref();
    if let Some(key) = idempotency_key
        && let Some(existing) = state
            .deps
            .store
            .claim_idempotency_key(key, &job.job_id)
            .await?
    {
        // Taken before the replayed job is waited for, so that a refusal comes at once.
        if let Some(count) = count.and_then(DeferredCount::take) {
            count.take().await?;
        }
        tracing::info!(job_id = %existing, "idempotency key replayed");
        return Ok(Submitted {
            job_id: existing,
            replayed: true,
        });
    }
    if let Err(e) = record_and_queue(state, &job, format, backpressure, trace, count).await {
        if let Some(key) = idempotency_key
            && let Err(release) = state
                .deps
                .store
                .release_idempotency_key(key, &job.job_id)
                .await
        {
            tracing::warn!(error = %release, "could not release idempotency key");
        }
        return Err(e);
    }
    tracing::info!(job_id = %job.job_id, engine = %job.engine, "job queued");
    let kind = match job.spec {
        JobSpec::Synthesize { .. } => "synthesize",
        JobSpec::Enroll { .. } => "enroll",
    };
    metrics::counter!(tts_infra::metrics::JOBS_SUBMITTED, "engine" => job.engine.clone(), "kind" => kind)
        .increment(1);
    Ok(Submitted {
        job_id: job.job_id,
        replayed: false,
    })
}

async fn record_and_queue(
    state: &AppState,
    job: &JobMessage,
    format: Option<AudioFormat>,
    backpressure: Backpressure,
    trace: &TraceParent,
    count: Option<&DeferredCount>,
) -> Result<(), AppError> {
    if backpressure == Backpressure::Apply {
        check_capacity(state, &job.engine).await?;
    }
    let mut record = JobRecord::queued(job);
    record.format = format;
    // Taken only here: a submission refused before (a full queue) leaves its count to the
    // limits' middleware, which takes it alone.
    match count.and_then(DeferredCount::take) {
        Some(count) => count.take_with_record(&record).await?,
        None => {
            state.deps.store.put(&record).await?;
        }
    }
    if let Err(e) = state.deps.queue.enqueue(job, Some(trace)).await {
        // The job was recorded but never queued: record that it failed, so that nobody waits
        // for it.
        let mut failed = record;
        if failed.fail(failure::QUEUE_UNAVAILABLE, "the job could not be queued") {
            let _ = state.deps.store.put(&failed).await;
        }
        return Err(e.into());
    }
    Ok(())
}
