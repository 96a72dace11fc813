//! Handling one delivery of a job, from the message to a settled ack.
//!
//! The order of effects is what makes a job survive any crash: the audio is written first, then
//! the record says `succeeded`, and only then is the delivery acked. A worker that dies anywhere
//! before the ack leaves the job to be redelivered, and the redelivery overwrites the same audio
//! object and record, so a job ends with exactly one audio object.
//!
//! This module settles deliveries and dispatches on the job's kind; `synthesize` and `enroll`
//! are the two bodies, and `context` is what they share. Nothing here is imported by them.

mod context;
mod enroll;
mod synthesize;

use std::time::Duration;

use tracing::Instrument;
use tts_contracts::{
    JobFailure, JobId, JobMessage, JobRecord, JobSpec, JobStatus, VoiceStatus, failure,
};
use tts_infra::{Delivery, InfraError, InfraErrorKind};

pub use context::JobContext;
use context::{JobError, publish, save, settle};

/// How a delivery ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Already finished by an earlier delivery.
    Duplicate,
    Failed(String),
    Retrying(String),
}

/// Handles one delivery: runs the job unless an earlier delivery finished it, then acks, naks
/// or terminates the delivery as the result says. Everything it does, and every log line of it,
/// is inside a span of the attempt that names the job, the engine, the attempt, this node and
/// the trace of the request that queued the job.
pub async fn handle(ctx: &JobContext, delivery: Box<dyn Delivery>) -> Outcome {
    let message: JobMessage = match serde_json::from_slice(delivery.payload()) {
        Ok(m) => m,
        Err(e) => return reject_unreadable(ctx, delivery.as_ref(), e).await,
    };
    let trace = delivery.trace();
    let span = tracing::info_span!(
        "job",
        job_id = %message.job_id,
        engine = %message.engine,
        attempt = delivery.attempt(),
        node = %ctx.node_id,
        trace_id = trace.as_ref().map(|t| t.trace_id().to_string()),
    );
    // For an OpenTelemetry exporter, when one is configured, each attempt is a child of the
    // gateway's request span.
    tts_infra::trace::continue_trace(&span, trace.as_ref());
    let observed = Observed::start(&message, delivery.attempt());
    let outcome = attempt(ctx, delivery, message).instrument(span).await;
    observed.finish(&outcome);
    outcome
}

/// A job attempt as the metrics see it (tts_infra::metrics): in flight from its start, then
/// counted by outcome, with its queue wait and, once the job has ended, its total time.
struct Observed {
    engine: String,
    kind: &'static str,
    created_at: chrono::DateTime<chrono::Utc>,
}

impl Observed {
    fn start(message: &JobMessage, attempt: u32) -> Self {
        use tts_infra::metrics::{JOB_QUEUE_WAIT, JOB_REDELIVERIES, WORKER_IN_FLIGHT};
        let engine = message.engine.clone();
        metrics::gauge!(WORKER_IN_FLIGHT, "engine" => engine.clone()).increment(1.0);
        if attempt > 1 {
            metrics::counter!(JOB_REDELIVERIES, "engine" => engine.clone()).increment(1);
        } else {
            metrics::histogram!(JOB_QUEUE_WAIT, "engine" => engine.clone())
                .record(seconds_since(message.created_at));
        }
        let kind = match message.spec {
            JobSpec::Synthesize { .. } => "synthesize",
            JobSpec::Enroll { .. } => "enroll",
        };
        Observed {
            engine,
            kind,
            created_at: message.created_at,
        }
    }

    fn finish(self, outcome: &Outcome) {
        use tts_infra::metrics::{JOB_TOTAL_TIME, JOBS_FINISHED, WORKER_IN_FLIGHT};
        metrics::gauge!(WORKER_IN_FLIGHT, "engine" => self.engine.clone()).decrement(1.0);
        let outcome = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed(_) => "failed",
            Outcome::Retrying(_) => "retried",
        };
        metrics::counter!(
            JOBS_FINISHED,
            "engine" => self.engine.clone(),
            "kind" => self.kind,
            "outcome" => outcome
        )
        .increment(1);
        if matches!(outcome, "succeeded" | "failed") {
            metrics::histogram!(JOB_TOTAL_TIME, "engine" => self.engine, "outcome" => outcome)
                .record(seconds_since(self.created_at));
        }
    }
}

fn seconds_since(at: chrono::DateTime<chrono::Utc>) -> f64 {
    (chrono::Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
}

async fn attempt(ctx: &JobContext, delivery: Box<dyn Delivery>, message: JobMessage) -> Outcome {
    let job_id = message.job_id;
    // A job for another engine is read, not started: it is refused before its record says
    // `running` on this worker.
    let ours = message.engine == ctx.engine.name();
    let mut record = match stored_record(ctx, delivery.as_ref(), &job_id, ours).await {
        Ok(Some(r)) => r,
        // The record may have expired while the job waited; the message has all it needs.
        Ok(None) => JobRecord::queued(&message),
        Err(e) => {
            return retry_or_fail(ctx, delivery.as_ref(), &message, None, JobError::from(e)).await;
        }
    };
    if record.status.is_terminal() {
        // An earlier delivery finished the job but its ack was lost, or it was cancelled while
        // it waited.
        cancel_enrolling_voice(ctx, &message).await;
        settle(delivery.ack().await, "ack");
        return Outcome::Duplicate;
    }
    let result = run(ctx, delivery.as_ref(), &message, &mut record).await;
    match result {
        Ok(()) => {
            settle(delivery.ack().await, "ack");
            tracing::info!(%job_id, attempt = delivery.attempt(), "job succeeded");
            Outcome::Succeeded
        }
        Err(JobError::AlreadyFinished) => {
            cancel_enrolling_voice(ctx, &message).await;
            settle(delivery.ack().await, "ack");
            Outcome::Duplicate
        }
        Err(e) => retry_or_fail(ctx, delivery.as_ref(), &message, Some(record), e).await,
    }
}

/// How often a delivery held for the job store asks it again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The job's stored record, marked `running` for this attempt on this worker when `start` says
/// so (a terminal record stays as it was). While the job store does not answer, the delivery is
/// held, with progress acks as a running job's, and the store asked again every second. A nak
/// instead would spend one of the job's deliveries per retry delay, so that an outage of the
/// store longer than `max_deliver` retry delays would fail every job that waited through it;
/// held, a job starts once the store is back. Shutdown abandons a held delivery as it does a
/// running one, and the queue redelivers it.
async fn stored_record(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    job_id: &JobId,
    start: bool,
) -> Result<Option<JobRecord>, InfraError> {
    let every = ctx.ack_wait / 3;
    let mut ack_due = tokio::time::Instant::now() + every;
    let mut holding = false;
    let store = ctx.adapters.store.as_ref();
    loop {
        let answer = if start {
            store.start(job_id, delivery.attempt(), &ctx.node_id).await
        } else {
            store.get(job_id).await
        };
        match answer {
            Err(e) if e.kind() == InfraErrorKind::Unavailable => {
                if !holding {
                    tracing::warn!(error = %e, "the job store does not answer; holding the job until it does");
                    holding = true;
                }
            }
            answer => return answer,
        }
        tokio::time::sleep(STORE_RETRY.min(every)).await;
        if tokio::time::Instant::now() >= ack_due {
            settle(delivery.in_progress().await, "progress ack");
            ack_due = tokio::time::Instant::now() + every;
        }
    }
}

/// An enrollment whose job was cancelled while it ran leaves its voice failed, not enrolling for
/// ever.
async fn cancel_enrolling_voice(ctx: &JobContext, message: &JobMessage) {
    if !matches!(message.spec, JobSpec::Enroll { .. }) {
        return;
    }
    if let Ok(Some(record)) = ctx.adapters.store.get(&message.job_id).await
        && record.status == tts_contracts::JobStatus::Cancelled
    {
        fail_enrolling_voice(ctx, &message.spec, &record.failure()).await;
    }
}

/// Marks the job running, then runs the body of its kind.
async fn run(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    message: &JobMessage,
    record: &mut JobRecord,
) -> Result<(), JobError> {
    start(ctx, delivery, message, record).await?;
    match &message.spec {
        JobSpec::Synthesize {
            text,
            voice_id,
            language,
            speed,
            streamed,
        } => {
            let request = synthesize::Request {
                text,
                voice_id,
                language,
                speed: *speed,
                streamed: *streamed,
            };
            synthesize::run(ctx, delivery, record, request).await
        }
        JobSpec::Enroll {
            voice_id,
            upload_key,
        } => enroll::run(ctx, delivery, record, voice_id, upload_key).await,
    }
}

/// Refuses a job for another engine, then makes sure the record says this attempt is `running`
/// on this worker: the store has marked it so already unless the record was missing, and then
/// it is stored here. Either way the `running` event goes out.
async fn start(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    message: &JobMessage,
    record: &mut JobRecord,
) -> Result<(), JobError> {
    if message.engine != ctx.engine.name() {
        return Err(JobError::permanent(
            failure::WRONG_ENGINE,
            format!(
                "job for engine {} reached a {} worker",
                message.engine,
                ctx.engine.name()
            ),
        ));
    }
    let started = record.status == JobStatus::Running
        && record.attempts == delivery.attempt()
        && record.worker.as_deref() == Some(ctx.node_id.as_str());
    if started {
        publish(ctx, record, None).await;
    } else if !record.start(delivery.attempt(), &ctx.node_id) || !save(ctx, record, None).await? {
        return Err(JobError::AlreadyFinished);
    }
    Ok(())
}

async fn retry_or_fail(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    message: &JobMessage,
    record: Option<JobRecord>,
    error: JobError,
) -> Outcome {
    let (failure, permanent) = match error {
        JobError::Permanent(f) => (f, true),
        JobError::Transient(f) => (f, false),
        JobError::AlreadyFinished => {
            settle(delivery.ack().await, "ack");
            return Outcome::Duplicate;
        }
    };
    // A record that became terminal here only in memory (its final write is what failed) was
    // never stored as such; it cannot take a failure, so it counts as no record at all.
    let record = record.filter(|r| !r.status.is_terminal());
    let last_attempt = delivery.attempt() >= delivery.max_attempts();
    // Without a record (the store did not answer) the failure could not be written, so the job
    // goes back to the queue even on its last attempt: the queue then reports it exhausted and
    // the failure is recorded from that report.
    if !permanent && (!last_attempt || record.is_none()) {
        tracing::warn!(
            job_id = ?record.as_ref().map(|r| r.job_id),
            attempt = delivery.attempt(),
            error = %failure.message,
            "job hit a transient error; it will be retried"
        );
        if let Some(mut record) = record
            && record.requeue()
        {
            let note = format!("retrying after: {}", failure.message);
            // Best effort: the retry happens whether or not the store answers.
            let _ = save(ctx, &record, Some(note)).await;
        }
        settle(
            delivery
                .nak(backoff(ctx.retry_delay, delivery.attempt()))
                .await,
            "nak",
        );
        return Outcome::Retrying(failure.message);
    }
    // The voice learns of a failed enrollment before the job's failure is announced, so that a
    // client that reads the voice on that announcement sees it failed.
    fail_enrolling_voice(ctx, &message.spec, &failure).await;
    if let Some(mut record) = record
        && record.fail(&failure.error, failure.message.clone())
    {
        if let Err(JobError::Transient(f) | JobError::Permanent(f)) = save(ctx, &record, None).await
        {
            // The failure could not be recorded: leave the job to the queue, which redelivers
            // it (or reports it exhausted) so that it is not left running for ever.
            tracing::error!(job_id = %record.job_id, error = %f.message, "could not record job failure");
            settle(delivery.nak(ctx.retry_delay).await, "nak");
            return Outcome::Retrying(f.message);
        }
        tracing::warn!(job_id = %record.job_id, error = %failure.message, "job failed");
    }
    settle(delivery.term().await, "term");
    Outcome::Failed(failure.message)
}

/// The wait before the next delivery of a job that failed on `attempt`: `retry_delay`, doubled
/// after each attempt and at most a minute (or `retry_delay`, if that is longer), so that a
/// dependency that is away for a while (object storage, an upstream server) gets time to come
/// back before the job uses up its deliveries.
fn backoff(retry_delay: std::time::Duration, attempt: u32) -> std::time::Duration {
    let cap = retry_delay.max(std::time::Duration::from_secs(60));
    retry_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap)
}

/// A message that is not a job: mark it failed if its id can be read, and drop it.
async fn reject_unreadable(
    ctx: &JobContext,
    delivery: &dyn Delivery,
    error: serde_json::Error,
) -> Outcome {
    let message = format!("the job message is not valid: {error}");
    let id = serde_json::from_slice::<serde_json::Value>(delivery.payload())
        .ok()
        .and_then(|v| v.get("job_id")?.as_str()?.parse().ok());
    if let Some(job_id) = id
        && let Ok(Some(mut record)) = ctx.adapters.store.get(&job_id).await
        && record.fail(failure::INVALID_JOB, message.clone())
    {
        let _ = save(ctx, &record, None).await;
    }
    tracing::error!(%message, "dropping an invalid job message");
    settle(delivery.term().await, "term");
    Outcome::Failed(message)
}

/// Marks a job failed after the queue gave up on it (its deliveries are used up), unless it
/// already finished.
pub async fn fail_exhausted(
    ctx: &JobContext,
    message: &JobMessage,
    reason: &JobFailure,
) -> Result<bool, InfraError> {
    let mut record = match ctx.adapters.store.get(&message.job_id).await? {
        Some(r) => r,
        None => JobRecord::queued(message),
    };
    if !record.fail(&reason.error, reason.message.clone()) {
        return Ok(false);
    }
    fail_enrolling_voice(ctx, &message.spec, reason).await;
    let written = ctx.adapters.store.put(&record).await?;
    publish(ctx, &record, None).await;
    Ok(written)
}

/// Marks the voice of a failed enrollment job failed with the job's reason. Best effort: a voice
/// that was deleted stays deleted, and one already enrolled is left alone.
async fn fail_enrolling_voice(ctx: &JobContext, spec: &JobSpec, failure: &JobFailure) {
    let JobSpec::Enroll { voice_id, .. } = spec else {
        return;
    };
    match ctx.adapters.voices.get(voice_id).await {
        Ok(Some(mut voice)) if voice.info.status == VoiceStatus::Enrolling => {
            voice.info.status = VoiceStatus::Failed;
            voice.error = Some(failure.clone());
            if let Err(e) = ctx.adapters.voices.update(&voice).await {
                tracing::warn!(%voice_id, error = %e, "could not record the voice's failure");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(%voice_id, error = %e, "could not read the voice"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn the_retry_delay_doubles_up_to_a_minute() {
        let delays: Vec<u64> = (1..=8)
            .map(|a| super::backoff(Duration::from_secs(2), a).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(super::backoff(Duration::from_secs(90), 3).as_secs(), 90);
        assert_eq!(
            super::backoff(Duration::from_secs(1), u32::MAX).as_secs(),
            60
        );
    }
}
