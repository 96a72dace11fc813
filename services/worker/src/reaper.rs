//! Jobs the queue gave up on. After `max_deliver` deliveries without an ack (workers that kept
//! dying on it), JetStream keeps the message and publishes an advisory, which a stream keeps
//! (`tts_infra::dead_letters`). The engine's workers share a durable consumer of those
//! advisories; the one that takes an advisory keeps the job as a dead letter with the reason,
//! marks it failed, and removes it from the jobs stream, so that the job ends in a state a client
//! can read and an admin can requeue it. Each step can be repeated without harm, so an advisory
//! whose handling fails half-way is simply taken again.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tts_contracts::{JobFailure, JobMessage, failure};
use tts_infra::JetStreamQueue;
use tts_infra::dead_letters::Exhausted;

use crate::job::{self, JobContext};

/// How long one pull for advisories waits before it asks again.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// When handling an advisory fails (NATS or Redis away), how long before it comes back.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Deals with exhausted jobs until `shutdown` is cancelled.
pub async fn run(queue: JetStreamQueue, ctx: JobContext, shutdown: CancellationToken) {
    let engine = ctx.engine.name().to_string();
    let mut source = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let exhausted = match &source {
            Some(source) => source,
            None => match queue.exhausted_jobs(&engine).await {
                Ok(s) => source.insert(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for exhausted jobs yet");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_DELAY) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
        };
        let next = tokio::select! {
            next = exhausted.next(PULL_WAIT) => next,
            _ = shutdown.cancelled() => return,
        };
        match next {
            Ok(Some(advisory)) => handle(&queue, &ctx, advisory).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not pull advisories");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn handle(queue: &JetStreamQueue, ctx: &JobContext, advisory: Exhausted) {
    match bury(queue, ctx, &advisory).await {
        Ok(()) => {
            if let Err(e) = advisory.done().await {
                tracing::warn!(error = %e, "could not ack an advisory; it will be handled again");
            }
        }
        Err(e) => {
            tracing::warn!(
                stream_seq = advisory.stream_seq,
                error = %e,
                "could not deal with an exhausted job; trying again"
            );
            let _ = advisory.later(RETRY_DELAY).await;
        }
    }
}

/// Keeps the job as a dead letter, marks it failed and takes it out of the jobs stream, in that
/// order, so that a job is never removed before its letter is stored.
async fn bury(
    queue: &JetStreamQueue,
    ctx: &JobContext,
    advisory: &Exhausted,
) -> Result<(), tts_infra::InfraError> {
    let span = tracing::info_span!(
        "exhausted",
        stream_seq = advisory.stream_seq,
        job_id = tracing::field::Empty
    );
    bury_in(queue, ctx, advisory).instrument(span).await
}

async fn bury_in(
    queue: &JetStreamQueue,
    ctx: &JobContext,
    advisory: &Exhausted,
) -> Result<(), tts_infra::InfraError> {
    let Some(payload) = queue.job_at(advisory.stream_seq).await? else {
        // Gone already: handled before, or acked at the last moment.
        return Ok(());
    };
    let job: JobMessage = match serde_json::from_slice(&payload) {
        Ok(job) => job,
        Err(e) => {
            tracing::error!(stream_seq = advisory.stream_seq, error = %e, "an exhausted message is not a job; removing it");
            return queue.remove_job(advisory.stream_seq).await;
        }
    };
    tracing::Span::current().record("job_id", tracing::field::display(job.job_id));
    let reason = JobFailure {
        error: failure::MAX_DELIVERIES_EXCEEDED.into(),
        message: format!(
            "the job was delivered {} times without finishing",
            advisory.deliveries
        ),
    };
    queue.bury(&job, &reason, advisory.deliveries).await?;
    job::fail_exhausted(ctx, &job, &reason).await?;
    queue.remove_job(advisory.stream_seq).await?;
    tracing::warn!(
        deliveries = advisory.deliveries,
        "job failed after its last delivery; kept as a dead letter"
    );
    Ok(())
}
