//! Adapters between the services and the outside world.
//!
//! Each adapter is a trait with two backends: a distributed one (NATS JetStream, Redis, object
//! storage) and an in-process one used by `standalone` mode. The gateway and the worker are
//! written against the traits only, so both modes run the same HTTP and engine code.

pub mod bus;
pub mod circuit;
pub mod error;
pub mod jobs;
pub mod limits;
pub mod nats;
pub mod queue;
pub mod redis_conn;
pub mod storage;
pub mod trace;
pub mod voices;

pub use bus::{Bus, BusMessage, LocalBus, NatsBus};
pub use error::{InfraError, InfraErrorKind};
pub use jobs::{JobStore, MemoryJobStore, RedisJobStore};
pub use limits::{RateBucket, RedisRateLimiter, Verdict};
pub use queue::{Delivery, JetStreamQueue, JobQueue, JobSource, LocalQueue, QueueSettings};
pub use storage::AudioStore;
pub use voices::{MemoryVoiceStore, RedisVoiceStore, VoiceStore};
