//! The engine abstraction: text (and a voice) in, audio out.
//!
//! Engines are synchronous and CPU- or GPU-bound; the worker calls them on blocking threads.
//! Adding an engine is one module here plus a `workers.<name>` entry in config.yaml.

pub mod espeak;
pub mod gpt_sovits;
pub mod kokoro;
pub mod openvoice;
pub mod piper;
pub mod upstream;
pub mod xtts;
pub mod zh;

use std::sync::Arc;

use tts_contracts::{CloneSimilarity, SpeedRange, VoiceInfo, VoiceRecord};

pub use crate::error::{EngineError, EngineErrorKind, EngineHealth};
use crate::voice::Analysis;

/// What a synthesis job asks of an engine.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SynthesisInput {
    pub text: String,
    pub voice_id: String,
    pub language: String,
    pub speed: f32,
    /// For a cloned voice, its record: the engine reads the conditioning it stored at enrollment.
    pub voice: Option<VoiceRecord>,
    /// For a cloned voice of an engine that [`Engine::needs_reference`], the voice's trimmed
    /// reference clip as WAV bytes (16 kHz mono).
    pub reference_wav: Option<bytes::Bytes>,
}

/// The budget and seed of voice enrollment, the same for every voice a worker enrols.
#[derive(Debug, Clone)]
pub struct CloneSettings {
    /// Syntheses a search-based enrollment (Kokoro's style search) may spend after scoring the
    /// stock voices.
    pub evaluations: usize,
    /// Seed of the search, so that enrolling the same clip twice gives the same voice.
    pub seed: u64,
}

/// What an enrollment gives an engine.
pub struct EnrollInput<'a> {
    pub analysis: &'a Analysis,
    /// The voice being enrolled (name, language, transcript of the clip).
    pub voice: &'a VoiceRecord,
    /// The trimmed reference: mono at [`crate::voice::ANALYSIS_RATE`].
    pub reference: &'a [f32],
    /// The same clip as the WAV file stored for the voice.
    pub reference_wav: &'a [u8],
    pub settings: &'a CloneSettings,
}

/// What an engine computes for a cloned voice at enrollment, kept with the voice and reused by
/// every synthesis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Enrollment {
    /// The stock voice the conditioning starts from.
    pub base_voice: Option<String>,
    /// An offset added to the base voice's style.
    pub style_offset: Option<Vec<f32>>,
    /// Cloned and best-stock similarity to the reference on a held-out sentence.
    pub similarity: Option<CloneSimilarity>,
    /// Anything else the engine keeps with the voice, such as an upstream server's speaker
    /// latents or a tone-colour embedding.
    pub engine_data: Option<serde_json::Value>,
}

/// Mono audio in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

impl Audio {
    pub fn duration_seconds(&self) -> f32 {
        self.samples.len() as f32 / self.sample_rate.max(1) as f32
    }
}

/// Progress of one synthesis, reported after each unit of work (a sentence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

pub trait Engine: Send + Sync + 'static {
    /// The engine's name, as in config.yaml and the job subject.
    fn name(&self) -> &str;

    /// The voices this engine can speak with now.
    fn voices(&self) -> Vec<VoiceInfo>;

    /// The languages the engine speaks, default first. Engines without stock voices (those that
    /// only speak cloned ones) must say; the default is the stock voices' languages.
    fn languages(&self) -> Vec<String> {
        let mut languages: Vec<String> = Vec::new();
        for voice in self.voices() {
            for language in std::iter::once(voice.language).chain(voice.other_languages) {
                if !languages.contains(&language) {
                    languages.push(language);
                }
            }
        }
        languages
    }

    /// Synthesises `input`, calling `progress` after each sentence. Runs on a blocking thread.
    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Audio, EngineError>;

    fn health(&self) -> EngineHealth;

    /// The speeds the engine can honour. Workers announce it with their voices, so that the
    /// gateway refuses other speeds at submit instead of queueing a job that must fail.
    fn speed_range(&self) -> SpeedRange {
        SpeedRange::default()
    }

    /// Whether the servers the engine sends its work to can be reached now. Checking may
    /// connect to each of them (so it runs on a blocking thread), and what it finds also steers
    /// the engine's next requests. An engine that runs in this process is always reachable.
    fn reachable(&self) -> bool {
        true
    }

    /// Whether [`Engine::enroll`] can clone voices.
    fn clones(&self) -> bool {
        false
    }

    /// Checks a voice and its trimmed reference before enrollment accepts it, for engines with
    /// rules of their own (a transcript, a shorter clip). Errors here are refusals of the upload.
    fn check_reference(
        &self,
        voice: &VoiceRecord,
        speech_seconds: f32,
        clip_seconds: f32,
    ) -> Result<(), EngineError> {
        let _ = (voice, speech_seconds, clip_seconds);
        Ok(())
    }

    /// Whether synthesis with a cloned voice needs the voice's reference clip
    /// ([`SynthesisInput::reference_wav`]), as engines that hand it to an upstream server do.
    fn needs_reference(&self) -> bool {
        false
    }

    /// Computes the conditioning of a cloned voice from its trimmed reference, calling
    /// `progress` after each step. Runs on a blocking thread.
    fn enroll(
        &self,
        input: &EnrollInput<'_>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Enrollment, EngineError> {
        let _ = (input, progress);
        Err(EngineError::invalid(
            "cloning_unsupported",
            format!("engine {} cannot clone voices", self.name()),
        ))
    }
}

/// Checks the parts of a request every engine checks the same way.
pub fn check_voice_and_language(
    engine: &dyn Engine,
    input: &SynthesisInput,
) -> Result<VoiceInfo, EngineError> {
    if let Some(record) = &input.voice {
        if record.info.engine != engine.name() {
            return Err(EngineError::invalid(
                "unknown_voice",
                format!(
                    "voice {:?} belongs to engine {}, not {}",
                    record.info.voice_id,
                    record.info.engine,
                    engine.name()
                ),
            ));
        }
        if !record.info.speaks(&input.language) {
            return Err(EngineError::invalid(
                "unsupported_language",
                format!(
                    "voice {} speaks {}, not {}",
                    record.info.voice_id, record.info.language, input.language
                ),
            ));
        }
        return Ok(record.info.clone());
    }
    let voice = engine
        .voices()
        .into_iter()
        .find(|v| v.voice_id == input.voice_id)
        .ok_or_else(|| {
            EngineError::invalid(
                "unknown_voice",
                format!(
                    "voice {:?} is not served by engine {}",
                    input.voice_id,
                    engine.name()
                ),
            )
        })?;
    if !voice.speaks(&input.language) {
        return Err(EngineError::invalid(
            "unsupported_language",
            format!(
                "voice {} speaks {}, not {}",
                voice.voice_id, voice.language, input.language
            ),
        ));
    }
    Ok(voice)
}

/// Builds the engine named `name` from its `workers.<name>` settings. `sessions` is how many
/// syntheses it must be able to run at once.
pub fn build(
    name: &str,
    settings: &tts_config::Settings,
    sessions: usize,
) -> Result<Arc<dyn Engine>, EngineError> {
    let engine_settings = settings
        .engine(name)
        .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?;
    match name {
        "piper" => build_piper(settings, engine_settings, sessions),
        "kokoro" => build_kokoro(settings, engine_settings, sessions),
        "gpt_sovits" => {
            let engine = gpt_sovits::GptSovitsEngine::load(&gpt_sovits::GptSovitsOptions {
                urls: engine_settings.urls.clone(),
                timeout: std::time::Duration::from_secs(engine_settings.timeout_secs),
                shared_dir: engine_settings.shared_dir.clone().into(),
                server_dir: engine_settings.server_dir.clone(),
                options: engine_settings.options.clone(),
            })?;
            Ok(Arc::new(engine))
        }
        "xtts" => {
            let chunk = engine_settings
                .options
                .get("stream_chunk_size")
                .and_then(|v| v.as_u64())
                .unwrap_or(20) as u32;
            let engine = xtts::XttsEngine::load(&xtts::XttsOptions {
                urls: engine_settings.urls.clone(),
                timeout: std::time::Duration::from_secs(engine_settings.timeout_secs),
                stream_chunk_size: chunk,
            })?;
            Ok(Arc::new(engine))
        }
        // The base engine (`workers.openvoice.base_engine`) is built by this function too.
        "openvoice" => openvoice::build(settings, sessions),
        other => Err(EngineError::internal(format!(
            "engine {other:?} is configured but not built into this binary (available: piper, kokoro, gpt_sovits, xtts, openvoice)"
        ))),
    }
}

/// Piper with the voices of `model_path`, or the cached stock voice.
fn build_piper(
    settings: &tts_config::Settings,
    engine_settings: &tts_config::EngineSettings,
    sessions: usize,
) -> Result<Arc<dyn Engine>, EngineError> {
    let cache = &settings.models.cache_dir;
    let paths = crate::models::ensure(cache)
        .map_err(|e| EngineError::internal(format!("model cache: {e}")).with_source(e))?;
    let model_dir = if engine_settings.model_path.is_empty() {
        paths.piper_dir
    } else {
        engine_settings.model_path.clone().into()
    };
    let onnxruntime = crate::runtime::onnxruntime_library(settings, paths.onnxruntime);
    let engine = piper::PiperEngine::load(&piper::PiperOptions {
        model_dir,
        voice: engine_settings.voice.clone(),
        device: engine_settings.device.clone(),
        threads: engine_settings.threads,
        sessions,
        onnxruntime,
    })?;
    Ok(Arc::new(engine))
}

/// Kokoro from the files in `model_path`, or the cached model.
fn build_kokoro(
    settings: &tts_config::Settings,
    engine_settings: &tts_config::EngineSettings,
    sessions: usize,
) -> Result<Arc<dyn Engine>, EngineError> {
    let paths = crate::models::ensure_kokoro(&settings.models.cache_dir)
        .map_err(|e| EngineError::internal(format!("model cache: {e}")).with_source(e))?;
    let dir: Option<std::path::PathBuf> =
        (!engine_settings.model_path.is_empty()).then(|| engine_settings.model_path.clone().into());
    let onnxruntime = crate::runtime::onnxruntime_library(settings, paths.onnxruntime);
    let engine = kokoro::KokoroEngine::load(&kokoro::KokoroOptions {
        model: dir
            .as_ref()
            .map_or(paths.model, |d| d.join("kokoro-v1.0.int8.onnx")),
        vocab: dir.as_ref().map_or(paths.vocab, |d| d.join("vocab.json")),
        voices: dir.as_ref().map_or(paths.voices, |d| d.join("voices.npz")),
        device: engine_settings.device.clone(),
        threads: engine_settings.threads,
        sessions,
        onnxruntime,
    })?;
    Ok(Arc::new(engine))
}
