//! The synthesis worker.
//!
//! A worker serves one engine. It pulls that engine's jobs from the queue, runs the engine off the
//! async runtime's threads, writes the audio to object storage, records the job's final state and
//! only then acknowledges the job. It heartbeats its NodeInfo so gateways know what it serves.

pub mod conv2d;
pub mod engine;
pub mod error;
pub mod health;
pub mod heartbeat;
pub mod job;
#[cfg(test)]
mod layering;
pub mod models;
mod protobuf;
pub mod reaper;
pub mod runtime;
pub mod service;
pub mod stft;
pub mod text;
pub mod voice;
pub mod wav;
mod weights;

pub use engine::{Engine, EngineError, EngineErrorKind, SynthesisInput};
pub use service::{Worker, WorkerDeps, WorkerOptions};
