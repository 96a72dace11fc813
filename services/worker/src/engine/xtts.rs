//! The `xtts` engine: a Coqui XTTS-v2 streaming server (`xtts-streaming-server`) does the
//! synthesis. At enrollment the voice's clip goes to `POST /clone_speaker` once; the speaker
//! latents it returns are kept with the voice, and every synthesis sends them to
//! `POST /tts_stream`, so they are never recomputed per job.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tts_contracts::{SpeedRange, VoiceInfo, VoiceRecord};

use super::upstream::Upstreams;
use super::{
    Audio, Engine, EngineError, EngineErrorKind, EngineHealth, EnrollInput, Enrollment, Progress,
    Step, SynthesisInput, check_voice_and_language,
};

/// The languages the streaming server accepts, as it spells them.
pub const LANGUAGES: [&str; 16] = [
    "en", "de", "fr", "es", "it", "pl", "pt", "tr", "ru", "nl", "cs", "ar", "zh", "ja", "hu", "ko",
];

/// Width of one GPT conditioning latent, as XTTS-v2 has it.
const LATENT_WIDTH: usize = 1024;

/// `workers.xtts` in the settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XttsConfig {
    /// The XTTS streaming servers, used in turn.
    #[serde(deserialize_with = "tts_config::list_or_string")]
    pub urls: Vec<String>,
    /// Seconds a request may take before it counts as failed (and is retried).
    #[serde(default = "super::upstream::default_timeout_secs")]
    pub timeout_secs: u64,
    /// Tokens per streamed chunk.
    #[serde(default = "default_stream_chunk_size")]
    pub stream_chunk_size: u32,
    /// The origin document's `model_path`, where its XTTS worker loaded the model from. Here
    /// the streaming server loads the model, so only the origin's default, empty, is accepted
    /// ([`XttsConfig::check`]).
    #[serde(default)]
    pub model_path: String,
    /// The origin document's `device`. The streaming server decides where the model runs (the
    /// CUDA build on a GPU); the worker runs no model, so it only logs this at start.
    #[serde(default)]
    pub device: Option<super::Device>,
}

fn default_stream_chunk_size() -> u32 {
    20
}

impl XttsConfig {
    /// Refuses a `model_path`: a path given for the model would be ignored, and the server it
    /// is meant for would go on loading its own.
    pub fn check(&self) -> Result<(), EngineError> {
        if self.model_path.is_empty() {
            return Ok(());
        }
        Err(EngineError::internal(format!(
            "workers.xtts.model_path is {:?}, but the XTTS-v2 model is loaded by the XTTS \
             streaming server at workers.xtts.urls, not by this worker; give the model to that \
             server and leave workers.xtts.model_path empty",
            self.model_path
        )))
    }

    pub fn options(&self) -> XttsOptions {
        XttsOptions {
            urls: self.urls.clone(),
            timeout: Duration::from_secs(self.timeout_secs),
            stream_chunk_size: self.stream_chunk_size,
        }
    }
}

#[derive(Debug, Clone)]
pub struct XttsOptions {
    pub urls: Vec<String>,
    pub timeout: Duration,
    /// Tokens per streamed chunk (`stream_chunk_size`).
    pub stream_chunk_size: u32,
}

/// What `/clone_speaker` returns and `/tts_stream` takes back, kept in the voice's `engine_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerLatents {
    pub gpt_cond_latent: Vec<Vec<f32>>,
    pub speaker_embedding: Vec<f32>,
}

impl SpeakerLatents {
    fn check(&self) -> Result<(), String> {
        if self.speaker_embedding.is_empty() {
            return Err("speaker_embedding is empty".into());
        }
        if self.gpt_cond_latent.is_empty() {
            return Err("gpt_cond_latent is empty".into());
        }
        if self
            .gpt_cond_latent
            .iter()
            .any(|row| row.len() != LATENT_WIDTH)
        {
            return Err(format!(
                "gpt_cond_latent rows must have {LATENT_WIDTH} values"
            ));
        }
        let finite = |v: &f32| v.is_finite();
        if !self.speaker_embedding.iter().all(finite)
            || !self.gpt_cond_latent.iter().flatten().all(finite)
        {
            return Err("the latents hold values that are not finite".into());
        }
        Ok(())
    }
}

pub struct XttsEngine {
    upstreams: Upstreams,
    stream_chunk_size: u32,
}

impl XttsEngine {
    pub fn load(options: &XttsOptions) -> Result<Self, EngineError> {
        Ok(XttsEngine {
            upstreams: Upstreams::new("xtts", &options.urls, options.timeout)?,
            stream_chunk_size: options.stream_chunk_size.max(1),
        })
    }
}

fn latents_of(voice: &VoiceRecord) -> Result<SpeakerLatents, EngineError> {
    let not_ready = |why: String| {
        EngineError::invalid(
            "voice_not_ready",
            format!(
                "voice {} has no usable XTTS latents: {why}",
                voice.info.voice_id
            ),
        )
    };
    let data = voice
        .engine_data
        .clone()
        .ok_or_else(|| not_ready("it was not enrolled by xtts".into()))?;
    let latents: SpeakerLatents =
        serde_json::from_value(data).map_err(|e| not_ready(e.to_string()))?;
    latents.check().map_err(not_ready)?;
    Ok(latents)
}

impl Engine for XttsEngine {
    fn name(&self) -> &str {
        "xtts"
    }

    /// The streaming server has no voices of its own: every voice is a cloned one.
    fn voices(&self) -> Vec<VoiceInfo> {
        Vec::new()
    }

    fn languages(&self) -> Vec<String> {
        LANGUAGES.iter().map(|l| l.to_string()).collect()
    }

    fn synthesize(
        &self,
        input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        check_voice_and_language(self, input)?;
        let voice = input.voice.as_ref().ok_or_else(|| {
            EngineError::invalid("unknown_voice", "xtts speaks cloned voices only")
        })?;
        // The gateway refuses such jobs at submit; this catches one queued before it knew.
        if !self.speed_range().contains(input.speed) {
            return Err(EngineError::invalid(
                "unsupported_speed",
                "the XTTS streaming server has no speed control; send speed 1.0",
            ));
        }
        let latents = latents_of(voice)?;
        let language = tts_contracts::base_language(&input.language);
        let body = json!({
            "text": input.text,
            "language": language,
            "speaker_embedding": latents.speaker_embedding,
            "gpt_cond_latent": latents.gpt_cond_latent,
            "add_wav_header": true,
            "stream_chunk_size": self.stream_chunk_size.to_string(),
        });
        let bytes = self.upstreams.post("/tts_stream", |r| Ok(r.json(&body)))?;
        // The server writes the WAV header before it knows the length, then streams PCM.
        let audio = self.upstreams.audio(&bytes)?;
        // The server's answer is the whole audio, so it is one piece.
        progress(Step {
            done: 1,
            total: 1,
            audio: &audio.samples,
            sample_rate: audio.sample_rate,
        });
        Ok(audio)
    }

    fn health(&self) -> EngineHealth {
        self.upstreams.health()
    }

    fn reachable(&self) -> bool {
        self.upstreams.check()
    }

    /// The streaming server has no speed control.
    fn speed_range(&self) -> SpeedRange {
        SpeedRange::only(1.0)
    }

    fn clones(&self) -> bool {
        true
    }

    /// Sends the trimmed reference to `/clone_speaker` once and keeps the latents.
    fn enroll(
        &self,
        input: &EnrollInput<'_>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Enrollment, EngineError> {
        let wav = input.reference_wav.to_vec();
        let answer = self.upstreams.post("/clone_speaker", |r| {
            let part = reqwest::blocking::multipart::Part::bytes(wav.clone())
                .file_name("reference.wav")
                .mime_str("audio/wav")
                .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?;
            Ok(r.multipart(reqwest::blocking::multipart::Form::new().part("wav_file", part)))
        })?;
        let latents: SpeakerLatents = serde_json::from_slice(&answer).map_err(|e| {
            EngineError::new(
                EngineErrorKind::Transient,
                "upstream_error",
                format!("xtts server answered latents that do not parse: {e}"),
            )
            .with_source(e)
        })?;
        latents.check().map_err(|e| {
            EngineError::new(
                EngineErrorKind::Transient,
                "upstream_error",
                format!("xtts server answered unusable latents: {e}"),
            )
            .with_source(e)
        })?;
        progress(Progress { done: 1, total: 1 });
        Ok(Enrollment {
            engine_data: Some(
                serde_json::to_value(&latents)
                    .map_err(|e| EngineError::internal(e.to_string()).with_source(e))?,
            ),
            ..Enrollment::default()
        })
    }
}
