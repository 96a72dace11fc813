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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
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
    /// Someone listens as the audio is made: an engine that can should make its first piece
    /// short, so that the first words are heard early.
    pub streamed: bool,
    /// For a cloned voice, its record: the engine reads the conditioning it stored at enrollment.
    pub voice: Option<VoiceRecord>,
    /// For a cloned voice of an engine that [`Engine::needs_reference`], the voice's trimmed
    /// reference clip as WAV bytes (16 kHz mono).
    pub reference_wav: Option<bytes::Bytes>,
    /// Set while the engine works when the job is cancelled (or finished by another delivery):
    /// an engine that speaks in pieces checks it before each piece and stops.
    pub cancel: Cancel,
}

/// A job's "stop now" flag, shared by the worker (which sets it) and the engine's thread (which
/// reads it between pieces of work).
#[derive(Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fails with [`EngineError::cancelled`] once the flag is set.
    pub fn check(&self) -> Result<(), EngineError> {
        if self.is_set() {
            Err(EngineError::cancelled())
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel({})", self.is_set())
    }
}

/// Two inputs are alike whether or not their jobs were cancelled.
impl PartialEq for Cancel {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The budget and seed of voice enrollment, the same for every voice a worker enrols.
#[derive(Debug, Clone)]
pub struct CloneSettings {
    /// Syntheses a search-based enrollment (Kokoro's style search) may spend after scoring the
    /// stock voices.
    pub evaluations: usize,
    /// Seed of the search, so that enrolling the same clip twice gives the same voice.
    pub seed: u64,
    /// How long the search may take, from its first synthesis: it stops before a step that
    /// would not leave time for the step and the judgement after it. `None` lets the budget
    /// and the held-out score alone stop it. A loaded machine reaches the limit sooner; a
    /// clip's voice is the same twice only where the limit was not reached.
    pub time_limit: Option<std::time::Duration>,
}

impl CloneSettings {
    /// The search's settings from the configuration's `voices` section, where a limit of 0
    /// seconds means none.
    pub fn from_config(voices: &tts_config::VoiceSettings) -> Self {
        CloneSettings {
            evaluations: voices.search_evaluations,
            seed: voices.search_seed,
            time_limit: (voices.search_seconds > 0)
                .then(|| std::time::Duration::from_secs(voices.search_seconds)),
        }
    }
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
    /// Cloned and best-stock similarity to the reference on a held-out sentence.
    pub similarity: Option<CloneSimilarity>,
    /// The conditioning the engine keeps with the voice, in its own shape (Kokoro's base voice
    /// and style offset, an upstream server's speaker latents, a tone-colour embedding).
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

/// Progress of one enrollment, reported after each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// What a synthesis reports after each unit of work (a sentence): how far it is and the audio
/// it made since its previous report, so that the worker can stream speech while the rest is
/// made.
///
/// The audio an engine returns must be exactly its steps' audio, concatenated in order: each
/// piece is already post-processed (clamped, with the pause before its sentence), because a
/// listener plays the pieces as they come and the stored audio must be what it heard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step<'a> {
    pub done: usize,
    pub total: usize,
    /// Mono audio in [-1, 1] made since the previous step; empty when the step made none.
    pub audio: &'a [f32],
    /// The rate of `audio`, the same as the returned audio's.
    pub sample_rate: u32,
}

impl Step<'_> {
    pub fn progress(&self) -> Progress {
        Progress {
            done: self.done,
            total: self.total,
        }
    }
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

    /// Synthesises `input`, calling `progress` after each sentence with the audio made since the
    /// previous call (see [`Step`]). Runs on a blocking thread.
    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
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

/// Where an engine runs its graphs. `cuda` falls back to the CPU with a warning when CUDA cannot
/// be loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// The engines built into this binary.
pub const ENGINES: [&str; 5] = ["piper", "kokoro", "gpt_sovits", "xtts", "openvoice"];

/// An engine's typed options, parsed from its `workers.<name>` section. Each engine's type
/// refuses keys it does not know, so a misspelt option fails at start with the key's name.
#[derive(Debug, Clone)]
pub enum EngineConfig {
    Piper(piper::PiperConfig),
    Kokoro(kokoro::KokoroConfig),
    GptSovits(gpt_sovits::GptSovitsConfig),
    Xtts(xtts::XttsConfig),
    /// OpenVoice with the options of the base engine that speaks before it converts.
    OpenVoice {
        config: openvoice::OpenVoiceConfig,
        base: Box<EngineConfig>,
    },
}

impl EngineConfig {
    /// Parses the options of the engine `name` from the configured `workers` sections.
    pub fn parse(
        name: &str,
        workers: &BTreeMap<String, tts_config::EngineSettings>,
    ) -> Result<EngineConfig, EngineError> {
        let section = workers.get(name).ok_or_else(|| {
            let known: Vec<&str> = workers.keys().map(String::as_str).collect();
            EngineError::internal(format!(
                "no engine named {name:?} in workers (configured: {})",
                known.join(", ")
            ))
        })?;
        let invalid =
            |e: tts_config::ConfigError| EngineError::internal(e.to_string()).with_source(e);
        Ok(match name {
            "piper" => EngineConfig::Piper(section.parse(name).map_err(invalid)?),
            "kokoro" => EngineConfig::Kokoro(section.parse(name).map_err(invalid)?),
            "gpt_sovits" => EngineConfig::GptSovits(section.parse(name).map_err(invalid)?),
            "xtts" => {
                let config: xtts::XttsConfig = section.parse(name).map_err(invalid)?;
                config.check()?;
                EngineConfig::Xtts(config)
            }
            "openvoice" => {
                let config: openvoice::OpenVoiceConfig = section.parse(name).map_err(invalid)?;
                let base = config.base_engine.as_str();
                if !openvoice::BASE_ENGINES.contains(&base) {
                    return Err(EngineError::internal(format!(
                        "workers.openvoice.base_engine is {base:?}; it must be one of {}",
                        openvoice::BASE_ENGINES.join(", ")
                    )));
                }
                let base = Box::new(EngineConfig::parse(base, workers)?);
                EngineConfig::OpenVoice { config, base }
            }
            other => {
                return Err(EngineError::internal(format!(
                    "engine {other:?} is configured but not built into this binary (available: {})",
                    ENGINES.join(", ")
                )));
            }
        })
    }

    /// Parses every configured engine's options, so that a bad key fails the start of any
    /// process with the configuration, not only the worker that runs the engine.
    pub fn check_all(
        workers: &BTreeMap<String, tts_config::EngineSettings>,
    ) -> Result<(), EngineError> {
        for name in workers.keys() {
            EngineConfig::parse(name, workers)?;
        }
        Ok(())
    }
}

/// Builds an engine from its options. `models` says where the model cache and ONNX Runtime are;
/// `sessions` is how many syntheses the engine must be able to run at once.
pub fn build(
    config: &EngineConfig,
    models: &tts_config::ModelSettings,
    sessions: usize,
) -> Result<Arc<dyn Engine>, EngineError> {
    Ok(match config {
        EngineConfig::Piper(config) => {
            Arc::new(piper::PiperEngine::build(config, models, sessions)?)
        }
        EngineConfig::Kokoro(config) => {
            Arc::new(kokoro::KokoroEngine::build(config, models, sessions)?)
        }
        EngineConfig::GptSovits(config) => {
            Arc::new(gpt_sovits::GptSovitsEngine::load(&config.options())?)
        }
        EngineConfig::Xtts(config) => {
            if let Some(device) = config.device {
                tracing::info!(
                    device = device.as_str(),
                    "workers.xtts.device is not used by this worker: the XTTS streaming server \
                     runs the model on its own device"
                );
            }
            Arc::new(xtts::XttsEngine::load(&config.options())?)
        }
        EngineConfig::OpenVoice { config, base } => {
            // The model is checked first: an engine that is not installed should say so before
            // the base engine spends seconds loading.
            openvoice::check_configured(config)?;
            let base = build(base, models, sessions)?;
            Arc::new(openvoice::OpenVoiceEngine::build(
                config, base, models, sessions,
            )?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[(&str, &str)]) -> tts_config::Settings {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        tts_config::Settings::load_with_env(None, env).unwrap()
    }

    fn refusal(env: &[(&str, &str)]) -> String {
        EngineConfig::check_all(&settings(env).workers)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_embedded_sections_parse_into_each_engines_options() {
        let s = settings(&[]);
        EngineConfig::check_all(&s.workers).unwrap();
        match EngineConfig::parse("openvoice", &s.workers).unwrap() {
            EngineConfig::OpenVoice { config, base } => {
                assert_eq!(config.tau, openvoice::DEFAULT_TAU);
                assert!(matches!(*base, EngineConfig::Kokoro(_)));
            }
            other => panic!("{other:?}"),
        }
        match EngineConfig::parse("gpt_sovits", &s.workers).unwrap() {
            EngineConfig::GptSovits(config) => {
                assert_eq!(config.options.text_split_method.as_deref(), Some("cut5"));
                assert_eq!(config.timeout_secs, 120);
            }
            other => panic!("{other:?}"),
        }
        let s = settings(&[
            ("TTS__WORKERS__PIPER__DEVICE", "cuda"),
            ("TTS__WORKERS__XTTS__URLS", "http://a:1,http://b:2"),
        ]);
        match EngineConfig::parse("piper", &s.workers).unwrap() {
            EngineConfig::Piper(config) => assert_eq!(config.device, Device::Cuda),
            other => panic!("{other:?}"),
        }
        match EngineConfig::parse("xtts", &s.workers).unwrap() {
            EngineConfig::Xtts(config) => assert_eq!(config.urls, ["http://a:1", "http://b:2"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let err = refusal(&[("TTS__WORKERS__PIPER__DEVICE", "tpu")]);
        assert!(err.contains("workers.piper.device"), "{err}");
        let err = refusal(&[("TTS__WORKERS__KOKORO__THREDS", "2")]);
        assert!(
            err.contains("workers.kokoro") && err.contains("unknown field `threds`"),
            "{err}"
        );
        // A field set from each job is not a tuning option of api_v2.
        let err = refusal(&[("TTS__WORKERS__GPT_SOVITS__OPTIONS__TEXT", "hello")]);
        assert!(
            err.contains("workers.gpt_sovits.options") && err.contains("unknown field `text`"),
            "{err}"
        );
        let err = refusal(&[("TTS__WORKERS__OPENVOICE__BASE_ENGINE", "xtts")]);
        assert!(
            err.contains("base_engine") && err.contains("kokoro, piper"),
            "{err}"
        );
        let err = refusal(&[("TTS__WORKERS__PIPR__PORT", "9")]);
        assert!(err.contains("not built into this binary"), "{err}");
    }

    #[test]
    fn the_origin_documents_config_file_passes_every_engines_check() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/seed-config.yaml");
        let s = tts_config::Settings::load_with_env(Some(&file), std::iter::empty()).unwrap();
        EngineConfig::check_all(&s.workers).unwrap();
        match EngineConfig::parse("xtts", &s.workers).unwrap() {
            EngineConfig::Xtts(config) => {
                assert_eq!(config.device, Some(Device::Cuda));
                assert_eq!(config.model_path, "");
            }
            other => panic!("{other:?}"),
        }
        match EngineConfig::parse("gpt_sovits", &s.workers).unwrap() {
            EngineConfig::GptSovits(config) => assert_eq!(config.urls, ["http://127.0.0.1:9880"]),
            other => panic!("{other:?}"),
        }
        match EngineConfig::parse("openvoice", &s.workers).unwrap() {
            EngineConfig::OpenVoice { config, .. } => assert_eq!(config.device, Device::Cuda),
            other => panic!("{other:?}"),
        }
        // A model path for XTTS would be ignored by the server that loads the model.
        let err = refusal(&[("TTS__WORKERS__XTTS__MODEL_PATH", "/models/xtts_v2")]);
        assert!(err.contains("workers.xtts.model_path"), "{err}");
        let err = refusal(&[("TTS__WORKERS__XTTS__DEVICE", "tpu")]);
        assert!(err.contains("workers.xtts.device"), "{err}");
    }
}
