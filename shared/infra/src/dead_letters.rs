//! Jobs the queue gave up on. After `max_deliver` deliveries without an ack (workers that kept
//! dying on it), JetStream keeps the message in the jobs stream and publishes a max-deliveries
//! advisory. The advisories are captured in a stream of their own, so that none is lost while no
//! worker listens; an engine's workers share a durable consumer of them and, for each, move the
//! job into the dead-letter stream with the reason, mark it failed, and take it out of the jobs
//! stream. An admin lists the dead letters and may requeue one.

use std::time::Duration;

use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageErrorKind};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use tts_contracts::{DeadLetter, JobFailure, JobId, JobMessage, subjects};

use crate::error::{InfraError, InfraErrorKind, Result};
use crate::pull::Pulls;
use crate::queue::{JetStreamQueue, QueueSettings};

/// Creates the advisories stream and the dead-letter stream when they do not exist yet.
pub(crate) async fn create_streams(
    js: &jetstream::Context,
    settings: &QueueSettings,
) -> Result<()> {
    js.get_or_create_stream(jetstream::stream::Config {
        name: subjects::EXHAUSTED_STREAM.to_string(),
        subjects: vec![subjects::EXHAUSTED_ALL.to_string()],
        // An advisory is dealt with once, by one worker.
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        num_replicas: settings.replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| InfraError::unavailable("advisories stream").with_source(e))?;
    js.get_or_create_stream(jetstream::stream::Config {
        name: subjects::DEAD_LETTERS_STREAM.to_string(),
        subjects: vec![subjects::DEAD_LETTERS_ALL.to_string()],
        retention: jetstream::stream::RetentionPolicy::Limits,
        storage: jetstream::stream::StorageType::File,
        num_replicas: settings.replicas.max(1),
        max_age: settings.dead_letter_max_age,
        // One dead letter per job: a job that dies again after a requeue replaces its letter.
        max_messages_per_subject: 1,
        // Burying the same job twice (an advisory handled again after a crash) stores it once.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| InfraError::unavailable("dead-letter stream").with_source(e))?;
    Ok(())
}

#[derive(Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// The max-deliveries advisories of one engine's jobs, shared by its workers.
pub struct ExhaustedJobs {
    pulls: Pulls,
}

/// One advisory: a job (by its sequence in the jobs stream) that used up its deliveries. It must
/// be settled with [`Exhausted::done`] or [`Exhausted::later`].
pub struct Exhausted {
    message: jetstream::Message,
    pub stream_seq: u64,
    pub deliveries: u32,
}

impl ExhaustedJobs {
    /// Waits up to `wait` for the next advisory; `None` when none came. An advisory that cannot
    /// be read is dropped.
    pub async fn next(&self, wait: Duration) -> Result<Option<Exhausted>> {
        let Some(message) = self.pulls.next(wait).await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload) {
            Ok(advisory) => Ok(Some(Exhausted {
                stream_seq: advisory.stream_seq,
                deliveries: advisory.deliveries.min(u32::MAX as u64) as u32,
                message,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "dropping an advisory that cannot be read");
                let _ = message.ack_with(AckKind::Term).await;
                Ok(None)
            }
        }
    }
}

impl Exhausted {
    /// The job has been dealt with: the advisory is removed.
    pub async fn done(&self) -> Result<()> {
        self.message
            .double_ack()
            .await
            .map_err(|e| InfraError::unavailable("ack advisory").with_source(e))
    }

    /// Dealing with the job failed for a reason that may pass: the advisory comes back.
    pub async fn later(&self, delay: Duration) -> Result<()> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| InfraError::unavailable("nak advisory").with_source(e))
    }
}

impl JetStreamQueue {
    /// The engine's shared consumer of max-deliveries advisories, created on first use.
    pub async fn exhausted_jobs(&self, engine: &str) -> Result<ExhaustedJobs> {
        let name = subjects::reaper(engine);
        let consumer = self
            .js()
            .get_stream(subjects::EXHAUSTED_STREAM)
            .await
            .map_err(|e| InfraError::unavailable("advisories stream").with_source(e))?
            .get_or_create_consumer(
                &name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subjects::max_deliveries_advisory(engine),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| InfraError::unavailable(format!("consumer {name}")).with_source(e))?;
        Ok(ExhaustedJobs {
            pulls: Pulls::new(consumer, "pull advisories", self.client(), self.js()),
        })
    }

    /// Keeps `job` in the dead-letter stream with `reason`, waiting for the server to store it.
    pub async fn bury(&self, job: &JobMessage, reason: &JobFailure, deliveries: u32) -> Result<()> {
        let letter = DeadLetter {
            job_id: job.job_id,
            engine: job.engine.clone(),
            reason: reason.clone(),
            deliveries,
            dead_at: Utc::now(),
            job: job.clone(),
        };
        let payload = serde_json::to_vec(&letter)
            .map_err(|e| InfraError::wrap(InfraErrorKind::Invalid, e))?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(format!(
                "dead:{}:{}",
                job.job_id,
                job.created_at.timestamp_micros()
            ));
        let ack = self
            .js()
            .send_publish(subjects::dead_letter(&job.job_id), publish)
            .await
            .map_err(|e| InfraError::unavailable("publish dead letter").with_source(e))?;
        ack.await
            .map_err(|e| InfraError::unavailable("dead letter not stored").with_source(e))?;
        Ok(())
    }

    /// Removes a job from the jobs stream by its sequence; a message already gone is no error.
    pub async fn remove_job(&self, stream_seq: u64) -> Result<()> {
        let stream = self.jobs_stream().await?;
        match stream.delete_message(stream_seq).await {
            Ok(_) => Ok(()),
            // The server words a missing message in several ways; whether it is still there
            // says what the failure meant.
            Err(e) => match self.job_at(stream_seq).await {
                Ok(None) => Ok(()),
                _ => {
                    Err(InfraError::unavailable(format!("delete job {stream_seq}")).with_source(e))
                }
            },
        }
    }

    /// The payload of the job at `stream_seq` in the jobs stream, `None` when it has left.
    pub async fn job_at(&self, stream_seq: u64) -> Result<Option<Bytes>> {
        let stream = self.jobs_stream().await?;
        match stream.get_raw_message(stream_seq).await {
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(InfraError::unavailable(format!("get job {stream_seq}")).with_source(e)),
        }
    }

    async fn dead_stream(&self) -> Result<jetstream::stream::Stream> {
        self.js()
            .get_stream(subjects::DEAD_LETTERS_STREAM)
            .await
            .map_err(|e| InfraError::unavailable("dead-letter stream").with_source(e))
    }

    /// Up to `limit` dead letters, oldest first.
    pub async fn list_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let stream = self.dead_stream().await?;
        let mut letters = Vec::new();
        let mut next = 1;
        while letters.len() < limit {
            let found = stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subjects::DEAD_LETTERS_ALL)
                .send()
                .await;
            let message = match found {
                Ok(m) => m,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => {
                    return Err(InfraError::unavailable("read dead letters").with_source(e));
                }
            };
            next = message.sequence + 1;
            match serde_json::from_slice::<DeadLetter>(&message.payload) {
                Ok(letter) => letters.push(letter),
                Err(e) => {
                    tracing::warn!(seq = message.sequence, error = %e, "unreadable dead letter")
                }
            }
        }
        Ok(letters)
    }

    /// The dead letter of `job_id`, if there is one.
    pub async fn find_dead_letter(&self, job_id: &JobId) -> Result<Option<DeadLetter>> {
        let stream = self.dead_stream().await?;
        match stream
            .get_last_raw_message_by_subject(&subjects::dead_letter(job_id))
            .await
        {
            Ok(m) => serde_json::from_slice(&m.payload)
                .map(Some)
                .map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(InfraError::unavailable("read dead letter").with_source(e)),
        }
    }

    /// Queues a dead letter's job again, as a new message (the original id is still within the
    /// jobs stream's de-duplication window for a job that died quickly), then removes the letter.
    pub async fn requeue_dead_letter(&self, letter: &DeadLetter) -> Result<()> {
        let payload = serde_json::to_vec(&letter.job)
            .map_err(|e| InfraError::wrap(InfraErrorKind::Invalid, e))?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .message_id(format!(
                "{}:requeued:{}",
                letter.job_id,
                letter.dead_at.timestamp_micros()
            ));
        let ack = self
            .js()
            .send_publish(subjects::jobs(&letter.engine), publish)
            .await
            .map_err(|e| InfraError::unavailable("requeue job").with_source(e))?;
        ack.await
            .map_err(|e| InfraError::unavailable("requeued job not stored").with_source(e))?;
        self.dead_stream()
            .await?
            .purge()
            .filter(subjects::dead_letter(&letter.job_id))
            .await
            .map_err(|e| InfraError::unavailable("remove dead letter").with_source(e))?;
        Ok(())
    }
}
