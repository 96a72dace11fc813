//! The JSON bodies of `POST /api/jobs` and `POST /api/synthesize` (`SynthesizeRequest`) and of
//! `POST /v1/audio/speech` (OpenAI's `SpeechRequest`), read from arbitrary bytes as the
//! handlers read them, then checked by the gateway's own `submit::validate` and
//! `openai::check` against a fleet of one live worker. Deserialising must never panic; a body
//! that deserialises must survive a JSON round trip; checking must answer a client error (4xx),
//! never a 500 or a 503, or accept a job whose text, speed and format keep the API's rules.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::response::IntoResponse;
use chrono::Utc;
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tts_contracts::{
    JobSpec, NodeInfo, SPEED_RANGE, SpeedRange, SynthesizeRequest, VoiceInfo, VoiceStatus,
    WorkerStatus, subjects,
};
use tts_gateway::auth::Caller;
use tts_gateway::routes::openai::{self, SpeechRequest};
use tts_gateway::{AppError, AppState, GatewayOptions, submit};
use tts_infra::{Adapters, AudioStore, LocalBus, LocalQueue, MemoryJobStore, MemoryVoiceStore};

/// The one live worker's engine and stock voices: one English, one Mandarin.
const ENGINE: &str = "piper";
const VOICES: [(&str, &str); 2] = [("en_US-joe-medium", "en"), ("zh-voice", "zh")];
const MAX_TEXT_CHARS: usize = 64;

struct Fixture {
    runtime: Runtime,
    state: AppState,
    caller: Caller,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime");
        let state = runtime.block_on(start());
        Fixture {
            runtime,
            state,
            caller: Caller {
                tenant: None,
                admin: false,
            },
        }
    })
}

/// A gateway on in-process adapters whose registry has heard one worker.
async fn start() -> AppState {
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let bus = Arc::new(LocalBus::default());
    let deps = Adapters {
        store: Arc::new(MemoryJobStore::new(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )),
        voices: Arc::new(MemoryVoiceStore::default()),
        bus: bus.clone(),
        audio: AudioStore::in_memory(),
        queue: Arc::new(LocalQueue::new(3, tasks.clone(), stop.clone())),
        rate_limiter: None,
        jetstream: None,
    };
    let openai = tts_gateway::routes::OpenAiOptions {
        models: [("tts-1".to_string(), ENGINE.to_string())].into(),
        voices: [(
            ENGINE.to_string(),
            [("alloy".to_string(), VOICES[0].0.to_string())].into(),
        )]
        .into(),
        language_voices: [(
            ENGINE.to_string(),
            [("zh".to_string(), VOICES[1].0.to_string())].into(),
        )]
        .into(),
    };
    let options = GatewayOptions {
        public_url: "http://localhost".into(),
        sync_timeout: Duration::from_secs(1),
        max_text_chars: MAX_TEXT_CHARS,
        max_json_bytes: 1 << 16,
        // The worker's one heartbeat keeps it live for the whole run.
        dead_threshold: Duration::from_secs(365 * 24 * 3600),
        max_upload_bytes: 1 << 16,
        clone_engine: ENGINE.into(),
        voice_check_wait: Duration::from_secs(1),
        engines: vec![ENGINE.into(), "kokoro".into()],
        limits: tts_gateway::limits::LimitOptions {
            global_rpm: u32::MAX,
            ip_rpm: u32::MAX,
            unauthenticated_rpm: u32::MAX,
            burst_percent: 100,
            concurrent: 1024,
            max_websockets: 1,
            max_websockets_per_ip: 1,
            trusted_proxies: Vec::new(),
        },
        max_queue_depth: 1,
        request_timeout: Duration::from_secs(1),
        cors_origins: Vec::new(),
        openai,
        auth: tts_gateway::auth::AuthOptions {
            required: false,
            keys: Vec::new(),
        },
    };
    let state = AppState::start(deps, options, &tasks, stop)
        .await
        .unwrap_or_else(|e| panic!("the gateway starts: {e}"));
    let now = Utc::now();
    let node = NodeInfo {
        node_id: "fuzz-worker".into(),
        engine: ENGINE.into(),
        host: "localhost".into(),
        port: 1,
        status: WorkerStatus::Online,
        current_load: 0,
        max_concurrent: 1,
        voices: VOICES
            .iter()
            .map(|(id, language)| VoiceInfo {
                voice_id: id.to_string(),
                name: id.to_string(),
                engine: ENGINE.into(),
                created_at: now,
                language: language.to_string(),
                status: VoiceStatus::Ready,
                sample_rate: Some(22_050),
                other_languages: vec!["es".into()],
                speed_range: Some(SpeedRange { min: 0.5, max: 2.0 }),
                native_language: Some(language.to_string()),
            })
            .collect(),
        clones: false,
        languages: vec!["en".into(), "zh".into(), "es".into()],
        speed_range: SpeedRange { min: 0.5, max: 2.0 },
        started_at: now,
        sent_at: now,
        heartbeat_interval_secs: 5,
    };
    let payload = serde_json::to_vec(&node).expect("a heartbeat serialises");
    use tts_infra::Bus;
    for _ in 0..500 {
        if !state.registry.voices().is_empty() {
            return state;
        }
        bus.publish(
            subjects::heartbeat(ENGINE, &node.node_id),
            payload.clone().into(),
        )
        .await
        .expect("the local bus takes the heartbeat");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the registry never heard the worker");
}

/// A refusal must be the client's fault: the gateway's own dependencies are all up here.
fn refused(e: AppError) {
    let status = e.into_response().status();
    assert!(status.is_client_error(), "a request answered {status}");
}

/// What every accepted job must keep to.
fn accepted(validated: &submit::Validated) {
    let JobSpec::Synthesize {
        text,
        speed,
        voice_id,
        language,
        ..
    } = &validated.job.spec
    else {
        panic!("a synthesis request queued {:?}", validated.job.spec);
    };
    assert!(!text.trim().is_empty());
    assert_eq!(text.trim(), text);
    assert!(text.chars().count() <= MAX_TEXT_CHARS);
    assert!(speed.is_finite());
    assert!((SPEED_RANGE.0..=SPEED_RANGE.1).contains(speed));
    assert!(
        (0.5..=2.0).contains(speed),
        "speed {speed} is outside the voice's range"
    );
    assert!(VOICES.iter().any(|(id, _)| id == voice_id), "{voice_id}");
    assert!(!language.trim().is_empty());
    assert!(tts_audio::encode::is_offered(validated.format));
    assert_eq!(validated.job.engine, ENGINE);
}

fuzz_target!(|bytes: &[u8]| {
    let fixture = fixture();
    // The handlers read their bodies with serde_json, as these do.
    if let Ok(request) = serde_json::from_slice::<SynthesizeRequest>(bytes) {
        // A finite speed survives a round trip; JSON has no spelling for an infinite one.
        if request.speed.is_none_or(f32::is_finite) {
            let json = serde_json::to_vec(&request).expect("a request serialises");
            let again: SynthesizeRequest =
                serde_json::from_slice(&json).expect("a serialised request reads back");
            assert_eq!(again, request);
        }
        match fixture
            .runtime
            .block_on(submit::validate(&fixture.state, &fixture.caller, request))
        {
            Ok(validated) => accepted(&validated),
            Err(e) => refused(e),
        }
    }
    if let Ok(request) = serde_json::from_slice::<SpeechRequest>(bytes) {
        match fixture
            .runtime
            .block_on(openai::check(&fixture.state, &fixture.caller, request))
        {
            Ok((validated, _)) => accepted(&validated),
            Err(e) => refused(e),
        }
    }
});
