//! Preparing a reference clip for enrollment: to 16 kHz, checked for enough (and not too much)
//! speech, trimmed to where the speech is.

use super::ANALYSIS_RATE;
use super::resample::resample;
use super::vad::Vad;
use crate::error::EngineError;

/// Seconds of speech a reference clip must hold.
pub const MIN_SPEECH_SECS: f32 = 3.0;
pub const MAX_SPEECH_SECS: f32 = 30.0;

/// A reference clip ready for the speaker encoder and the style search.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// 16 kHz mono, trimmed to the speech with a small margin.
    pub samples: Vec<f32>,
    pub speech_seconds: f32,
}

/// Resamples `samples` (mono at `rate` Hz) to 16 kHz, measures its speech and trims it. Clips
/// with no speech, under [`MIN_SPEECH_SECS`] or over [`MAX_SPEECH_SECS`] of speech are refused
/// with the reason as the error code.
pub fn prepare(vad: &Vad, samples: &[f32], rate: u32) -> Result<Reference, EngineError> {
    let audio = resample(samples, rate, ANALYSIS_RATE)?;
    let report = vad.analyse(&audio)?;
    let Some((start, end)) = report.span else {
        return Err(EngineError::invalid(
            "no_speech",
            "the clip holds no speech",
        ));
    };
    if report.speech_seconds < MIN_SPEECH_SECS {
        return Err(EngineError::invalid(
            "too_little_speech",
            format!(
                "the clip holds {:.1} s of speech; at least {MIN_SPEECH_SECS} s are needed",
                report.speech_seconds
            ),
        ));
    }
    if report.speech_seconds > MAX_SPEECH_SECS {
        return Err(EngineError::invalid(
            "too_much_speech",
            format!(
                "the clip holds {:.1} s of speech; at most {MAX_SPEECH_SECS} s are accepted",
                report.speech_seconds
            ),
        ));
    }
    Ok(Reference {
        samples: audio[start..end].to_vec(),
        speech_seconds: report.speech_seconds,
    })
}
