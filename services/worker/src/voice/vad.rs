//! Voice activity detection with Silero VAD: which parts of a clip are speech.
//!
//! The graph takes `input` f32 [1, 576] (64 samples of context, then 512 new samples at 16 kHz),
//! `state` f32 [2, 1, 128] and `sr` i64, and gives `output` [1, 1] (speech probability) and
//! `stateN`, the state for the next window.

use std::path::Path;

use ndarray::{Array2, Array3, arr0};
use ort::value::Tensor;

use super::ANALYSIS_RATE;
use crate::error::EngineError;
use crate::runtime::{self, SessionPool};

const WINDOW: usize = 512;
const CONTEXT: usize = 64;
/// Probability above which a window starts speech, and below which it ends it.
const ON: f32 = 0.5;
const OFF: f32 = 0.35;
/// Silence kept around trimmed speech, in seconds.
const MARGIN_SECS: f32 = 0.1;

pub struct Vad {
    sessions: SessionPool,
}

/// What the detector found in a clip.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechReport {
    /// Seconds of speech.
    pub speech_seconds: f32,
    /// Sample range from the first to the last speech, with a small margin.
    pub span: Option<(usize, usize)>,
}

impl Vad {
    pub fn load(env: &ort::environment::Environment, model: &Path) -> Result<Self, EngineError> {
        // One session: windows depend on the state of the one before, so a clip is one
        // sequential pass anyway.
        let (sessions, _) = runtime::session_pool(
            env,
            model,
            "cpu",
            1,
            1,
            &["input", "state", "sr"],
            &["output", "stateN"],
        )?;
        Ok(Vad { sessions })
    }

    /// Speech probability of each 512-sample window of 16 kHz audio.
    pub fn probabilities(&self, samples: &[f32]) -> Result<Vec<f32>, EngineError> {
        let mut session = self.sessions.take();
        let mut state = Array3::<f32>::zeros((2, 1, 128));
        let mut context = vec![0.0f32; CONTEXT];
        let mut out = Vec::with_capacity(samples.len() / WINDOW + 1);
        for chunk in samples.chunks(WINDOW) {
            let mut input = Vec::with_capacity(CONTEXT + WINDOW);
            input.extend_from_slice(&context);
            input.extend_from_slice(chunk);
            input.resize(CONTEXT + WINDOW, 0.0);
            context.copy_from_slice(&input[input.len() - CONTEXT..]);
            let input = Array2::from_shape_vec((1, CONTEXT + WINDOW), input)
                .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?;
            let outputs = session.run(ort::inputs![
                "input" => Tensor::from_array(input)?,
                "state" => Tensor::from_array(state.clone())?,
                "sr" => Tensor::from_array(arr0(ANALYSIS_RATE as i64))?,
            ])?;
            let (_, p) = outputs["output"].try_extract_tensor::<f32>()?;
            out.push(p.first().copied().unwrap_or(0.0));
            let (_, next) = outputs["stateN"].try_extract_tensor::<f32>()?;
            state = Array3::from_shape_vec((2, 1, 128), next.to_vec())
                .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?;
        }
        Ok(out)
    }

    /// How much of a 16 kHz clip is speech, and where it lies.
    pub fn analyse(&self, samples: &[f32]) -> Result<SpeechReport, EngineError> {
        let probabilities = self.probabilities(samples)?;
        let mut speaking = false;
        let mut speech_windows = 0usize;
        let (mut first, mut last) = (None, None);
        for (i, p) in probabilities.iter().enumerate() {
            speaking = if speaking { *p >= OFF } else { *p >= ON };
            if speaking {
                speech_windows += 1;
                first.get_or_insert(i);
                last = Some(i);
            }
        }
        let margin = (MARGIN_SECS * ANALYSIS_RATE as f32) as usize;
        let span = first.zip(last).map(|(f, l)| {
            (
                (f * WINDOW).saturating_sub(margin),
                ((l + 1) * WINDOW + margin).min(samples.len()),
            )
        });
        Ok(SpeechReport {
            speech_seconds: (speech_windows * WINDOW) as f32 / ANALYSIS_RATE as f32,
            span,
        })
    }
}
