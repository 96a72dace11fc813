//! The `gpt_sovits` engine: a GPT-SoVITS api_v2 server (`python api_v2.py`, port 9880 by
//! default) does the synthesis; this engine maps a job and its voice to `POST /tts`.
//!
//! api_v2 reads the reference clip from its own disk (`ref_audio_path`), so the worker writes the
//! voice's clip into a directory it shares with the server (`workers.gpt_sovits.shared_dir`,
//! seen by the server as `server_dir`) for the length of one request, under a name of its own
//! so that concurrent jobs never share or delete each other's file. api_v2 serves one request
//! at a time; see `upstream.rs` for how several servers are used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tts_contracts::{VoiceInfo, VoiceRecord};

use super::upstream::Upstreams;
use super::{
    Audio, Engine, EngineError, EngineHealth, EnrollInput, Enrollment, Progress, Step,
    SynthesisInput, check_voice_and_language,
};

/// Languages api_v2 (v2 models) takes as `text_lang` and `prompt_lang`.
pub const LANGUAGES: [&str; 5] = ["zh", "en", "ja", "ko", "yue"];

/// The text split methods api_v2 knows.
const SPLIT_METHODS: [&str; 6] = ["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"];

/// GPT-SoVITS refuses reference clips outside 3 to 10 seconds.
pub const MAX_REFERENCE_SECS: f32 = 10.0;

/// `workers.gpt_sovits` in the settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptSovitsConfig {
    /// The api_v2 servers, used in turn, one request in flight each.
    #[serde(deserialize_with = "tts_config::list_or_string")]
    pub urls: Vec<String>,
    /// Seconds a request may take before it counts as failed (and is retried).
    #[serde(default = "super::upstream::default_timeout_secs")]
    pub timeout_secs: u64,
    /// Where this worker writes reference clips for the server to read.
    pub shared_dir: String,
    /// The same directory as the server sees it; empty when the paths are the same.
    #[serde(default)]
    pub server_dir: String,
    /// api_v2's tuning fields, sent with every request.
    #[serde(default)]
    pub options: Tuning,
}

/// The fields of api_v2's `POST /tts` that tune synthesis. The others (text, languages, the
/// reference, speed, format) are set from each job and the voice, so they are not options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_split_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_bucket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_infer: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment_interval: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub super_sampling: Option<bool>,
}

impl GptSovitsConfig {
    pub fn options(&self) -> GptSovitsOptions {
        GptSovitsOptions {
            urls: self.urls.clone(),
            timeout: Duration::from_secs(self.timeout_secs),
            shared_dir: self.shared_dir.clone().into(),
            server_dir: self.server_dir.clone(),
            tuning: self.options.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GptSovitsOptions {
    pub urls: Vec<String>,
    pub timeout: Duration,
    /// Where this worker writes reference clips.
    pub shared_dir: PathBuf,
    /// The same directory as the server sees it; `shared_dir` when empty.
    pub server_dir: String,
    /// api_v2's tuning fields, sent with every request.
    pub tuning: Tuning,
}

pub struct GptSovitsEngine {
    upstreams: Upstreams,
    shared_dir: PathBuf,
    server_dir: String,
    tuning: Tuning,
}

impl GptSovitsEngine {
    pub fn load(options: &GptSovitsOptions) -> Result<Self, EngineError> {
        let upstreams = Upstreams::new("gpt_sovits", &options.urls, options.timeout)?;
        if options.shared_dir.as_os_str().is_empty() {
            return Err(EngineError::internal(
                "workers.gpt_sovits.shared_dir must name a directory the api_v2 server can read",
            ));
        }
        std::fs::create_dir_all(&options.shared_dir).map_err(|e| {
            EngineError::internal(format!(
                "cannot create workers.gpt_sovits.shared_dir {}: {e}",
                options.shared_dir.display()
            ))
            .with_source(e)
        })?;
        if let Some(method) = &options.tuning.text_split_method
            && !SPLIT_METHODS.contains(&method.as_str())
        {
            return Err(EngineError::internal(format!(
                "workers.gpt_sovits.options.text_split_method must be one of {}",
                SPLIT_METHODS.join(", ")
            )));
        }
        let server_dir = if options.server_dir.is_empty() {
            options.shared_dir.display().to_string()
        } else {
            options.server_dir.clone()
        };
        Ok(GptSovitsEngine {
            upstreams,
            shared_dir: options.shared_dir.clone(),
            server_dir: server_dir.trim_end_matches('/').to_string(),
            tuning: options.tuning.clone(),
        })
    }

    /// The `POST /tts` body for one job.
    pub fn request(
        &self,
        input: &SynthesisInput,
        voice: &VoiceRecord,
        ref_audio_path: &str,
    ) -> Value {
        let mut body = match serde_json::to_value(&self.tuning) {
            Ok(Value::Object(fields)) => fields,
            _ => Map::new(),
        };
        body.entry("text_split_method").or_insert(json!("cut5"));
        let fields = json!({
            "text": input.text,
            "text_lang": api_language(&input.language),
            "ref_audio_path": ref_audio_path,
            "prompt_text": voice.prompt_text.clone().unwrap_or_default(),
            "prompt_lang": api_language(&voice.info.language),
            "speed_factor": input.speed,
            "media_type": "wav",
            "streaming_mode": false,
        });
        if let Value::Object(fields) = fields {
            body.extend(fields);
        }
        Value::Object(body)
    }
}

/// api_v2's name for a language: the base tag, lower case.
fn api_language(language: &str) -> String {
    tts_contracts::base_language(language)
}

/// The reference clip on the shared disk for one request; removed when dropped, whatever the
/// request's outcome.
struct SharedClip(PathBuf);

impl SharedClip {
    fn write(dir: &Path, voice_id: &str, wav: &[u8]) -> Result<Self, EngineError> {
        let name = format!("{voice_id}-{}.wav", uuid::Uuid::new_v4().simple());
        let path = dir.join(name);
        std::fs::write(&path, wav).map_err(|e| {
            EngineError::new(
                super::EngineErrorKind::Transient,
                "shared_dir_unavailable",
                format!("cannot write the reference clip to {}: {e}", path.display()),
            )
            .with_source(e)
        })?;
        Ok(SharedClip(path))
    }

    fn file_name(&self) -> String {
        self.0
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Drop for SharedClip {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "could not remove a reference clip");
        }
    }
}

impl Engine for GptSovitsEngine {
    fn name(&self) -> &str {
        "gpt_sovits"
    }

    /// api_v2 has no voices of its own: every voice is a cloned one.
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
            EngineError::invalid("unknown_voice", "gpt_sovits speaks cloned voices only")
        })?;
        let wav = input.reference_wav.as_ref().ok_or_else(|| {
            EngineError::invalid(
                "voice_not_found",
                format!("voice {} has no reference clip", voice.info.voice_id),
            )
        })?;
        let clip = SharedClip::write(&self.shared_dir, &voice.info.voice_id, wav)?;
        let ref_audio_path = format!("{}/{}", self.server_dir, clip.file_name());
        let body = self.request(input, voice, &ref_audio_path);
        let bytes = self.upstreams.post("/tts", |r| Ok(r.json(&body)))?;
        drop(clip);
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

    fn clones(&self) -> bool {
        true
    }

    fn needs_reference(&self) -> bool {
        true
    }

    fn check_reference(
        &self,
        voice: &VoiceRecord,
        _speech_seconds: f32,
        clip_seconds: f32,
    ) -> Result<(), EngineError> {
        if voice
            .prompt_text
            .as_deref()
            .is_none_or(|t| t.trim().is_empty())
        {
            return Err(EngineError::invalid(
                "prompt_text_required",
                "gpt_sovits needs the clip's transcript in prompt_text",
            ));
        }
        if clip_seconds > MAX_REFERENCE_SECS {
            return Err(EngineError::invalid(
                "reference_too_long",
                format!(
                    "gpt_sovits takes 3 to {MAX_REFERENCE_SECS} s of reference audio; the trimmed clip has {clip_seconds:.1} s"
                ),
            ));
        }
        Ok(())
    }

    /// The reference clip itself is the conditioning: nothing to compute, it is already stored.
    fn enroll(
        &self,
        _input: &EnrollInput<'_>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Enrollment, EngineError> {
        progress(Progress { done: 1, total: 1 });
        Ok(Enrollment::default())
    }
}
