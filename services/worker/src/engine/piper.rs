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
    Audio, Cancel, Device, Engine, EngineError, EngineHealth, Step, SynthesisInput,
    check_voice_and_language,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use crate::runtime::{self, Placement, PooledSession, SessionPool};
use crate::text::{self, Piece, split_sentences};

/// Silence put between sentences, in seconds.
const SENTENCE_PAUSE_SECS: f32 = 0.2;

/// Words a sentence needs before it is spoken in two halves at once: each half should take
/// longer to make than starting it costs (a second of speech is about 80 ms on one core).
const HALVES_MIN_WORDS: usize = 12;

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
    /// ONNX Runtime intra-op threads per session; 0 runs on the process's shared pool.
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

    fn infer(
        &self,
        session: &mut ort::session::Session,
        ids: Vec<i64>,
        speed: f32,
    ) -> Result<Vec<f32>, EngineError> {
        let inf = &self.config.inference;
        let len = ids.len();
        let input = Array2::from_shape_vec((1, len), ids)
            .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?;
        let lengths = Array1::from_vec(vec![len as i64]);
        let scales = Array1::from_vec(vec![inf.noise_scale, inf.length_scale / speed, inf.noise_w]);
        let outputs = session.run(ort::inputs![
            "input" => Tensor::from_array(input)?,
            "input_lengths" => Tensor::from_array(lengths)?,
            "scales" => Tensor::from_array(scales)?,
        ])?;
        let (_, audio) = outputs["output"].try_extract_tensor::<f32>()?;
        Ok(audio.to_vec())
    }

    /// Phonemizes and speaks one piece on a session, peak-normalised; `None` when the piece has
    /// nothing to say. `session` is asked for only once there is something to run on it.
    fn speak<'p>(
        &'p self,
        piece: &Piece,
        speed: f32,
        session: Option<PooledSession<'p>>,
    ) -> Result<Option<Vec<f32>>, EngineError> {
        let voice = &self.config.espeak.voice;
        let Some(phonemes) = espeak::phonemize_sentence(voice, piece)? else {
            return Ok(None);
        };
        let ids = self.phoneme_ids(&phonemes.ipa);
        let mut session = session.unwrap_or_else(|| self.pool.take());
        let mut audio = self.infer(&mut session, ids, speed)?;
        normalise_peak(&mut audio);
        Ok(Some(audio))
    }

    /// The pieces a text is spoken in, in order: its sentences, a streamed job's first sentence
    /// split after its opening words, and a lone long sentence (a job of one sentence, or
    /// the last of an odd number) in halves, so that a job keeps two sessions busy.
    fn plan(&self, input: &SynthesisInput) -> Vec<Planned> {
        let sentences = split_sentences(&input.text);
        let mut planned = Vec::new();
        for (i, sentence) in sentences.iter().enumerate() {
            let lead_words = if input.streamed && i == 0 {
                self.first_piece_words
            } else {
                0
            };
            let lone = i + 1 == sentences.len() && sentences.len() % 2 == 1;
            let halves = (lone && lead_words == 0 && self.pool.size() > 1)
                .then(|| text::halves(sentence, HALVES_MIN_WORDS))
                .flatten();
            let parts = match halves {
                Some((first, second)) => vec![first, second],
                None => text::parts(sentence, lead_words),
            };
            let last = parts.len() - 1;
            for (j, part) in parts.into_iter().enumerate() {
                planned.push(Planned {
                    piece: part,
                    sentence: i,
                    done: if j == last { i + 1 } else { i },
                });
            }
        }
        planned
    }

    /// Speaks every piece, in parallel on the sessions that are free (a lone job uses them all;
    /// under load each job gets one), and hands each to `emit` in order as soon as it and those
    /// before it are ready, so that streamed audio starts with the first piece. With
    /// `first_alone` the first piece has the cores to itself, since a streamed answer's first
    /// audio waits for it alone; otherwise every piece starts as soon as a session is free.
    fn speak_all(
        &self,
        pieces: &[Planned],
        speed: f32,
        first_alone: bool,
        cancel: &Cancel,
        emit: &mut dyn FnMut(usize, Option<Vec<f32>>),
    ) -> Result<(), EngineError> {
        let n = pieces.len();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let results: Vec<Mutex<Option<Spoken>>> = (0..n).map(|_| Mutex::new(None)).collect();
        let put = |i: usize, spoken: Spoken| {
            *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(spoken);
        };
        std::thread::scope(|scope| {
            let (ready, finished) = mpsc::channel::<()>();
            // Helpers run only while a session is free; each piece is claimed once, in order.
            let mut ready = Some(ready);
            let mut start_helpers = || {
                let Some(ready) = ready.take() else {
                    return;
                };
                for _ in 1..n.min(self.pool.size()) {
                    let ready = ready.clone();
                    let (next, stop, put) = (&next, &stop, &put);
                    let span = tracing::Span::current();
                    scope.spawn(move || {
                        let _entered = span.enter();
                        while !stop.load(Ordering::Relaxed) && !cancel.is_set() {
                            let Some(session) = self.pool.try_take() else {
                                break;
                            };
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            put(i, self.speak(&pieces[i].piece, speed, Some(session)));
                            let _ = ready.send(());
                        }
                    });
                }
            };
            if !first_alone {
                start_helpers();
            }
            let mut emitted = 0;
            while emitted < n {
                if cancel.is_set() {
                    stop.store(true, Ordering::Relaxed);
                    return Err(EngineError::cancelled());
                }
                let done = results[emitted]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                if let Some(spoken) = done {
                    match spoken {
                        Ok(audio) => emit(emitted, audio),
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    emitted += 1;
                    start_helpers();
                    continue;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i < n {
                    put(i, self.speak(&pieces[i].piece, speed, None));
                } else if finished.recv().is_err() {
                    // Every helper has ended; whatever they claimed is in `results`.
                    continue;
                }
            }
            Ok(())
        })
    }
}

/// A piece's audio, `None` when it had nothing to say.
type Spoken = Result<Option<Vec<f32>>, EngineError>;

/// One piece of a job's text and where it belongs.
struct Planned {
    piece: Piece,
    /// The sentence it is part of.
    sentence: usize,
    /// Sentences done once it is spoken.
    done: usize,
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
        let pieces = self.plan(input);
        let total = pieces.last().map_or(0, |p| p.sentence + 1);
        let mut samples = Vec::new();
        // Sentences that have said something, and the last one that did.
        let mut spoken = 0;
        let mut speaking: Option<usize> = None;
        self.speak_all(
            &pieces,
            input.speed,
            input.streamed,
            &input.cancel,
            &mut |i, audio| {
                let piece = &pieces[i];
                let start = samples.len();
                if let Some(audio) = audio {
                    // The pause before a sentence is part of its first piece, so that the pieces
                    // laid end to end are the whole audio.
                    if speaking != Some(piece.sentence) {
                        if spoken > 0 {
                            samples.extend_from_slice(&pause);
                        }
                        spoken += 1;
                        speaking = Some(piece.sentence);
                    }
                    samples.extend(audio);
                }
                // A piece with nothing to say still counts, with no audio.
                progress(Step {
                    done: piece.done,
                    total,
                    audio: &samples[start..],
                    sample_rate: rate,
                });
            },
        )?;
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
