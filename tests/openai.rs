//! OpenAI's speech API, driven by OpenAI's own Python client, unmodified, from the registry
//! (`scripts/test` installs it into `.cache/openai-venv`). Every file the client writes is decoded
//! by ffmpeg, an independent decoder, and checked as speech of the right length and rate.

use std::path::{Path, PathBuf};
use std::process::Command;

use tts_tests::ffmpeg::Decoded;

use serde_json::{Value, json};
use tts_config::ApiKeySettings;
use tts_gateway::auth::hash_key;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, TestApp, spawn_app, spawn_engines_with};

const TEXT: &str = "The quick brown fox jumps over the lazy dog near the quiet river bank.";
const KEY: &str = "openai-client-key-123456";

/// The Python interpreter of the venv that holds the `openai` package.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("TTS_TEST_OPENAI_PYTHON") {
        return path.into();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/openai-venv/bin/python");
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs OpenAI's Python client there",
        path.display()
    );
    path
}

/// Runs `script` with OpenAI's client pointed at the app, in a blocking thread, and returns
/// what it prints as JSON.
async fn run_client(app: &TestApp, key: &str, out: &Path, script: &str) -> Value {
    let program = format!(
        "import json, sys, openai\n\
         client = openai.OpenAI(base_url=sys.argv[1] + '/v1', api_key=sys.argv[2], max_retries=0, timeout=120)\n\
         out = sys.argv[3]\n\
         def refusal(call):\n    \
             try:\n        call()\n        return None\n    \
             except openai.APIStatusError as e:\n        \
                 return {{'class': type(e).__name__, 'status': e.status_code, 'body': e.body}}\n\
         {script}"
    );
    let (python, base, key, out) = (
        python(),
        app.base_url.clone(),
        key.to_string(),
        out.display().to_string(),
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", &program, &base, &key, &out])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).expect("the script's JSON")
}

/// What ffmpeg decodes from a file the client wrote.
fn decode(path: &Path, raw_pcm: bool) -> Decoded {
    tts_tests::ffmpeg::decode(&std::fs::read(path).expect("the client wrote it"), raw_pcm)
}

/// Speech of `TEXT`: audible, mono, and between 0.15 and 1.2 s a word.
fn assert_speech(decoded: &Decoded, what: &str) {
    let words = TEXT.split_whitespace().count() as f32;
    assert_eq!(decoded.channels, 1, "{what}: {decoded:?}");
    assert!(
        (0.15 * words..=1.2 * words + 0.5).contains(&decoded.seconds()),
        "{what}: {decoded:?}"
    );
    assert!(decoded.rms > 0.01, "{what} is (nearly) silent: {decoded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openais_client_speaks_every_format_and_streams_to_a_file() {
    let app = spawn_app(Deployment::Standalone).await;
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "text = {TEXT:?}\n\
         for fmt in ['mp3', 'opus', 'flac', 'wav', 'pcm']:\n    \
             client.audio.speech.create(model='tts-1', voice='alloy', input=text, response_format=fmt).write_to_file(f'{{out}}/speech.{{fmt}}')\n\
         with client.audio.speech.with_streaming_response.create(model='tts-1', voice='alloy', input=text) as r:\n    \
             r.stream_to_file(f'{{out}}/streamed.mp3')\n\
         models = [m.id for m in client.models.list()]\n\
         aac = refusal(lambda: client.audio.speech.create(model='tts-1', voice='alloy', input=text, response_format='aac'))\n\
         print(json.dumps({{'models': models, 'aac': aac}}))"
    );
    let result = run_client(&app, "unused", out.path(), &script).await;

    for (file, rate) in [
        ("speech.mp3", 22050),
        ("speech.opus", 48000),
        ("speech.flac", 22050),
        ("speech.wav", 22050),
        ("speech.pcm", 24000),
        ("streamed.mp3", 22050),
    ] {
        let decoded = decode(&out.path().join(file), file.ends_with(".pcm"));
        assert_eq!(decoded.rate, rate, "{file}: {decoded:?}");
        assert_speech(&decoded, file);
    }
    let models = result["models"].as_array().unwrap();
    for model in ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "piper"] {
        assert!(models.contains(&json!(model)), "{result}");
    }
    // AAC has no encoder here: refused, naming the formats on offer.
    let aac = &result["aac"];
    assert_eq!(aac["status"], 422, "{aac}");
    assert_eq!(aac["body"]["code"], "unsupported_format", "{aac}");
    assert!(
        aac["body"]["message"].as_str().unwrap().contains("mp3"),
        "{aac}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_openais_client_as_its_own_errors_and_queue_nothing() {
    let app = spawn_app(Deployment::Distributed).await;
    let out = tempfile::tempdir().unwrap();
    let script = "speech = client.audio.speech\n\
         print(json.dumps({\n    \
             'model': refusal(lambda: speech.create(model='tts-9', voice='alloy', input='Hi.')),\n    \
             'voice': refusal(lambda: speech.create(model='tts-1', voice='nobody', input='Hi.')),\n    \
             'empty': refusal(lambda: speech.create(model='tts-1', voice='alloy', input='   ')),\n    \
             'long': refusal(lambda: speech.create(model='tts-1', voice='alloy', input='word ' * 2000)),\n    \
             'speed': refusal(lambda: speech.create(model='tts-1', voice='alloy', input='Hi.', speed=9)),\n    \
             'format': refusal(lambda: speech.create(model='tts-1', voice='alloy', input='Hi.', response_format='ogg')),\n    \
             'other_engine': refusal(lambda: speech.create(model='kokoro', voice='en_US-joe-medium', input='Hi.')),\n\
         }))";
    let result = run_client(&app, "unused", out.path(), script).await;
    let expect = [
        ("model", 404, "NotFoundError", "model_not_found", "model"),
        (
            "voice",
            422,
            "UnprocessableEntityError",
            "unknown_voice",
            "voice",
        ),
        (
            "empty",
            422,
            "UnprocessableEntityError",
            "invalid_text",
            "input",
        ),
        (
            "long",
            422,
            "UnprocessableEntityError",
            "text_too_long",
            "input",
        ),
        (
            "speed",
            422,
            "UnprocessableEntityError",
            "invalid_speed",
            "speed",
        ),
        (
            "format",
            400,
            "BadRequestError",
            "unsupported_format",
            "response_format",
        ),
        (
            "other_engine",
            400,
            "BadRequestError",
            "voice_not_of_model",
            "voice",
        ),
    ];
    for (case, status, class, code, param) in expect {
        let refusal = &result[case];
        assert_eq!(refusal["status"], status, "{case}: {refusal}");
        assert_eq!(refusal["class"], class, "{case}: {refusal}");
        assert_eq!(refusal["body"]["code"], code, "{case}: {refusal}");
        assert_eq!(refusal["body"]["param"], param, "{case}: {refusal}");
        assert_eq!(
            refusal["body"]["type"], "invalid_request_error",
            "{case}: {refusal}"
        );
        assert!(refusal["body"]["message"].is_string(), "{case}: {refusal}");
    }
    // A malformed body is refused in the same shape.
    let response = app
        .client
        .post(app.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .body("{\"model\": \"tts-1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    app.assert_no_job_made().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_limits_and_tenancy_hold_on_the_openai_routes() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "on".into();
        s.auth.keys = vec![ApiKeySettings {
            name: "client".into(),
            tenant: "acme".into(),
            sha256: hash_key(KEY),
            admin: false,
            rpm: None,
        }];
    })
    .await;
    let _worker = tts_tests::spawn_worker_process(&app.settings, "openai-worker");
    // The worker's voice is listed to callers with a key once it heartbeats.
    tts_tests::wait_until_listed(
        &app.client,
        &app.base_url,
        Some(KEY),
        VOICE,
        std::time::Duration::from_secs(60),
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "client.audio.speech.create(model='tts-1', voice='alloy', input={TEXT:?}, response_format='wav').write_to_file(out + '/speech.wav')\n\
         voices = client.get('/audio/voices', cast_to=object)\n\
         print(json.dumps({{'voices': voices}}))"
    );
    let result = run_client(&app, KEY, out.path(), &script).await;
    assert_speech(&decode(&out.path().join("speech.wav"), false), "speech.wav");
    assert!(
        result["voices"]["voices"]
            .as_array()
            .unwrap()
            .contains(&json!("en_US-joe-medium")),
        "{result}"
    );
    assert_eq!(
        result["voices"]["aliases"]["piper"]["alloy"], "en_US-joe-medium",
        "{result}"
    );

    let script = "print(json.dumps({'refused': refusal(lambda: client.models.list())}))";
    let result = run_client(&app, "not-a-key", out.path(), script).await;
    let refused = &result["refused"];
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["class"], "AuthenticationError", "{refused}");
    assert_eq!(refused["body"]["type"], "authentication_error", "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_the_audio_in_base64() {
    let app = spawn_app(Deployment::Standalone).await;
    let response = app
        .client
        .post(app.url("/v1/audio/speech"))
        .json(&json!({
            "model": "tts-1", "voice": "alloy", "input": TEXT,
            "response_format": "wav", "stream_format": "sse",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert!(response.headers().contains_key("x-job-id"));
    let audio = sse_audio(&response.text().await.unwrap());
    let path = tempfile::tempdir().unwrap();
    let file = path.path().join("speech.wav");
    std::fs::write(&file, audio).unwrap();
    assert_speech(&decode(&file, false), "sse audio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_header_asks_the_own_api_to_stream() {
    let app = spawn_app(Deployment::Standalone).await;
    let post = |accept: &'static str, body: Value| {
        app.client
            .post(app.url("/api/synthesize"))
            .header("accept", accept)
            .json(&body)
            .send()
    };

    // Server-sent events in the body's format, as OpenAI's stream_format "sse".
    let response = post(
        "text/event-stream",
        json!({"text": TEXT, "voice_id": VOICE, "format": "mp3"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
    let mp3 = sse_audio(&response.text().await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("speech.mp3");
    std::fs::write(&file, mp3).unwrap();
    assert_speech(&decode(&file, false), "mp3 in server-sent events");
    let job = app.job(&job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // Raw PCM when the body names no format: OpenAI's 24 kHz, streamed.
    let response = post("audio/pcm", json!({"text": TEXT, "voice_id": VOICE}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/pcm");
    assert!(
        !response.headers().contains_key("content-length"),
        "a streamed answer has no length: {:?}",
        response.headers()
    );
    let pcm = response.bytes().await.unwrap();
    let seconds = pcm.len() as f32 / 2.0 / 24_000.0;
    assert!(seconds > 1.0, "{seconds} s of pcm");

    // An audio type that is not raw PCM is an ordinary answer in the body's format.
    let response = post("audio/wav", json!({"text": TEXT, "voice_id": VOICE}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    assert!(response.headers().contains_key("content-length"));
}

/// OpenAI's voice names stand for Kokoro's native English voices, and a text in another
/// language is read by that language's own voice (`openai.language_voices`), not with an accent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_voice_names_read_each_language_with_a_native_voice() {
    let app = spawn_engines_with(Deployment::Standalone, &["kokoro"], |_| {}).await;
    app.wait_for_voice("zf_xiaobei", 1).await;
    let speak = |input: &'static str| {
        app.client
            .post(app.url("/v1/audio/speech"))
            .json(
                &json!({"model": "tts-1-hd", "voice": "alloy", "input": input,
                          "response_format": "wav"}),
            )
            .send()
    };
    for (input, voice) in [("Hello there.", "af_alloy"), ("你好。", "zf_xiaobei")] {
        let response = speak(input).await.unwrap();
        assert_eq!(response.status(), 200, "{input}");
        let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
        response.bytes().await.unwrap();
        let job = app
            .wait_for_job(&job_id, std::time::Duration::from_secs(120))
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["voice_id"], voice, "{input}: {job}");
    }
}

/// The audio a server-sent events body carries: its `speech.audio.delta` events' base64 audio
/// laid end to end, checked to end with `speech.audio.done`.
fn sse_audio(body: &str) -> Vec<u8> {
    use base64::Engine as _;
    let events: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let (done, deltas) = events.split_last().expect("events");
    assert_eq!(done["type"], "speech.audio.done", "{done}");
    let mut audio = Vec::new();
    for delta in deltas {
        assert_eq!(delta["type"], "speech.audio.delta", "{delta}");
        audio.extend(
            base64::engine::general_purpose::STANDARD
                .decode(delta["audio"].as_str().unwrap())
                .unwrap(),
        );
    }
    audio
}

/// The samples of a WAV whose header may give no sizes (a streamed one): everything after the
/// `data` chunk's header, as 16-bit little-endian.
fn wav_samples(bytes: &[u8]) -> Vec<i16> {
    let data = bytes
        .windows(4)
        .position(|w| w == b"data")
        .expect("a data chunk");
    bytes[data + 8..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The samples of a job's stored audio.
async fn stored_samples(app: &TestApp, job_id: &str) -> Vec<i16> {
    let wav = app
        .client
        .get(app.url(&format!("/api/jobs/{job_id}/audio")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    wav_samples(&wav)
}

async fn streamed_audio_is_the_stored_audio(app: TestApp) {
    let text = "The first sentence is short. The second one takes a little longer to say. \
                And the third closes the paragraph.";
    let response = app
        .synthesize(&json!({"text": text, "voice_id": VOICE, "stream": true}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
    let streamed = wav_samples(&response.bytes().await.unwrap());
    let job = app
        .wait_for_job(&job_id, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let stored = stored_samples(&app, &job_id).await;
    assert!(!stored.is_empty());
    assert_eq!(streamed.len(), stored.len());
    assert!(
        streamed == stored,
        "the streamed samples differ from the stored ones"
    );
}

async fn a_client_that_leaves_mid_stream_loses_no_job(app: TestApp) {
    let text = "One sentence after another, the paragraph goes on. ".repeat(6);
    let response = app
        .synthesize(&json!({"text": text, "voice_id": VOICE, "stream": true, "format": "mp3"}))
        .await;
    assert_eq!(response.status(), 200);
    let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
    // The client reads the headers and goes away.
    drop(response);
    let job = app
        .wait_for_job(&job_id, std::time::Duration::from_secs(120))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let audio = app
        .client
        .get(app.url(&format!("/api/jobs/{job_id}/audio")))
        .send()
        .await
        .unwrap();
    assert_eq!(audio.status(), 200);
    assert_eq!(audio.headers()["content-type"], "audio/mpeg");
}

async fn a_websocket_carries_the_audio_when_asked(app: TestApp) {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let text = "The socket carries the audio. Sentence by sentence, as it is made.";
    let response = app
        .client
        .post(app.url("/api/jobs"))
        .json(&json!({"text": text, "voice_id": VOICE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let url = format!(
        "{}/ws/jobs/{job_id}?audio=pcm",
        app.base_url.replacen("http", "ws", 1)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut header, mut samples, mut terminal) = (None, Vec::new(), None);
    let collect = async {
        while let Some(message) = socket.next().await {
            match message.unwrap() {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "audio" {
                        header = Some(value);
                    } else if matches!(value["status"].as_str(), Some("succeeded" | "failed")) {
                        terminal = Some(value);
                    }
                }
                Message::Binary(bytes) => {
                    assert!(header.is_some(), "audio before its header");
                    samples.extend(
                        bytes
                            .chunks_exact(2)
                            .map(|b| i16::from_le_bytes([b[0], b[1]])),
                    );
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), collect)
        .await
        .expect("the socket closes after the job");
    assert_eq!(terminal.expect("the terminal event")["status"], "succeeded");
    let header = header.expect("the audio header");
    assert_eq!(header["sample_rate"], 22050, "{header}");
    assert_eq!(header["encoding"], "pcm_s16le", "{header}");
    let stored = stored_samples(&app, &job_id).await;
    assert_eq!(samples.len(), stored.len());
    assert!(
        samples == stored,
        "the socket's samples differ from the stored ones"
    );
}

async fn the_first_audio_arrives_while_the_job_still_runs(app: TestApp) {
    let text = "Each of these sentences is rendered on its own, one after another. ".repeat(20);
    let mut response = app
        .synthesize(&json!({"text": text, "voice_id": VOICE, "stream": true, "format": "pcm"}))
        .await;
    assert_eq!(response.status(), 200);
    let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
    let first = response.chunk().await.unwrap().expect("some audio");
    assert!(!first.is_empty());
    // Twenty sentences take the engine far longer than one: the job is not done yet.
    let job = app.job(&job_id).await;
    assert_eq!(job["status"], "running", "{job}");
    while response.chunk().await.unwrap().is_some() {}
    let job = app
        .wait_for_job(&job_id, std::time::Duration::from_secs(120))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

tts_tests::in_both_deployments!(
    the_first_audio_arrives_while_the_job_still_runs,
    streamed_audio_is_the_stored_audio,
    a_client_that_leaves_mid_stream_loses_no_job,
    a_websocket_carries_the_audio_when_asked,
);
