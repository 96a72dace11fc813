//! The job queue: the gateway enqueues, workers take deliveries and settle them.
//!
//! Distributed mode keeps jobs in a JetStream work-queue stream with one durable pull consumer
//! per engine, shared by all of that engine's workers, so that they split the jobs and a job
//! whose worker dies is redelivered after `ack_wait`. Standalone mode keeps them in process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tts_contracts::trace::TRACEPARENT;
use tts_contracts::{DeadLetter, JobId, JobMessage, TraceParent, subjects};

use crate::error::{InfraError, InfraErrorKind, Result, Source};
use crate::pull::Pulls;

#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// How long a delivery may go without an ack or a progress ack before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries of one job before the server gives up on it.
    pub max_deliver: i64,
    pub replicas: usize,
    /// How long a dead letter is kept before it ages out of the dead-letter stream.
    pub dead_letter_max_age: Duration,
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Queues a job on its engine's subject, with the trace it belongs to in the message's
    /// headers. Enqueuing the same job id twice within the de-duplication window stores it once.
    async fn enqueue(&self, job: &JobMessage, trace: Option<&TraceParent>) -> Result<()>;

    /// Jobs of `engine` waiting for a worker (queued, not yet handed out).
    async fn depth(&self, engine: &str) -> Result<u64>;

    fn is_connected(&self) -> bool;

    /// Up to `limit` jobs the queue gave up on, oldest first; `None` from a queue that keeps no
    /// dead letters (the in-process one, whose jobs never outlive the process).
    async fn dead_letters(&self, limit: usize) -> Result<Option<Vec<DeadLetter>>> {
        let _ = limit;
        Ok(None)
    }

    /// The dead letter of `job_id`, if the queue keeps one.
    async fn dead_letter(&self, job_id: &JobId) -> Result<Option<DeadLetter>> {
        let _ = job_id;
        Ok(None)
    }

    /// Queues a dead letter's job again and removes the letter.
    async fn requeue(&self, letter: &DeadLetter) -> Result<()> {
        let _ = letter;
        Err(InfraError::invalid("this queue keeps no dead letters"))
    }
}

/// Where a worker takes jobs from.
#[async_trait]
pub trait JobSource: Send + Sync + 'static {
    /// Waits up to `wait` for the next job; `None` when none came.
    async fn next(&self, wait: Duration) -> Result<Option<Box<dyn Delivery>>>;
}

/// One delivery of a job to a worker, which must settle it exactly once.
#[async_trait]
pub trait Delivery: Send + Sync {
    fn payload(&self) -> &[u8];
    /// 1 for the first delivery, 2 for the first redelivery, and so on.
    fn attempt(&self) -> u32;
    /// The attempt after which the queue gives up.
    fn max_attempts(&self) -> u32;
    /// The trace of the request that queued the job, when it sent one.
    fn trace(&self) -> Option<TraceParent>;
    /// The job is done: remove it from the queue.
    async fn ack(&self) -> Result<()>;
    /// The job failed for a reason that may pass: deliver it again after `delay`.
    async fn nak(&self, delay: Duration) -> Result<()>;
    /// The job is still being worked on: restart the redelivery timer.
    async fn in_progress(&self) -> Result<()>;
    /// The job can never succeed: remove it without redelivery.
    async fn term(&self) -> Result<()>;
}

fn encode(job: &JobMessage) -> Result<Bytes> {
    serde_json::to_vec(job)
        .map(Bytes::from)
        .map_err(|e| InfraError::wrap(InfraErrorKind::Invalid, e))
}

/// Jobs in NATS JetStream.
#[derive(Clone)]
pub struct JetStreamQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: QueueSettings,
}

impl JetStreamQueue {
    /// Creates the jobs stream, and the streams of exhausted jobs and dead letters, when they do
    /// not exist yet.
    pub async fn connect(client: async_nats::Client, settings: QueueSettings) -> Result<Self> {
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: subjects::JOBS_STREAM.to_string(),
            subjects: vec![subjects::JOBS_ALL.to_string()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            num_replicas: settings.replicas.max(1),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| InfraError::unavailable("jobs stream").with_source(e))?;
        crate::dead_letters::create_streams(&js, &settings).await?;
        Ok(JetStreamQueue {
            client,
            js,
            settings,
        })
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    pub(crate) async fn jobs_stream(&self) -> Result<jetstream::stream::Stream> {
        self.js
            .get_stream(subjects::JOBS_STREAM)
            .await
            .map_err(|e| InfraError::unavailable("jobs stream").with_source(e))
    }

    /// The engine's shared durable consumer, created on first use.
    pub async fn source(&self, engine: &str) -> Result<JetStreamSource> {
        let name = subjects::consumer(engine);
        let consumer = self
            .jobs_stream()
            .await?
            .get_or_create_consumer(
                &name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subjects::jobs(engine),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.settings.ack_wait,
                    max_deliver: self.settings.max_deliver,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| InfraError::unavailable(format!("consumer {name}")).with_source(e))?;
        // An existing consumer keeps the settings it was created with; the server's are the ones
        // that decide when it gives up on a job, so they are the ones workers go by.
        let config = &consumer.cached_info().config;
        let max_deliver = config.max_deliver;
        if max_deliver != self.settings.max_deliver || config.ack_wait != self.settings.ack_wait {
            tracing::warn!(
                consumer = %name,
                max_deliver,
                ack_wait = ?config.ack_wait,
                "the consumer exists with other settings than configured; it keeps its own"
            );
        }
        Ok(JetStreamSource {
            pulls: Pulls::new(consumer, "pull", &self.client, &self.js),
            max_deliver,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

#[async_trait]
impl JobQueue for JetStreamQueue {
    async fn enqueue(&self, job: &JobMessage, trace: Option<&TraceParent>) -> Result<()> {
        crate::nats::ensure_connected(&self.client)?;
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(encode(job)?)
            .message_id(job.job_id.to_string());
        if let Some(trace) = trace {
            publish = publish.header(TRACEPARENT, trace.to_string().as_str());
        }
        let ack = self
            .js
            .send_publish(subjects::jobs(&job.engine), publish)
            .await
            .map_err(|e| InfraError::unavailable("publish job").with_source(e))?;
        // Waiting for the server's ack makes the job durable before the client hears about it.
        ack.await
            .map_err(|e| InfraError::unavailable("job not stored").with_source(e))?;
        Ok(())
    }

    async fn depth(&self, engine: &str) -> Result<u64> {
        crate::nats::ensure_connected(&self.client)?;
        // Every sync request asks, so this is one request to the server: the consumer's info,
        // fetched without looking the stream up first, and read as fetched.
        match self
            .js
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                subjects::consumer(engine),
                subjects::JOBS_STREAM,
            )
            .await
        {
            Ok(consumer) => Ok(consumer.cached_info().num_pending),
            // Before the engine's first worker creates its consumer, its jobs wait in the stream.
            Err(_) => {
                let stream = self
                    .js
                    .get_stream(subjects::JOBS_STREAM)
                    .await
                    .map_err(depth_unavailable)?;
                Ok(stream.cached_info().state.messages)
            }
        }
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn dead_letters(&self, limit: usize) -> Result<Option<Vec<DeadLetter>>> {
        crate::nats::ensure_connected(&self.client)?;
        self.list_dead_letters(limit).await.map(Some)
    }

    async fn dead_letter(&self, job_id: &JobId) -> Result<Option<DeadLetter>> {
        crate::nats::ensure_connected(&self.client)?;
        self.find_dead_letter(job_id).await
    }

    async fn requeue(&self, letter: &DeadLetter) -> Result<()> {
        crate::nats::ensure_connected(&self.client)?;
        self.requeue_dead_letter(letter).await
    }
}

fn depth_unavailable(e: impl Into<Source>) -> InfraError {
    InfraError::unavailable("queue depth").with_source(e)
}

pub struct JetStreamSource {
    pulls: Pulls,
    max_deliver: i64,
}

#[async_trait]
impl JobSource for JetStreamSource {
    async fn next(&self, wait: Duration) -> Result<Option<Box<dyn Delivery>>> {
        // One message per pull: a worker asks only for what it has a free slot for, so jobs are
        // never held by a busy worker while another one idles.
        let Some(message) = self.pulls.next(wait).await? else {
            return Ok(None);
        };
        let attempt = message
            .info()
            .map(|i| i.delivered.max(1) as u32)
            .unwrap_or(1);
        Ok(Some(Box::new(JetStreamDelivery {
            message,
            attempt,
            max_attempts: self.max_deliver.max(1) as u32,
        })))
    }
}

struct JetStreamDelivery {
    message: jetstream::Message,
    attempt: u32,
    max_attempts: u32,
}

impl JetStreamDelivery {
    async fn settle(&self, kind: AckKind) -> Result<()> {
        self.message
            .ack_with(kind)
            .await
            .map_err(|e| InfraError::unavailable("ack").with_source(e))
    }
}

#[async_trait]
impl Delivery for JetStreamDelivery {
    fn payload(&self) -> &[u8] {
        &self.message.payload
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn trace(&self) -> Option<TraceParent> {
        let headers = self.message.headers.as_ref()?;
        TraceParent::parse(headers.get(TRACEPARENT)?.as_str())
    }

    async fn ack(&self) -> Result<()> {
        // The double ack waits for the server's confirmation, so a job is never reported as
        // settled while the ack could still be lost.
        self.message
            .double_ack()
            .await
            .map_err(|e| InfraError::unavailable("ack").with_source(e))
    }

    async fn nak(&self, delay: Duration) -> Result<()> {
        self.settle(AckKind::Nak(Some(delay))).await
    }

    async fn in_progress(&self) -> Result<()> {
        self.settle(AckKind::Progress).await
    }

    async fn term(&self) -> Result<()> {
        self.settle(AckKind::Term).await
    }
}

/// A job in the in-process queue: its message, its delivery count and its trace.
struct LocalMessage {
    payload: Bytes,
    attempt: u32,
    trace: Option<TraceParent>,
}

/// Jobs in process memory, for standalone mode: one channel per engine.
#[derive(Clone)]
pub struct LocalQueue {
    max_deliver: u32,
    channels: Arc<Mutex<HashMap<String, LocalChannel>>>,
    naks: DelayedNaks,
}

/// Where a nak's delay runs: a task on the owner's tracker that ends when `stop` is cancelled.
#[derive(Clone)]
struct DelayedNaks {
    tasks: TaskTracker,
    stop: CancellationToken,
}

#[derive(Clone)]
struct LocalChannel {
    tx: mpsc::UnboundedSender<LocalMessage>,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<LocalMessage>>>,
    /// Messages sent and not yet received (the receiver is locked while a worker waits on it).
    pending: Arc<AtomicU64>,
}

impl LocalQueue {
    /// A queue whose naked jobs wait out their delay on tasks spawned on `tasks`, which end when
    /// `stop` is cancelled.
    pub fn new(max_deliver: u32, tasks: TaskTracker, stop: CancellationToken) -> Self {
        LocalQueue {
            max_deliver: max_deliver.max(1),
            channels: Arc::default(),
            naks: DelayedNaks { tasks, stop },
        }
    }

    fn channel(&self, engine: &str) -> LocalChannel {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        channels
            .entry(engine.to_string())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                LocalChannel {
                    tx,
                    rx: Arc::new(tokio::sync::Mutex::new(rx)),
                    pending: Arc::default(),
                }
            })
            .clone()
    }

    pub fn source(&self, engine: &str) -> LocalSource {
        LocalSource {
            channel: self.channel(engine),
            max_deliver: self.max_deliver,
            naks: self.naks.clone(),
        }
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn enqueue(&self, job: &JobMessage, trace: Option<&TraceParent>) -> Result<()> {
        let channel = self.channel(&job.engine);
        channel.pending.fetch_add(1, Ordering::SeqCst);
        channel
            .tx
            .send(LocalMessage {
                payload: encode(job)?,
                attempt: 1,
                trace: trace.cloned(),
            })
            .map_err(|_| InfraError::unavailable("local queue closed"))
    }

    async fn depth(&self, engine: &str) -> Result<u64> {
        Ok(self.channel(engine).pending.load(Ordering::SeqCst))
    }

    fn is_connected(&self) -> bool {
        true
    }
}

pub struct LocalSource {
    channel: LocalChannel,
    max_deliver: u32,
    naks: DelayedNaks,
}

#[async_trait]
impl JobSource for LocalSource {
    async fn next(&self, wait: Duration) -> Result<Option<Box<dyn Delivery>>> {
        let mut rx = self.channel.rx.lock().await;
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(LocalMessage {
                payload,
                attempt,
                trace,
            })) => {
                self.channel.pending.fetch_sub(1, Ordering::SeqCst);
                Ok(Some(Box::new(LocalDelivery {
                    payload,
                    attempt,
                    trace,
                    max_attempts: self.max_deliver,
                    tx: self.channel.tx.clone(),
                    pending: self.channel.pending.clone(),
                    naks: self.naks.clone(),
                })))
            }
            Ok(None) | Err(_) => Ok(None),
        }
    }
}

struct LocalDelivery {
    payload: Bytes,
    attempt: u32,
    trace: Option<TraceParent>,
    max_attempts: u32,
    tx: mpsc::UnboundedSender<LocalMessage>,
    pending: Arc<AtomicU64>,
    naks: DelayedNaks,
}

#[async_trait]
impl Delivery for LocalDelivery {
    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    fn trace(&self) -> Option<TraceParent> {
        self.trace.clone()
    }

    async fn ack(&self) -> Result<()> {
        Ok(())
    }

    async fn nak(&self, delay: Duration) -> Result<()> {
        let tx = self.tx.clone();
        let message = LocalMessage {
            payload: self.payload.clone(),
            attempt: self.attempt + 1,
            trace: self.trace.clone(),
        };
        let pending = self.pending.clone();
        let stop = self.naks.stop.clone();
        self.naks.tasks.spawn(async move {
            // Cancelled, the delay is cut short and the job goes back at once rather than being
            // dropped: nothing pulls it after shutdown, but it stays queued for as long as the
            // queue lives, so stopping the delays never loses a job (and at exit the whole
            // in-process queue goes anyway).
            let _ = stop.run_until_cancelled(tokio::time::sleep(delay)).await;
            pending.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(message);
        });
        Ok(())
    }

    async fn in_progress(&self) -> Result<()> {
        Ok(())
    }

    async fn term(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tts_contracts::JobSpec;

    use super::*;

    fn job() -> JobMessage {
        JobMessage {
            job_id: uuid::Uuid::new_v4(),
            engine: "piper".into(),
            created_at: chrono::Utc::now(),
            tenant: None,
            spec: JobSpec::Synthesize {
                text: "Hello.".into(),
                voice_id: "en_US-joe-medium".into(),
                language: "en".into(),
                speed: 1.0,
                streamed: false,
            },
        }
    }

    #[tokio::test]
    async fn a_delayed_nak_goes_back_at_once_when_the_queue_stops() {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let queue = LocalQueue::new(5, tasks.clone(), stop.clone());
        let source = queue.source("piper");
        queue.enqueue(&job(), None).await.expect("queued");
        let delivery = source
            .next(Duration::from_secs(1))
            .await
            .expect("pulled")
            .expect("a delivery");
        delivery
            .nak(Duration::from_secs(3600))
            .await
            .expect("naked");
        assert_eq!(tasks.len(), 1, "the delay runs on the owner's tracker");

        stop.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .expect("the delay ends once the queue stops");
        let again = source
            .next(Duration::from_secs(1))
            .await
            .expect("pulled")
            .expect("the naked job, not lost");
        assert_eq!(again.attempt(), 2);
        assert_eq!(queue.depth("piper").await.expect("a depth"), 0);
    }
}
