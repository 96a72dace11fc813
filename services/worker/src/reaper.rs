//! Jobs the queue gave up on. After `max_deliver` deliveries without an ack (workers that kept
//! dying on it), JetStream keeps the message and publishes an advisory; the engine's workers
//! share a queue subscription to it, and the one that gets it marks the job failed and removes
//! the message, so that the job ends in a state a client can read.

use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tts_contracts::{JobMessage, subjects};
use tts_infra::JetStreamQueue;

use crate::job::{self, JobContext};

#[derive(Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
}

/// Watches for exhausted jobs until `shutdown` is cancelled.
pub async fn run(queue: JetStreamQueue, ctx: JobContext, shutdown: CancellationToken) {
    let engine = ctx.engine.name().to_string();
    let subject = subjects::max_deliveries_advisory(&engine);
    let group = format!("tts-reaper-{engine}");
    let mut advisories = match queue.client().queue_subscribe(subject, group).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch for exhausted jobs");
            return;
        }
    };
    loop {
        let advisory = tokio::select! {
            a = advisories.next() => match a { Some(a) => a, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&advisory.payload)
        else {
            continue;
        };
        match queue.take_exhausted(advisory.stream_seq).await {
            Ok(Some(payload)) => match serde_json::from_slice::<JobMessage>(&payload) {
                Ok(job) => match job::fail_exhausted(&ctx, &job).await {
                    Ok(_) => {
                        tracing::warn!(job_id = %job.job_id, "job failed after its last delivery")
                    }
                    Err(e) => {
                        tracing::error!(job_id = %job.job_id, error = %e, "could not mark exhausted job failed")
                    }
                },
                Err(e) => tracing::error!(error = %e, "exhausted message is not a job"),
            },
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "could not read exhausted job"),
        }
    }
}
