//! The codes a failed job's record carries in `error.error`.
//!
//! Gateway and workers both write failures, and clients match on these strings, so each code is
//! spelled once, here, and never as a literal elsewhere. Engines name their own codes (see the
//! worker's `EngineError`); these are the ones the job handling itself gives.

/// The job's owner cancelled it (the reason a `cancelled` record carries).
pub const CANCELLED: &str = "cancelled";
/// A failed record that says no more (one written before failures carried a reason).
pub const JOB_FAILED: &str = "job_failed";
/// The engine's thread stopped (panicked) before returning.
pub const ENGINE_CRASHED: &str = "engine_crashed";
/// The audio could not be encoded as WAV.
pub const ENCODING_FAILED: &str = "encoding_failed";
/// A dependency (store, queue, bus) did not answer.
pub const INFRASTRUCTURE_UNAVAILABLE: &str = "infrastructure_unavailable";
/// The queue delivered the job the maximum number of times without it finishing.
pub const MAX_DELIVERIES_EXCEEDED: &str = "max_deliveries_exceeded";
/// The message is not a job the gateway made.
pub const INVALID_JOB: &str = "invalid_job";
/// The job was recorded but could not be queued.
pub const QUEUE_UNAVAILABLE: &str = "queue_unavailable";
/// The job reached a worker of another engine.
pub const WRONG_ENGINE: &str = "wrong_engine";
/// The cloned voice the job names does not exist (any more).
pub const VOICE_NOT_FOUND: &str = "voice_not_found";
/// The cloned voice the job names is still enrolling or failed.
pub const VOICE_NOT_READY: &str = "voice_not_ready";
/// An enrollment job reached a worker whose engine does not clone voices.
pub const CLONING_UNSUPPORTED: &str = "cloning_unsupported";
/// The clip uploaded for an enrollment is no longer stored.
pub const UPLOAD_MISSING: &str = "upload_missing";
