//! The `openvoice` engine: OpenVoice v2 tone-colour conversion over a native base engine.
//!
//! A base engine (`kokoro` or `piper`) speaks the text with its configured voice; OpenVoice v2's
//! tone-colour converter then maps that speech from the base voice's tone colour to the cloned
//! voice's. A voice's tone colour is extracted once, at enrollment, by the model's reference
//! encoder and kept with the voice (`engine_data = {"tone_color": [256 floats]}`); the base
//! voice's is extracted once when the engine loads.
//!
//! The model directory (`workers.openvoice.model_path`) holds two ONNX graphs exported from
//! OpenVoice v2's `ToneColorConverter` (`SynthesizerTrn`), both at 22050 Hz:
//!
//! - [`EXTRACTOR_FILE`] (the reference encoder `ref_enc`): `spectrogram` f32 [1, T, 513] (time
//!   major) → `tone_color` f32 [1, 256, 1].
//! - [`CONVERTER_FILE`] (`voice_conversion`): `spectrogram` f32 [1, 513, T],
//!   `spectrogram_lengths` i64 [1], `source_tone_color` f32 [1, 256, 1], `target_tone_color` f32
//!   [1, 256, 1], `tau` f32 [1] → `audio` f32 [1, 1, S].
//!
//! Both take the linear magnitude spectrogram of OpenVoice's `spectrogram_torch`, computed by
//! `spectrogram.rs`. Loading checks that both files exist and that each graph has these inputs
//! and outputs with these element types and fixed dimensions (`ports.rs`), and names what is
//! missing or differs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array1, Array3, Axis};
use ort::value::Tensor;
use tts_contracts::{VoiceInfo, VoiceRecord, same_language};

use serde::Deserialize;

use super::{
    Audio, Device, Engine, EngineError, EngineHealth, EnrollInput, Enrollment, Progress, Step,
    SynthesisInput, check_voice_and_language,
};
use crate::runtime::{self, Placement, SessionPool};
use crate::voice::ANALYSIS_RATE;
use crate::voice::resample::resample;

mod ports;
mod spectrogram;

pub use ports::{CONVERTER_FILE, EXTRACTOR_FILE, MODEL_MISSING, TONE_COLOR_DIM};
use ports::{check_model_dir, model_missing};
pub use spectrogram::{BINS, HOP, N_FFT, PAD, POWER_FLOOR, Spectrogram, WIN};

/// The rate both graphs work at, and the rate of the audio this engine gives.
pub const SAMPLE_RATE: u32 = 22_050;

/// The engines that can speak first.
pub const BASE_ENGINES: [&str; 2] = ["kokoro", "piper"];
/// OpenVoice's default `tau`: how much of the source's variation the converter keeps.
pub const DEFAULT_TAU: f32 = 0.3;

/// Shortest reference a tone colour is extracted from, in seconds: the reference encoder
/// summarises the clip's spectrum over time, which a fraction of a syllable does not show.
pub const MIN_REFERENCE_SECS: f32 = 1.0;

/// Longest stretch of base speech converted in one call, in seconds. Longer speech is cut at its
/// quietest point so that the converter's memory stays bounded on long texts.
pub const MAX_PIECE_SECS: f32 = 30.0;

/// What the base voice says once at load, to extract its tone colour: a few seconds of ordinary
/// speech in each language the base engines speak.
const SOURCE_TEXT_EN: &str = "The quick brown fox jumps over the lazy dog. \
     We walked along the river and counted the boats drifting by.";
const SOURCE_TEXT_ZH: &str = "今天天气很好，我们一起去公园散步吧。他每天早上都会读半个小时的书。";

/// `workers.openvoice` in the settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenVoiceConfig {
    /// The directory holding [`EXTRACTOR_FILE`] and [`CONVERTER_FILE`]; empty means not
    /// installed.
    #[serde(default)]
    pub model_path: String,
    /// The base engine's voice that speaks first; empty takes the base engine's first voice.
    #[serde(default)]
    pub voice: String,
    /// The engine that speaks first, one of [`BASE_ENGINES`], built from its own section.
    pub base_engine: String,
    #[serde(default)]
    pub device: Device,
    /// ONNX Runtime intra-op threads per session; 0 runs on the process's shared pool.
    #[serde(default)]
    pub threads: usize,
    /// How much of the base speech's variation the converter keeps (at least 0).
    #[serde(default = "default_tau")]
    pub tau: f32,
}

fn default_tau() -> f32 {
    DEFAULT_TAU
}

/// Where the graphs live and how to run them.
#[derive(Debug, Clone)]
pub struct OpenVoiceOptions {
    /// The directory holding [`EXTRACTOR_FILE`] and [`CONVERTER_FILE`].
    pub model_dir: PathBuf,
    /// The base engine's voice that speaks first; empty takes the base engine's first voice.
    pub base_voice: String,
    pub tau: f32,
    pub device: String,
    pub threads: usize,
    /// Converter sessions kept loaded; one synthesis runs on each at a time.
    pub sessions: usize,
    pub onnxruntime: PathBuf,
}

pub struct OpenVoiceEngine {
    base: Arc<dyn Engine>,
    base_voice: VoiceInfo,
    source_tone_color: Vec<f32>,
    tau: f32,
    extractor: SessionPool,
    converter: SessionPool,
    placement: Placement,
    spectrogram: Spectrogram,
}

/// Checks what can be checked of the options without loading anything: that the model is
/// installed and `tau` is usable.
pub fn check_configured(config: &OpenVoiceConfig) -> Result<(), EngineError> {
    if config.model_path.is_empty() {
        return Err(model_missing(
            "workers.openvoice.model_path is empty; set it to a directory holding \
             tone_color_extractor.onnx and tone_color_converter.onnx exported from OpenVoice v2 \
             (see docs/ENGINES.md)"
                .into(),
        ));
    }
    check_tau(config.tau)?;
    check_model_dir(Path::new(&config.model_path))
}

fn check_tau(tau: f32) -> Result<(), EngineError> {
    if tau.is_finite() && tau >= 0.0 {
        Ok(())
    } else {
        Err(EngineError::internal(format!(
            "workers.openvoice.tau must be a number of at least 0, not {tau}"
        )))
    }
}

impl OpenVoiceEngine {
    /// Loads the converter from `workers.openvoice` over an already built base engine.
    pub fn build(
        config: &OpenVoiceConfig,
        base: Arc<dyn Engine>,
        models: &tts_config::ModelSettings,
        sessions: usize,
    ) -> Result<Self, EngineError> {
        check_configured(config)?;
        let cached = crate::models::ensure_analysis(&models.cache_dir)
            .map_err(|e| EngineError::internal(format!("model cache: {e}")).with_source(e))?;
        OpenVoiceEngine::load(
            &OpenVoiceOptions {
                model_dir: config.model_path.clone().into(),
                base_voice: config.voice.clone(),
                tau: config.tau,
                device: config.device.as_str().into(),
                threads: config.threads,
                sessions,
                onnxruntime: runtime::onnxruntime_library(models, cached.onnxruntime),
            },
            base,
        )
    }

    pub fn load(options: &OpenVoiceOptions, base: Arc<dyn Engine>) -> Result<Self, EngineError> {
        check_model_dir(&options.model_dir)?;
        check_tau(options.tau)?;
        let env = runtime::environment(&options.onnxruntime)?;
        let (extractor, _) = ports::session_pool(
            env,
            &options.model_dir.join(EXTRACTOR_FILE),
            &options.device,
            options.threads,
            1,
            &ports::EXTRACTOR_INPUTS,
            &ports::EXTRACTOR_OUTPUTS,
        )?;
        let (converter, placement) = ports::session_pool(
            env,
            &options.model_dir.join(CONVERTER_FILE),
            &options.device,
            options.threads,
            options.sessions,
            &ports::CONVERTER_INPUTS,
            &ports::CONVERTER_OUTPUTS,
        )?;

        let voices = base.voices();
        let base_voice = if options.base_voice.is_empty() {
            voices.first().cloned()
        } else {
            voices
                .iter()
                .find(|v| v.voice_id == options.base_voice)
                .cloned()
        }
        .ok_or_else(|| {
            let served: Vec<&str> = voices.iter().map(|v| v.voice_id.as_str()).collect();
            EngineError::internal(format!(
                "the base voice {:?} is not a voice of the base engine {} (voices: {})",
                options.base_voice,
                base.name(),
                served.join(", ")
            ))
        })?;

        let mut engine = OpenVoiceEngine {
            base,
            base_voice,
            source_tone_color: Vec::new(),
            tau: options.tau,
            extractor,
            converter,
            placement,
            spectrogram: Spectrogram::new(),
        };
        engine.source_tone_color = engine.base_tone_color()?;
        Ok(engine)
    }

    /// The base voice's tone colour: the converter's starting point for every synthesis.
    pub fn source_tone_color(&self) -> &[f32] {
        &self.source_tone_color
    }

    /// The base engine's voice that speaks first.
    pub fn base_voice(&self) -> &VoiceInfo {
        &self.base_voice
    }

    fn base_tone_color(&self) -> Result<Vec<f32>, EngineError> {
        let language = self.base_voice.language.clone();
        let text = if same_language(&language, "zh") {
            SOURCE_TEXT_ZH
        } else {
            SOURCE_TEXT_EN
        };
        let input = SynthesisInput {
            text: text.into(),
            voice_id: self.base_voice.voice_id.clone(),
            language,
            speed: 1.0,
            streamed: false,
            voice: None,
            cancel: Default::default(),
            reference_wav: None,
        };
        let audio = self.base.synthesize(&input, &mut |_| {}).map_err(|e| {
            EngineError::internal(format!(
                "the base voice {} could not speak the sentence its tone colour is taken \
                     from: {e}",
                self.base_voice.voice_id
            ))
            .with_source(e)
        })?;
        let samples = resample(&audio.samples, audio.sample_rate, SAMPLE_RATE)?;
        self.extract(&samples)
    }

    /// The tone colour of 22050 Hz speech, from the reference encoder.
    pub fn extract(&self, samples: &[f32]) -> Result<Vec<f32>, EngineError> {
        let seconds = samples.len() as f32 / SAMPLE_RATE as f32;
        if seconds < MIN_REFERENCE_SECS {
            return Err(EngineError::invalid(
                "audio_too_short",
                format!(
                    "a tone colour needs at least {MIN_REFERENCE_SECS:.1} s of speech; the clip \
                     has {seconds:.2} s"
                ),
            ));
        }
        let spectrogram = self.spectrogram.compute(samples)?.insert_axis(Axis(0));
        let mut session = self.extractor.take();
        let outputs =
            session.run(ort::inputs!["spectrogram" => Tensor::from_array(spectrogram)?])?;
        let (shape, values) = outputs["tone_color"].try_extract_tensor::<f32>()?;
        if values.len() != TONE_COLOR_DIM {
            return Err(EngineError::internal(format!(
                "{EXTRACTOR_FILE} gave a tone colour of shape {shape:?}; expected [1, \
                 {TONE_COLOR_DIM}, 1]"
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(EngineError::internal(format!(
                "{EXTRACTOR_FILE} gave a tone colour with values that are not finite"
            )));
        }
        Ok(values.to_vec())
    }

    /// Converts 22050 Hz speech from the base voice's tone colour to `target`. The speech is
    /// padded to whole frames and the converted audio cut back to its length, so that the
    /// conversion keeps the duration exactly.
    pub fn convert(&self, samples: &[f32], target: &[f32]) -> Result<Vec<f32>, EngineError> {
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let padded_len = samples.len().div_ceil(HOP).max(N_FFT / HOP) * HOP;
        let mut padded = samples.to_vec();
        padded.resize(padded_len, 0.0);
        let spectrogram = self.spectrogram.compute(&padded)?;
        let frames = spectrogram.nrows();
        let spectrogram = spectrogram
            .t()
            .as_standard_layout()
            .into_owned()
            .insert_axis(Axis(0));
        let lengths = Array1::from_vec(vec![frames as i64]);
        let embedding = |values: &[f32]| {
            Array3::from_shape_vec((1, TONE_COLOR_DIM, 1), values.to_vec())
                .map_err(|e| EngineError::internal(format!("tone colour: {e}")).with_source(e))
        };
        let source = embedding(&self.source_tone_color)?;
        let target = embedding(target)?;
        let tau = Array1::from_vec(vec![self.tau]);
        let mut session = self.converter.take();
        let outputs = session.run(ort::inputs![
            "spectrogram" => Tensor::from_array(spectrogram)?,
            "spectrogram_lengths" => Tensor::from_array(lengths)?,
            "source_tone_color" => Tensor::from_array(source)?,
            "target_tone_color" => Tensor::from_array(target)?,
            "tau" => Tensor::from_array(tau)?,
        ])?;
        let (_, audio) = outputs["audio"].try_extract_tensor::<f32>()?;
        if audio.iter().any(|s| !s.is_finite()) {
            return Err(EngineError::internal(format!(
                "{CONVERTER_FILE} gave audio with samples that are not finite"
            )));
        }
        let mut audio = audio.to_vec();
        audio.truncate(samples.len());
        Ok(audio)
    }
}

/// The stored tone colour of a cloned voice: [`TONE_COLOR_DIM`] finite values under
/// `engine_data.tone_color`.
pub fn tone_color_of(record: &VoiceRecord) -> Result<Vec<f32>, EngineError> {
    let not_ready = |why: &str| {
        EngineError::invalid(
            "voice_not_ready",
            format!(
                "voice {} {why}; it is not enrolled with the openvoice engine",
                record.info.voice_id
            ),
        )
    };
    let values = record
        .engine_data
        .as_ref()
        .and_then(|data| data.get("tone_color"))
        .and_then(|v| v.as_array())
        .ok_or_else(|| not_ready("has no tone colour"))?;
    if values.len() != TONE_COLOR_DIM {
        return Err(not_ready(&format!(
            "has a tone colour of {} values instead of {TONE_COLOR_DIM}",
            values.len()
        )));
    }
    values
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .ok_or_else(|| not_ready("has a tone colour with values that are not numbers"))
        })
        .collect()
}

/// Cuts speech longer than `max` samples into pieces of at most `max`, each cut at the quietest
/// hop in the second half of its piece and none shorter than `min`, so that the pieces join
/// again exactly.
pub fn pieces(samples: &[f32], max: usize, min: usize) -> Vec<&[f32]> {
    let mut out = Vec::new();
    let mut start = 0;
    let max = max.max(2 * min).max(2 * HOP);
    while samples.len() - start > max {
        let from = start + max / 2;
        let to = (start + max).min(samples.len() - min);
        let energy = |at: usize| -> f32 {
            samples[at..(at + HOP).min(samples.len())]
                .iter()
                .map(|s| s * s)
                .sum()
        };
        let cut = (from..to.saturating_sub(HOP).max(from + 1))
            .step_by(HOP)
            .min_by(|a, b| energy(*a).total_cmp(&energy(*b)))
            .unwrap_or(from);
        out.push(&samples[start..cut]);
        start = cut;
    }
    out.push(&samples[start..]);
    out
}

impl Engine for OpenVoiceEngine {
    fn name(&self) -> &str {
        "openvoice"
    }

    /// None: the engine speaks only voices cloned with it.
    fn voices(&self) -> Vec<VoiceInfo> {
        Vec::new()
    }

    /// The base voice's languages, since the base engine speaks the text.
    fn languages(&self) -> Vec<String> {
        std::iter::once(self.base_voice.language.clone())
            .chain(self.base_voice.other_languages.iter().cloned())
            .collect()
    }

    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        let Some(record) = &input.voice else {
            return Err(EngineError::invalid(
                "unknown_voice",
                format!(
                    "voice {:?} is not a cloned voice; engine openvoice speaks only voices \
                     cloned with it",
                    input.voice_id
                ),
            ));
        };
        check_voice_and_language(self, input)?;
        if !self.base_voice.speaks(&input.language) {
            return Err(EngineError::invalid(
                "unsupported_language",
                format!(
                    "engine openvoice speaks {} (through {} voice {}), not {}",
                    self.languages().join(", "),
                    self.base.name(),
                    self.base_voice.voice_id,
                    input.language
                ),
            ));
        }
        let target = tone_color_of(record)?;

        // Progress counts every sentence twice: once spoken by the base engine, once converted.
        let base_input = SynthesisInput {
            text: input.text.clone(),
            voice_id: self.base_voice.voice_id.clone(),
            language: input.language.clone(),
            speed: input.speed,
            streamed: input.streamed,
            voice: None,
            reference_wav: None,
            cancel: input.cancel.clone(),
        };
        // The base voice's speech is not the job's audio, so its steps carry none; the converted
        // parts are.
        let mut sentences = 1;
        let spoken = self.base.synthesize(&base_input, &mut |p| {
            sentences = p.total.max(1);
            progress(Step {
                done: p.done,
                total: 2 * sentences,
                audio: &[],
                sample_rate: SAMPLE_RATE,
            });
        })?;
        let speech = resample(&spoken.samples, spoken.sample_rate, SAMPLE_RATE)?;
        let max = (MAX_PIECE_SECS * SAMPLE_RATE as f32) as usize;
        let parts = pieces(&speech, max, SAMPLE_RATE as usize);
        let mut samples = Vec::with_capacity(speech.len());
        for (i, part) in parts.iter().enumerate() {
            input.cancel.check()?;
            // Each converted part is clamped before it is reported, so that the parts laid end
            // to end are the whole audio.
            let start = samples.len();
            samples.extend(self.convert(part, &target)?);
            for s in &mut samples[start..] {
                *s = s.clamp(-1.0, 1.0);
            }
            progress(Step {
                done: sentences + (sentences * (i + 1)).div_ceil(parts.len()),
                total: 2 * sentences,
                audio: &samples[start..],
                sample_rate: SAMPLE_RATE,
            });
        }
        Ok(Audio {
            samples,
            sample_rate: SAMPLE_RATE,
        })
    }

    fn health(&self) -> EngineHealth {
        let base = self.base.health();
        let own = self.placement.health(&format!(
            "tone-colour converter over {} voice {}",
            self.base.name(),
            self.base_voice.voice_id
        ));
        EngineHealth {
            ready: own.ready && base.ready,
            device: own.device,
            detail: format!("{}; base engine: {}", own.detail, base.detail),
        }
    }

    fn clones(&self) -> bool {
        true
    }

    fn enroll(
        &self,
        input: &EnrollInput<'_>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Enrollment, EngineError> {
        if !self.base_voice.speaks(&input.voice.info.language) {
            return Err(EngineError::invalid(
                "unsupported_language",
                format!(
                    "engine openvoice speaks {}, not {}",
                    self.languages().join(", "),
                    input.voice.info.language
                ),
            ));
        }
        let samples = resample(input.reference, ANALYSIS_RATE, SAMPLE_RATE)?;
        progress(Progress { done: 1, total: 2 });
        let tone_color = self.extract(&samples)?;
        progress(Progress { done: 2, total: 2 });
        Ok(Enrollment {
            similarity: None,
            engine_data: Some(serde_json::json!({ "tone_color": tone_color })),
        })
    }
}

/// A pure tone at the converter's rate, for the tests of this module and its front end.
#[cfg(test)]
fn sine(frequency: f32, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (2.0 * std::f32::consts::PI * frequency * i as f32 / SAMPLE_RATE as f32).sin())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EngineErrorKind;

    #[test]
    fn long_speech_is_cut_at_quiet_points_into_pieces_that_join_again() {
        // Three 10 s stretches of tone with 0.2 s pauses between them.
        let rate = SAMPLE_RATE as usize;
        let mut speech = Vec::new();
        for i in 0..3 {
            if i > 0 {
                speech.extend(vec![0.0; rate / 5]);
            }
            speech.extend(sine(220.0, 10 * rate));
        }
        let parts = pieces(&speech, 15 * rate, rate);
        assert_eq!(
            parts.len(),
            3,
            "{:?}",
            parts.iter().map(|p| p.len()).collect::<Vec<_>>()
        );
        assert!(
            parts
                .iter()
                .all(|p| p.len() <= 15 * rate && p.len() >= rate)
        );
        assert_eq!(parts.concat(), speech);
        // Each cut falls in a pause.
        for part in &parts[1..] {
            assert!(part[..HOP].iter().all(|s| *s == 0.0));
        }
        // Short speech stays whole, and no piece is left too short at the end.
        assert_eq!(pieces(&speech[..rate], 15 * rate, rate).len(), 1);
        let parts = pieces(&speech[..15 * rate + 10], 15 * rate, rate);
        assert!(parts.iter().all(|p| p.len() >= rate), "{}", parts.len());
        assert_eq!(parts.concat(), &speech[..15 * rate + 10]);
    }

    fn record(engine_data: Option<serde_json::Value>) -> VoiceRecord {
        let info = VoiceInfo {
            voice_id: "v1".into(),
            name: "Ann".into(),
            engine: "openvoice".into(),
            created_at: chrono::Utc::now(),
            language: "en".into(),
            status: tts_contracts::VoiceStatus::Ready,
            sample_rate: Some(SAMPLE_RATE),
            other_languages: Vec::new(),
            speed_range: None,
            native_language: None,
        };
        let mut record = VoiceRecord::enrolling(info, None, uuid::Uuid::new_v4());
        record.engine_data = engine_data;
        record
    }

    #[test]
    fn a_stored_tone_colour_must_be_256_finite_numbers() {
        let good: Vec<f32> = (0..TONE_COLOR_DIM).map(|i| i as f32 / 256.0).collect();
        let stored = record(Some(serde_json::json!({ "tone_color": good })));
        assert_eq!(tone_color_of(&stored).unwrap(), good);
        for bad in [
            None,
            Some(serde_json::json!({})),
            Some(serde_json::json!({ "tone_color": [0.5, 0.5, 0.5] })),
            Some(serde_json::json!({ "tone_color": vec![serde_json::Value::Null; 256] })),
        ] {
            let err = tone_color_of(&record(bad)).unwrap_err();
            assert_eq!(err.kind(), EngineErrorKind::InvalidInput);
            assert_eq!(err.code(), "voice_not_ready");
            assert!(err.message().contains("v1"), "{err}");
        }
    }

    #[test]
    fn tau_defaults_and_is_checked() {
        let parse = |value: serde_json::Value| {
            serde_json::from_value::<OpenVoiceConfig>(value).map_err(|e| e.to_string())
        };
        let config = parse(serde_json::json!({ "base_engine": "kokoro" })).unwrap();
        assert_eq!(config.tau, DEFAULT_TAU);
        let config = parse(serde_json::json!({ "base_engine": "kokoro", "tau": 0.5 })).unwrap();
        assert_eq!(config.tau, 0.5);
        assert!(parse(serde_json::json!({ "base_engine": "kokoro", "tau": "loud" })).is_err());
        let err = parse(serde_json::json!({ "base_engine": "kokoro", "tua": 0.5 })).unwrap_err();
        assert!(err.contains("unknown field `tua`"), "{err}");
        let err = check_tau(-1.0).unwrap_err();
        assert!(err.message().contains("tau"), "{err}");
    }
}
