//! The `piper` engine: Piper (VITS) voices exported to ONNX, with espeak-ng phonemes.
//!
//! A voice is two files in the model directory: `<voice>.onnx` and `<voice>.onnx.json` (sample
//! rate, espeak voice, inference scales and the phoneme-to-id map). The graph takes `input` i64
//! [1, P] phoneme ids, `input_lengths` i64 [1] and `scales` f32 [3] (noise, length, noise width)
//! and gives `output` f32 [1, 1, 1, S].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::Utc;
use ndarray::{Array1, Array2};
use ort::value::Tensor;
use serde::Deserialize;
use tts_contracts::{VoiceInfo, VoiceStatus};

use super::espeak;
use super::{
    Audio, Device, Engine, EngineError, EngineHealth, Step, SynthesisInput,
    check_voice_and_language,
};
use crate::runtime::{self, Placement, SessionPool};
use crate::text::{self, split_sentences};

/// Silence put between sentences, in seconds.
const SENTENCE_PAUSE_SECS: f32 = 0.2;

#[derive(Debug, Clone, Deserialize)]
pub struct VoiceConfig {
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    pub inference: InferenceConfig,
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    pub language: Option<LanguageConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    pub voice: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InferenceConfig {
    pub noise_scale: f32,
    pub length_scale: f32,
    pub noise_w: f32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LanguageConfig {
    pub family: String,
}

/// `workers.piper` in the settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiperConfig {
    /// A directory of Piper voices; empty takes the model cache's stock voice.
    #[serde(default)]
    pub model_path: String,
    /// The voice file's name without `.onnx`.
    pub voice: String,
    #[serde(default)]
    pub device: Device,
    /// ONNX Runtime intra-op threads per session; 0 lets the runtime decide.
    #[serde(default)]
    pub threads: usize,
    /// Words a streamed job's first piece holds at most (see [`text::lead_in`]); 0 speaks the
    /// first sentence whole.
    #[serde(default = "default_first_piece_words")]
    pub first_piece_words: usize,
}

/// Three or four words are under a second of speech: made in about a tenth of a second on one
/// core, and long enough for the rest of the first sentence to be ready before they are heard.
fn default_first_piece_words() -> usize {
    4
}

/// Where a Piper voice lives and how to run it.
#[derive(Debug, Clone)]
pub struct PiperOptions {
    pub model_dir: PathBuf,
    pub voice: String,
    pub device: String,
    pub threads: usize,
    /// Sessions kept loaded; one job runs on each at a time.
    pub sessions: usize,
    pub onnxruntime: PathBuf,
    pub first_piece_words: usize,
}

pub struct PiperEngine {
    voice: VoiceInfo,
    config: VoiceConfig,
    pool: SessionPool,
    placement: Placement,
    first_piece_words: usize,
}

impl PiperEngine {
    /// Loads the configured voice, from the model cache unless `model_path` names a directory.
    pub fn build(
        config: &PiperConfig,
        models: &tts_config::ModelSettings,
        sessions: usize,
    ) -> Result<Self, EngineError> {
        let paths = crate::models::ensure(&models.cache_dir)
            .map_err(|e| EngineError::internal(format!("model cache: {e}")).with_source(e))?;
        let model_dir = if config.model_path.is_empty() {
            paths.piper_dir
        } else {
            config.model_path.clone().into()
        };
        PiperEngine::load(&PiperOptions {
            model_dir,
            voice: config.voice.clone(),
            device: config.device.as_str().into(),
            threads: config.threads,
            sessions,
            onnxruntime: runtime::onnxruntime_library(models, paths.onnxruntime),
            first_piece_words: config.first_piece_words,
        })
    }

    pub fn load(options: &PiperOptions) -> Result<Self, EngineError> {
        let model = options.model_dir.join(format!("{}.onnx", options.voice));
        let config_path = options
            .model_dir
            .join(format!("{}.onnx.json", options.voice));
        let config = read_config(&config_path)?;
        espeak::check_available()?;
        let env = runtime::environment(&options.onnxruntime)?;
        let (pool, placement) = runtime::session_pool(
            env,
            &model,
            &options.device,
            options.threads,
            options.sessions,
            &["input", "input_lengths", "scales"],
            &["output"],
        )?;
        let language = config
            .language
            .as_ref()
            .map(|l| l.family.clone())
            .unwrap_or_else(|| config.espeak.voice.chars().take(2).collect());
        let voice = VoiceInfo {
            voice_id: options.voice.clone(),
            name: options.voice.clone(),
            engine: "piper".into(),
            created_at: Utc::now(),
            native_language: Some(language.clone()),
            language,
            status: VoiceStatus::Ready,
            sample_rate: Some(config.audio.sample_rate),
            other_languages: Vec::new(),
            speed_range: None,
        };
        Ok(PiperEngine {
            voice,
            config,
            pool,
            placement,
            first_piece_words: options.first_piece_words,
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// Phoneme ids as Piper's trainer made them: `^`, pad, then each phoneme followed by the pad,
    /// then `$`. Phonemes the voice does not know are skipped.
    fn phoneme_ids(&self, ipa: &str) -> Vec<i64> {
        let map = &self.config.phoneme_id_map;
        let id = |s: &str| map.get(s).cloned().unwrap_or_default();
        let pad = id("_");
        let mut ids = id("^");
        ids.extend(&pad);
        for c in ipa.chars() {
            let mut buf = [0u8; 4];
            if let Some(phoneme) = map.get(c.encode_utf8(&mut buf) as &str) {
                ids.extend(phoneme);
                ids.extend(&pad);
            }
        }
        ids.extend(id("$"));
        ids
    }

    fn infer(&self, ids: Vec<i64>, speed: f32) -> Result<Vec<f32>, EngineError> {
        let inf = &self.config.inference;
        let len = ids.len();
        let input = Array2::from_shape_vec((1, len), ids)
            .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?;
        let lengths = Array1::from_vec(vec![len as i64]);
        let scales = Array1::from_vec(vec![inf.noise_scale, inf.length_scale / speed, inf.noise_w]);
        let mut session = self.pool.take();
        let outputs = session.run(ort::inputs![
            "input" => Tensor::from_array(input)?,
            "input_lengths" => Tensor::from_array(lengths)?,
            "scales" => Tensor::from_array(scales)?,
        ])?;
        let (_, audio) = outputs["output"].try_extract_tensor::<f32>()?;
        Ok(audio.to_vec())
    }
}

impl Engine for PiperEngine {
    fn name(&self) -> &str {
        "piper"
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        vec![self.voice.clone()]
    }

    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        check_voice_and_language(self, input)?;
        let rate = self.sample_rate();
        let pause = vec![0.0; (SENTENCE_PAUSE_SECS * rate as f32) as usize];
        let mut samples = Vec::new();
        let mut spoken = 0;
        // Each sentence is phonemized just before it is spoken, so that the first one's audio
        // does not wait for the rest of the text.
        let sentences = split_sentences(&input.text);
        let total = sentences.len();
        for (i, sentence) in sentences.iter().enumerate() {
            let lead_words = if input.streamed && spoken == 0 {
                self.first_piece_words
            } else {
                0
            };
            let parts = text::parts(sentence, lead_words);
            let last = parts.len() - 1;
            let mut said = false;
            for (j, part) in parts.iter().enumerate() {
                let done = if j == last { i + 1 } else { i };
                let voice = &self.config.espeak.voice;
                let Some(part) = espeak::phonemize_sentence(voice, part)? else {
                    // A part with nothing to say still counts, with no audio.
                    progress(Step {
                        done,
                        total,
                        audio: &[],
                        sample_rate: rate,
                    });
                    continue;
                };
                let mut audio = self.infer(self.phoneme_ids(&part.ipa), input.speed)?;
                normalise_peak(&mut audio);
                // The pause before a sentence is part of its first piece, so that the pieces
                // laid end to end are the whole audio.
                let start = samples.len();
                if spoken > 0 && !said {
                    samples.extend_from_slice(&pause);
                }
                said = true;
                samples.extend(audio);
                progress(Step {
                    done,
                    total,
                    audio: &samples[start..],
                    sample_rate: rate,
                });
            }
            if said {
                spoken += 1;
            }
        }
        if spoken == 0 {
            return Err(EngineError::invalid(
                "nothing_to_say",
                "the text has no words that can be spoken",
            ));
        }
        Ok(Audio {
            samples,
            sample_rate: rate,
        })
    }

    fn health(&self) -> EngineHealth {
        self.placement
            .health(&format!("voice {}", self.voice.voice_id))
    }
}

fn read_config(path: &Path) -> Result<VoiceConfig, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EngineError::internal(format!("cannot read voice config {}: {e}", path.display()))
            .with_source(e)
    })?;
    let config: VoiceConfig = serde_json::from_str(&text).map_err(|e| {
        EngineError::internal(format!("voice config {} is invalid: {e}", path.display()))
            .with_source(e)
    })?;
    for symbol in ["_", "^", "$"] {
        if !config.phoneme_id_map.contains_key(symbol) {
            return Err(EngineError::internal(format!(
                "voice config {} has no id for {symbol:?}",
                path.display()
            )));
        }
    }
    Ok(config)
}

/// Scales a sentence so that its loudest sample sits just below full scale, as Piper does, so
/// that sentences come out equally loud.
fn normalise_peak(samples: &mut [f32]) {
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let gain = 0.95 / peak.max(0.01);
    for s in samples {
        *s *= gain;
    }
}
