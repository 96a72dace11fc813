//! Adapters between the services and the outside world.
//!
//! Each adapter is a trait with two backends: a distributed one (NATS JetStream, Redis, object
//! storage) and an in-process one used by `standalone` mode. The gateway and the worker are
//! written against the traits only, so both modes run the same HTTP and engine code.

pub mod bus;
pub mod circuit;
pub mod dead_letters;
pub mod error;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod nats;
mod pull;
pub mod queue;
pub mod redis_conn;
pub mod retention;
pub mod storage;
pub mod trace;
pub mod voices;

use std::sync::Arc;

pub use bus::{Bus, BusMessage, LocalBus, NatsBus};
pub use error::{InfraError, InfraErrorKind};
pub use jobs::{JobStore, MemoryJobStore, RedisJobStore};
pub use limits::{RateBucket, RedisRateLimiter, Verdict};
pub use queue::{Delivery, JetStreamQueue, JobQueue, JobSource, LocalQueue, QueueSettings};
pub use storage::AudioStore;
pub use voices::{MemoryVoiceStore, MirroredVoiceStore, RedisVoiceStore, VoiceStore};

/// The outside world of one process, built once by the binary and handed whole to the gateway
/// and to each worker, which take from it what they use. Each field is one adapter, distributed
/// or in-process, so that the same code runs in both modes.
#[derive(Clone)]
pub struct Adapters {
    /// Job records, and idempotency keys.
    pub store: Arc<dyn JobStore>,
    /// Cloned voices' records.
    pub voices: Arc<dyn VoiceStore>,
    /// Events, heartbeats and control messages.
    pub bus: Arc<dyn Bus>,
    /// Synthesised audio, uploads and references.
    pub audio: AudioStore,
    /// Where jobs are queued. Only the gateway enqueues; a worker's NATS user may not.
    pub queue: Arc<dyn JobQueue>,
    /// The rate limits all gateways share; absent in standalone, where one process is all.
    pub rate_limiter: Option<RedisRateLimiter>,
    /// The JetStream queue itself, in distributed mode, for what only it can do: a worker's
    /// reaper deletes the messages the server gave up on.
    pub jetstream: Option<JetStreamQueue>,
}
