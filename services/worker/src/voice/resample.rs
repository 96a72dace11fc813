//! Sample-rate conversion of mono audio, through `tts_audio::resample`, with its failures as
//! engine errors.

use crate::error::EngineError;

/// Converts mono `samples` from `from` Hz to `to` Hz with an FFT resampler (band-limited, so
/// downsampling does not alias).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, EngineError> {
    tts_audio::resample::resample(samples, from, to)
        .map_err(|e| EngineError::internal(format!("resampling: {e}")).with_source(e))
}
