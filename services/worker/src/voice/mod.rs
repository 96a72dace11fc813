//! Analysis of reference speech for voice cloning: resampling, voice activity detection (Silero
//! VAD) and speaker embeddings (a d-vector encoder). Workers run these during enrollment; the
//! gateway never does, since they need ONNX Runtime.

pub mod clone;
pub mod reference;
pub mod resample;
pub mod speaker;
pub mod vad;

/// The rate every analysis model here works at.
pub const ANALYSIS_RATE: u32 = 16_000;
