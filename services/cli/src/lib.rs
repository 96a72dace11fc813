//! Assembling voice-clone-tts processes from configuration: standalone (gateway and workers in
//! one process on in-process adapters), gateway, or worker.

pub mod allocator;
pub mod app;
pub mod telemetry;

pub use app::{Application, Mode, SuppliedEngines};
