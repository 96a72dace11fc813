//! Analysis of reference speech for voice cloning: resampling, voice activity detection (Silero
//! VAD) and speaker embeddings (a d-vector encoder). Workers run these during enrollment; the
//! gateway never does, since they need ONNX Runtime.

use crate::error::EngineError;

pub mod reference;
pub mod resample;
pub mod speaker;
pub mod vad;

/// The rate every analysis model here works at.
pub const ANALYSIS_RATE: u32 = 16_000;

/// The analysis models a worker that enrols voices loads once: the VAD checks and trims the
/// reference, the speaker encoder embeds it and scores candidate voices.
pub struct Analysis {
    pub vad: vad::Vad,
    pub encoder: speaker::SpeakerEncoder,
}

impl Analysis {
    /// Fetches the models into the cache when missing, then loads them.
    pub fn load(settings: &tts_config::Settings) -> Result<Self, EngineError> {
        let paths = crate::models::ensure_analysis(&settings.models.cache_dir)
            .map_err(|e| EngineError::internal(format!("model cache: {e}")).with_source(e))?;
        let library =
            crate::runtime::onnxruntime_library(&settings.models, paths.onnxruntime.clone());
        let env = crate::runtime::environment(&library)?;
        Ok(Analysis {
            vad: vad::Vad::load(env, &paths.vad)?,
            encoder: speaker::SpeakerEncoder::load(env, &paths.speaker_encoder)?,
        })
    }
}
