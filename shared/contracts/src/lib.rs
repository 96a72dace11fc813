//! Wire contracts of voice-clone-tts.
//!
//! Everything that crosses a process boundary is defined here: the HTTP request and response
//! bodies, the job message on the queue, the job record kept in the state store, progress events
//! and worker heartbeats, and the names of subjects and streams. Gateway and workers agree on
//! these types and nothing else, which is why this crate depends on serde and plain data crates
//! only (no tokio, no async-nats): a client library can reuse it without pulling in a runtime.

pub mod chunk;
pub mod failure;
pub mod format;
pub mod subjects;
pub mod trace;

pub use chunk::AudioChunk;
pub use format::AudioFormat;

pub use trace::TraceParent;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifier of a job. Also the JetStream message id, so that a publish retried by the gateway
/// is de-duplicated by the server.
pub type JobId = Uuid;

/// Body of `POST /api/synthesize` and `POST /api/jobs`, as the origin document defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SynthesizeRequest {
    #[cfg_attr(feature = "openapi", schema(example = "Hello from voice-clone-tts."))]
    pub text: String,
    #[cfg_attr(feature = "openapi", schema(example = "en_US-joe-medium"))]
    pub voice_id: String,
    /// Defaults to the voice's own language.
    #[serde(default)]
    pub language: Option<String>,
    /// Speaking rate, 0.25 to 4.0; 1.0 when absent.
    #[serde(default)]
    pub speed: Option<f32>,
    /// The audio format of the answer, by [`AudioFormat`] name; WAV when absent. A string
    /// rather than an [`AudioFormat`], so that an unknown name gets the gateway's
    /// `unsupported_format` answer listing the formats on offer, not a generic body error.
    #[serde(default)]
    pub format: Option<String>,
    /// Answer with the audio as it is made (chunked) instead of once it is all done. An
    /// `Accept` of `text/event-stream`, or of `audio/pcm` with no `format`, streams as well.
    #[serde(default)]
    pub stream: bool,
}

/// The base language of a tag, lower case: `en` for `en-US` and `EN_us`.
pub fn base_language(tag: &str) -> String {
    tag.split(['-', '_'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Whether two language tags name the same base language: `en` matches `en-US` and `EN_us`.
pub fn same_language(a: &str, b: &str) -> bool {
    base_language(a) == base_language(b)
}

/// The smallest and largest accepted `speed`.
pub const SPEED_RANGE: (f32, f32) = (0.25, 4.0);

/// The speeds an engine or a voice can honour, inclusive, within [`SPEED_RANGE`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpeedRange {
    pub min: f32,
    pub max: f32,
}

impl Default for SpeedRange {
    /// The whole range the API accepts.
    fn default() -> Self {
        SpeedRange {
            min: SPEED_RANGE.0,
            max: SPEED_RANGE.1,
        }
    }
}

impl SpeedRange {
    /// Exactly one speed.
    pub fn only(speed: f32) -> Self {
        SpeedRange {
            min: speed,
            max: speed,
        }
    }

    pub fn contains(&self, speed: f32) -> bool {
        (self.min..=self.max).contains(&speed)
    }

    /// The speeds both ranges honour; empty (min above max) when they share none.
    pub fn intersect(&self, other: &SpeedRange) -> SpeedRange {
        SpeedRange {
            min: self.min.max(other.min),
            max: self.max.min(other.max),
        }
    }
}

/// What a job asks a worker to do. Tagged so that other kinds of work (voice enrollment) can join
/// the same queue without breaking workers that read this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSpec {
    Synthesize {
        text: String,
        voice_id: String,
        language: String,
        speed: f32,
        /// Someone listens as the audio is made, so the engine starts with a short first piece
        /// where it can: a few words are heard sooner at the cost of a short break inside the
        /// first sentence. Jobs whose audio is only read once done keep whole sentences.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        streamed: bool,
    },
    /// Enrol the cloned voice `voice_id` from the clip stored at `upload_key`: check and trim the
    /// speech, embed the speaker and compute the engine's conditioning.
    Enroll {
        voice_id: String,
        upload_key: String,
    },
}

impl JobSpec {
    /// The voice the job speaks with or enrols.
    pub fn voice_id(&self) -> &str {
        match self {
            JobSpec::Synthesize { voice_id, .. } | JobSpec::Enroll { voice_id, .. } => voice_id,
        }
    }
}

/// The message published on `tts.jobs.<engine>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: JobId,
    pub engine: String,
    pub created_at: DateTime<Utc>,
    /// The tenant the job belongs to; `None` when authentication is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(flatten)]
    pub spec: JobSpec,
}

/// A job the queue gave up on after its last delivery, as the dead-letter stream keeps it and
/// `GET /api/admin/dead-letters` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub job_id: JobId,
    pub engine: String,
    /// Why the queue gave up on it.
    pub reason: JobFailure,
    /// Deliveries it had.
    pub deliveries: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub dead_at: DateTime<Utc>,
    /// The job as it was queued, so that requeueing it runs the same job.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub job: JobMessage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Stopped by its owner (`DELETE /api/jobs/{id}`) before it finished; it made no audio.
    Cancelled,
}

impl JobStatus {
    /// A terminal status never changes again; clients stop polling and WebSockets close.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// Why a job failed, in the same `{error, message}` shape as HTTP errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobFailure {
    pub error: String,
    pub message: String,
}

/// What a synthesis job made, as its `succeeded` record names it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobAudio {
    /// Object key of the WAV, stored before the record says so.
    pub key: String,
    pub duration_seconds: f32,
    pub sample_rate: u32,
}

/// The state of a job as the state store keeps it and `GET /api/jobs/{id}` returns it.
///
/// Its fields are public for reading; it changes only through its methods (`start`, `progress`,
/// `succeed`, `requeue`, `fail`, `cancel`), which leave a terminal record (`succeeded`, `failed`,
/// `cancelled`) as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub job_id: JobId,
    pub engine: String,
    pub voice_id: String,
    pub status: JobStatus,
    /// 0.0 to 1.0.
    pub progress: f32,
    /// How many times a worker has started this job (redeliveries count).
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub error: Option<JobFailure>,
    /// Object key of the finished WAV; set only once the audio is durable.
    #[serde(default)]
    pub audio_key: Option<String>,
    #[serde(default)]
    pub duration_seconds: Option<f32>,
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// The node that ran the latest attempt.
    #[serde(default)]
    pub worker: Option<String>,
    /// The tenant the job belongs to; `None` when authentication is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The format the client asked for, which `GET /api/jobs/{id}/audio` answers in; the stored
    /// audio is WAV whatever it is. `None` (records from before formats existed) means WAV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
}

impl JobRecord {
    pub fn queued(message: &JobMessage) -> Self {
        JobRecord {
            job_id: message.job_id,
            engine: message.engine.clone(),
            voice_id: message.spec.voice_id().to_string(),
            status: JobStatus::Queued,
            progress: 0.0,
            attempts: 0,
            created_at: message.created_at,
            updated_at: message.created_at,
            started_at: None,
            finished_at: None,
            error: None,
            audio_key: None,
            duration_seconds: None,
            sample_rate: None,
            worker: None,
            tenant: message.tenant.clone(),
            format: None,
        }
    }

    /// Records a new attempt as `running` on `worker`: progress starts over and the error of
    /// an earlier attempt is cleared, while the time of the first start is kept. Returns false,
    /// changing nothing, when the record is terminal.
    ///
    /// The Redis job store makes this change in a Lua script of its own (`START_UNLESS_TERMINAL`
    /// in tts-infra's `jobs.rs`), so that a worker starts a job in one round trip: a change here
    /// is made there too.
    #[must_use = "a terminal record refuses the change"]
    pub fn start(&mut self, attempt: u32, worker: &str) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        let now = Utc::now();
        self.status = JobStatus::Running;
        self.attempts = attempt;
        self.progress = 0.0;
        self.started_at.get_or_insert(now);
        self.updated_at = now;
        self.error = None;
        self.worker = Some(worker.to_owned());
        true
    }

    /// Records how far the job is, from 0.0 to 1.0 (clamped). Returns false, changing nothing,
    /// when the record is terminal.
    #[must_use = "a terminal record refuses the change"]
    pub fn progress(&mut self, fraction: f32) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        self.progress = fraction.clamp(0.0, 1.0);
        self.updated_at = Utc::now();
        true
    }

    /// Marks the job `succeeded`, complete, now, with the audio it made (an enrollment makes
    /// none). Returns false, changing nothing, when the record is already terminal.
    #[must_use = "a terminal record refuses the change"]
    pub fn succeed(&mut self, audio: Option<JobAudio>) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        let now = Utc::now();
        self.status = JobStatus::Succeeded;
        self.progress = 1.0;
        self.updated_at = now;
        self.finished_at = Some(now);
        if let Some(audio) = audio {
            self.audio_key = Some(audio.key);
            self.duration_seconds = Some(audio.duration_seconds);
            self.sample_rate = Some(audio.sample_rate);
        }
        true
    }

    /// Puts the job back to `queued` for another attempt. Returns false, changing nothing, when
    /// the record is terminal.
    #[must_use = "a terminal record refuses the change"]
    pub fn requeue(&mut self) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        self.status = JobStatus::Queued;
        self.updated_at = Utc::now();
        true
    }

    /// Marks the job failed now, with `error` (one of [`failure`]'s codes or an engine's) as its
    /// machine-readable reason. Returns false, changing nothing, when the record is already
    /// terminal: a job that succeeded stays succeeded, and the first failure is the one kept.
    #[must_use = "a terminal record refuses the change"]
    pub fn fail(&mut self, error: &str, message: impl Into<String>) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        let now = Utc::now();
        self.status = JobStatus::Failed;
        self.updated_at = now;
        self.finished_at = Some(now);
        self.error = Some(JobFailure {
            error: error.into(),
            message: message.into(),
        });
        true
    }

    /// Marks the job cancelled now. Returns false, changing nothing, when the record is already
    /// terminal: a job that finished cannot be cancelled any more.
    #[must_use = "a terminal record refuses the change"]
    pub fn cancel(&mut self) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        let now = Utc::now();
        self.status = JobStatus::Cancelled;
        self.updated_at = now;
        self.finished_at = Some(now);
        self.error = Some(JobFailure {
            error: failure::CANCELLED.into(),
            message: "the job was cancelled".into(),
        });
        true
    }

    /// Why a failed job failed: its recorded failure, or a general one when it recorded none.
    pub fn failure(&self) -> JobFailure {
        self.error.clone().unwrap_or_else(|| JobFailure {
            error: failure::JOB_FAILED.into(),
            message: "the job failed".into(),
        })
    }

    /// The event that announces this record's current state.
    pub fn to_event(&self) -> JobEvent {
        JobEvent {
            job_id: self.job_id,
            status: self.status,
            progress: self.progress,
            attempt: self.attempts,
            at: self.updated_at,
            error: self.error.clone(),
            message: None,
        }
    }
}

/// A change in a job's state, published on `tts.events.<job_id>` and sent to WebSocket clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobEvent {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub job_id: JobId,
    pub status: JobStatus,
    pub progress: f32,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
    /// Human-readable detail, such as "sentence 2 of 5".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Answer of `POST /api/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobAccepted {
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub job_id: JobId,
    pub status: JobStatus,
    pub status_url: String,
    pub audio_url: String,
    pub ws_url: String,
}

/// The body of every 4xx and 5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<uuid::Uuid>))]
    pub job_id: Option<JobId>,
    /// Seconds to wait before trying again (rate limits, backpressure), as in `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VoiceStatus {
    Enrolling,
    Ready,
    Failed,
}

/// A voice, as the origin document's VoiceInfo plus its language and status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VoiceInfo {
    pub voice_id: String,
    pub name: String,
    pub engine: String,
    pub created_at: DateTime<Utc>,
    pub language: String,
    pub status: VoiceStatus,
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// Languages the voice speaks besides `language` (its default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_languages: Vec<String>,
    /// The speeds the voice can be spoken at. Absent in records written before engines said,
    /// and for cloned voices, which take their engine's range as its workers announce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_range: Option<SpeedRange>,
    /// The language the voice was made to speak, where it is known: a stock voice says so even
    /// when its native language is not among those it is offered in (no front end here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_language: Option<String>,
}

impl VoiceInfo {
    /// Whether the voice can speak `language` (compared on the base language).
    pub fn speaks(&self, language: &str) -> bool {
        same_language(&self.language, language)
            || self
                .other_languages
                .iter()
                .any(|l| same_language(l, language))
    }
}

/// How close a cloned voice came to its reference, by speaker-embedding cosine similarity on a
/// sentence the enrollment search did not use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneSimilarity {
    pub cloned: f32,
    pub best_stock: f32,
    pub best_stock_voice: String,
    /// Whether the clone came out closer than every stock voice; when not, it speaks as the
    /// best stock voice does. Absent in voices enrolled before engines said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beats_best_stock: Option<bool>,
    /// The stock voices the clone's style is made of, heaviest first, for engines that blend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blend: Vec<BlendPart>,
}

/// One stock voice of a cloned voice's blend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlendPart {
    pub voice: String,
    pub weight: f32,
}

/// A cloned voice as the voice store keeps it: what clients see, plus what engines need to speak
/// with it (computed once at enrollment, never per job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceRecord {
    #[serde(flatten)]
    pub info: VoiceInfo,
    /// Transcript of the reference clip, for engines that need one.
    #[serde(default)]
    pub prompt_text: Option<String>,
    /// Object key of the trimmed reference clip.
    #[serde(default)]
    pub reference_key: Option<String>,
    /// The enrollment job.
    #[serde(default)]
    pub job_id: Option<JobId>,
    /// Speaker embedding of the reference (unit length).
    #[serde(default)]
    pub embedding: Option<Vec<f32>>,
    #[serde(default)]
    pub similarity: Option<CloneSimilarity>,
    /// Seconds of speech the voice activity detector found in the reference.
    #[serde(default)]
    pub speech_seconds: Option<f32>,
    /// The conditioning an engine computed once at enrollment (Kokoro's base voice and style
    /// offset, an upstream server's speaker latents, a tone-colour embedding), in the engine's own
    /// shape: only the engine reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_data: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<JobFailure>,
    /// The tenant the voice belongs to; `None` when authentication is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl VoiceRecord {
    /// A voice whose enrollment has just been queued.
    pub fn enrolling(info: VoiceInfo, prompt_text: Option<String>, job_id: JobId) -> Self {
        VoiceRecord {
            info,
            prompt_text,
            reference_key: None,
            job_id: Some(job_id),
            embedding: None,
            similarity: None,
            speech_seconds: None,
            engine_data: None,
            error: None,
            tenant: None,
        }
    }

    /// What clients are shown: everything but the engine's internals.
    pub fn view(&self) -> VoiceView {
        VoiceView {
            info: self.info.clone(),
            cloned: true,
            job_id: self.job_id,
            prompt_text: self.prompt_text.clone(),
            speech_seconds: self.speech_seconds,
            similarity: self.similarity.clone(),
            error: self.error.clone(),
        }
    }
}

/// A voice as `GET /api/voices` shows it: a stock voice of an engine or a cloned one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VoiceView {
    #[serde(flatten)]
    pub info: VoiceInfo,
    /// Whether the voice was cloned from an upload (and can be deleted).
    pub cloned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<uuid::Uuid>))]
    pub job_id: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speech_seconds: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity: Option<CloneSimilarity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobFailure>,
}

impl VoiceView {
    pub fn stock(info: VoiceInfo) -> Self {
        VoiceView {
            info,
            cloned: false,
            job_id: None,
            prompt_text: None,
            speech_seconds: None,
            similarity: None,
            error: None,
        }
    }
}

/// Answer of `POST /api/voices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VoiceAccepted {
    pub voice: VoiceView,
    #[cfg_attr(feature = "openapi", schema(value_type = uuid::Uuid))]
    pub job_id: JobId,
    pub status_url: String,
    pub ws_url: String,
}

/// The progress an enrollment job reports once its worker has checked and accepted the clip's
/// speech; `POST /api/voices` waits for it before answering.
pub const REFERENCE_ACCEPTED: f32 = 0.05;

/// Object keys of a cloned voice all start with this prefix, so deleting a voice deletes them.
pub fn voice_prefix(voice_id: &str) -> String {
    format!("voices/{voice_id}")
}

/// Object key of a voice's upload, as the client sent it.
pub fn upload_key(voice_id: &str) -> String {
    format!("{}/upload", voice_prefix(voice_id))
}

/// Object key of a voice's trimmed 16 kHz reference clip.
pub fn reference_key(voice_id: &str) -> String {
    format!("{}/reference.wav", voice_prefix(voice_id))
}

/// Object key of a cloned voice's record, kept beside its reference so that a voice store that
/// loses its data (Redis without persistence) can be rebuilt from storage.
pub fn voice_record_key(voice_id: &str) -> String {
    format!("{}/record.json", voice_prefix(voice_id))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Taking jobs, with free capacity.
    Online,
    /// Taking jobs, every slot in use.
    Busy,
    /// Finishing its in-flight jobs before it exits; takes no new ones.
    Draining,
    /// Stopped cleanly; sent once as the last heartbeat.
    Offline,
    /// Running, but none of the servers its engine depends on can be reached: takes no jobs
    /// until one answers again.
    Degraded,
}

/// A worker's heartbeat, published on `tts.heartbeat.<engine>.<node_id>`: the origin document's
/// NodeInfo plus what the gateway needs to route requests (the voices it serves).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub engine: String,
    pub host: String,
    pub port: u16,
    pub status: WorkerStatus,
    pub current_load: u32,
    pub max_concurrent: u32,
    pub voices: Vec<VoiceInfo>,
    /// Whether this worker's engine can enrol cloned voices.
    #[serde(default)]
    pub clones: bool,
    /// The languages the engine speaks (cloned voices may use any of them).
    #[serde(default)]
    pub languages: Vec<String>,
    /// The speeds the engine can honour (cloned voices take this range); the whole API range
    /// from a worker that does not say.
    #[serde(default)]
    pub speed_range: SpeedRange,
    pub started_at: DateTime<Utc>,
    pub sent_at: DateTime<Utc>,
    /// Seconds until this heartbeat is replaced; the gateway derives liveness from it.
    pub heartbeat_interval_secs: u64,
}

/// A worker as `GET /api/nodes` and the `/ws` fleet stream show it: the origin document's
/// NodeInfo plus when its last heartbeat arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    pub node_id: String,
    pub engine: String,
    pub host: String,
    pub port: u16,
    pub status: WorkerStatus,
    pub current_load: u32,
    pub max_concurrent: u32,
    pub last_seen: DateTime<Utc>,
}

/// The prefix of every job's audio object, which the retention sweep lists.
pub const AUDIO_PREFIX: &str = "audio";

/// Object key of a job's audio. Fixed per job so that a redelivered job overwrites, never
/// duplicates, its output.
pub fn audio_key(job_id: &JobId) -> String {
    format!("{AUDIO_PREFIX}/{job_id}.wav")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A synthesis job of one sentence.
    fn message() -> JobMessage {
        JobMessage {
            job_id: Uuid::nil(),
            engine: "piper".into(),
            created_at: Utc::now(),
            tenant: None,
            spec: JobSpec::Synthesize {
                text: "Hello.".into(),
                voice_id: "en_US-joe-medium".into(),
                language: "en".into(),
                speed: 1.0,
                streamed: false,
            },
        }
    }

    fn record() -> JobRecord {
        JobRecord::queued(&message())
    }

    fn audio() -> JobAudio {
        JobAudio {
            key: "audio/x.wav".into(),
            duration_seconds: 1.5,
            sample_rate: 22050,
        }
    }

    /// A change to a record, by its method's name.
    type Change = (&'static str, fn(&mut JobRecord) -> bool);

    /// Every method that changes a record, applied to a copy of it; true when it reported a change.
    fn every_change(record: &JobRecord) -> Vec<(&'static str, bool, JobRecord)> {
        let calls: [Change; 5] = [
            ("start", |r| r.start(3, "other-node")),
            ("progress", |r| r.progress(0.5)),
            ("succeed", |r| r.succeed(Some(audio()))),
            ("requeue", |r| r.requeue()),
            ("fail", |r| r.fail(failure::ENGINE_CRASHED, "late")),
        ];
        calls
            .into_iter()
            .map(|(name, call)| {
                let mut copy = record.clone();
                let changed = call(&mut copy);
                (name, changed, copy)
            })
            .collect()
    }

    #[test]
    fn a_job_runs_through_its_states() {
        let mut r = record();
        assert!(r.start(1, "node-a"));
        assert_eq!(r.status, JobStatus::Running);
        assert_eq!((r.attempts, r.worker.as_deref()), (1, Some("node-a")));
        let first_start = r.started_at.expect("started");
        assert!(r.progress(0.4));
        assert_eq!(r.progress, 0.4);
        assert!(r.requeue());
        assert_eq!(r.status, JobStatus::Queued);
        assert!(r.start(2, "node-b"));
        assert_eq!(r.progress, 0.0, "a new attempt starts over");
        assert_eq!(r.started_at, Some(first_start), "the first start is kept");
        assert!(r.succeed(Some(audio())));
        assert_eq!(r.status, JobStatus::Succeeded);
        assert_eq!(r.progress, 1.0);
        assert!(r.finished_at.is_some());
        assert_eq!(r.audio_key.as_deref(), Some("audio/x.wav"));
        assert_eq!(
            (r.duration_seconds, r.sample_rate),
            (Some(1.5), Some(22050))
        );
    }

    #[test]
    fn a_terminal_record_stays_terminal_whatever_is_called() {
        let mut succeeded = record();
        assert!(succeeded.succeed(None));
        let mut failed = record();
        assert!(failed.fail(failure::INVALID_JOB, "first"));
        for terminal in [succeeded, failed] {
            for (name, changed, after) in every_change(&terminal) {
                assert!(
                    !changed,
                    "{name} reported a change to a {:?} record",
                    terminal.status
                );
                assert_eq!(
                    after, terminal,
                    "{name} changed a {:?} record",
                    terminal.status
                );
            }
        }
    }

    #[test]
    fn every_change_applies_to_a_live_record() {
        for live in [record(), {
            let mut r = record();
            assert!(r.start(1, "node-a"));
            r
        }] {
            for (name, changed, _) in every_change(&live) {
                assert!(changed, "{name} refused a {:?} record", live.status);
            }
        }
    }

    #[test]
    fn a_failure_keeps_its_code_on_the_wire() {
        let mut r = record();
        assert!(r.fail(failure::MAX_DELIVERIES_EXCEEDED, "used up"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["error"]["error"], "max_deliveries_exceeded");
        assert_eq!(json["error"]["message"], "used up");
    }

    #[test]
    fn job_message_round_trips_with_kind_tag() {
        let message = message();
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["kind"], "synthesize");
        assert_eq!(json["text"], "Hello.");
        let back: JobMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, message);
    }

    #[test]
    fn synthesize_request_rejects_unknown_fields() {
        let err =
            serde_json::from_str::<SynthesizeRequest>(r#"{"text":"a","voice_id":"v","sped":2.0}"#)
                .unwrap_err();
        assert!(err.to_string().contains("sped"));
    }

    #[test]
    fn languages_match_on_their_base() {
        assert!(same_language("en", "en-US"));
        assert!(same_language("en_US", "EN"));
        assert!(!same_language("en", "zh"));
    }

    #[test]
    fn heartbeats_without_speed_ranges_still_parse() {
        let voice = json!({"voice_id": "v", "name": "v", "engine": "piper",
            "created_at": "2025-01-01T00:00:00Z", "language": "en", "status": "ready"});
        let node = json!({"node_id": "n", "engine": "piper", "host": "h", "port": 1,
            "status": "degraded", "current_load": 0, "max_concurrent": 1, "voices": [voice],
            "started_at": "2025-01-01T00:00:00Z", "sent_at": "2025-01-01T00:00:00Z",
            "heartbeat_interval_secs": 10});
        let node: NodeInfo = serde_json::from_value(node).unwrap();
        assert_eq!(node.status, WorkerStatus::Degraded);
        assert_eq!(node.speed_range, SpeedRange::default());
        assert_eq!(node.voices[0].speed_range, None);
        assert!(SpeedRange::only(1.0).contains(1.0));
        assert!(!SpeedRange::only(1.0).contains(1.5));
        let none = SpeedRange::only(1.0).intersect(&SpeedRange::only(2.0));
        assert!(!none.contains(1.0) && !none.contains(2.0));
    }

    #[test]
    fn records_from_before_formats_still_read() {
        let mut json = serde_json::to_value(record()).unwrap();
        assert!(
            json.get("format").is_none(),
            "an unset format is not written"
        );
        json.as_object_mut().unwrap().remove("format");
        assert_eq!(
            serde_json::from_value::<JobRecord>(json).unwrap().format,
            None
        );
        let mut with = record();
        with.format = Some(AudioFormat::Opus);
        let json = serde_json::to_value(&with).unwrap();
        assert_eq!(json["format"], "opus");
        assert_eq!(
            serde_json::from_value::<JobRecord>(json).unwrap().format,
            Some(AudioFormat::Opus)
        );
        // The request takes any string, so that the gateway can name the formats on offer.
        let request: SynthesizeRequest =
            serde_json::from_str(r#"{"text":"a","voice_id":"v","format":"ogg"}"#).unwrap();
        assert_eq!(request.format.as_deref(), Some("ogg"));
    }

    #[test]
    fn audio_key_is_stable_per_job() {
        let id = Uuid::nil();
        assert_eq!(audio_key(&id), audio_key(&id));
        assert!(audio_key(&id).ends_with(".wav"));
    }
}
