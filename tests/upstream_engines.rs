//! The engines that drive other servers, against servers that speak their exact HTTP contracts
//! (tests/support/upstream.rs): GPT-SoVITS api_v2 and the XTTS streaming server.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tts_tests::clips::{self, FIRST, SECOND, THIRD};
use tts_tests::upstream::{Answer, ClosedPort, FakeApiV2, FakeXtts, SovitsVersion};
use tts_tests::{Deployment, TestApp, spawn_engines_with};
use tts_worker::engine::Engine;
use tts_worker::engine::gpt_sovits::{GptSovitsEngine, GptSovitsOptions};

async fn make<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("clip made")
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// Uploads `clip` as a voice and waits for its enrollment; returns the voice id.
async fn enrol(app: &TestApp, clip: Vec<u8>, fields: &[(&str, &str)]) -> String {
    let response = app.upload_voice(clip, "ref.wav", fields).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job = app
        .wait_for_job(
            accepted["job_id"].as_str().unwrap(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    accepted["voice"]["voice_id"].as_str().unwrap().to_string()
}

async fn submit(app: &TestApp, body: Value) -> String {
    let response = app.submit(&body, None).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_string()
}

fn gpt_sovits_app(
    urls: Vec<String>,
    shared: &std::path::Path,
) -> impl FnOnce(&mut tts_config::Settings) {
    let shared = shared.display().to_string();
    move |s| {
        let engine = s.workers.get_mut("gpt_sovits").unwrap();
        engine.set("urls", urls).set("shared_dir", shared).set(
            "options",
            json!({"top_k": 7, "temperature": 0.6, "seed": 42}),
        );
        s.worker.max_concurrent = 4;
        s.worker.max_deliver = 2;
    }
}

/// A clip of two sentences of speech, with its transcript.
async fn spoken_reference() -> (String, Vec<u8>) {
    let transcript = format!("{FIRST} {SECOND}");
    let t = transcript.clone();
    (transcript, make(move || clips::spoken_wav(&t)).await)
}

/// Enrols `reference` for gpt_sovits with its transcript; returns the voice id.
async fn enrol_for_gpt_sovits(app: &TestApp, reference: Vec<u8>, transcript: &str) -> String {
    let fields = [
        ("name", "Joe"),
        ("language", "en"),
        ("engine", "gpt_sovits"),
        ("prompt_text", transcript),
    ];
    enrol(app, reference, &fields).await
}

/// Standalone with a gpt_sovits worker driving the servers at `urls`, and the directory it
/// shares clips through (kept alive by the caller).
async fn gpt_sovits_standalone(urls: Vec<String>) -> (TestApp, tempfile::TempDir) {
    let shared = tempfile::tempdir().unwrap();
    let app = spawn_engines_with(
        Deployment::Standalone,
        &["gpt_sovits"],
        gpt_sovits_app(urls, shared.path()),
    )
    .await;
    (app, shared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt_sovits_voices_speak_through_api_v2_one_request_per_server() {
    let (transcript, reference) = spoken_reference().await;
    let too_long = make(|| clips::spoken_wav(&format!("{FIRST} {SECOND} {THIRD} {FIRST}"))).await;
    let a = FakeApiV2::start(SovitsVersion::V2, Duration::from_millis(300)).await;
    let b = FakeApiV2::start(SovitsVersion::V2, Duration::from_millis(300)).await;
    let (app, shared) = gpt_sovits_standalone(vec![a.url(), b.url()]).await;

    // api_v2 needs the clip's transcript and at most 10 s of it: refused at upload.
    let en = [
        ("name", "Joe"),
        ("language", "en"),
        ("engine", "gpt_sovits"),
    ];
    let no_transcript = app.upload_voice(reference.clone(), "ref.wav", &en).await;
    assert_eq!(
        error_of(no_transcript).await,
        (422, "prompt_text_required".into())
    );
    let mut with_text = en.to_vec();
    with_text.push(("prompt_text", "a transcript"));
    let long = app.upload_voice(too_long, "ref.wav", &with_text).await;
    assert_eq!(error_of(long).await, (422, "reference_too_long".into()));

    let mut fields = en.to_vec();
    fields.push(("prompt_text", &transcript));
    let voice = enrol(&app, reference, &fields).await;

    // Six jobs at once on two single-request servers.
    let mut jobs = Vec::new();
    for i in 0..6 {
        let speed = if i % 2 == 0 { 1.0 } else { 1.5 };
        jobs.push(
            submit(
                &app,
                json!({"text": format!("Sentence number {i} for the server."), "voice_id": voice, "speed": speed}),
            )
            .await,
        );
    }
    jobs.push(
        submit(
            &app,
            json!({"text": "你好，欢迎使用。", "voice_id": voice, "language": "zh"}),
        )
        .await,
    );
    for job in &jobs {
        let record = app.wait_for_job(job, Duration::from_secs(60)).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["sample_rate"], 32_000, "{record}");
    }
    let audio = app.audio(&jobs[0]).await.bytes().await.unwrap();
    let wav = tts_tests::wav::summarise(&audio);
    assert_eq!(wav.sample_rate, 32_000);
    assert!(wav.duration_secs > 1.0, "{wav:?}");

    for server in [&a, &b] {
        assert_eq!(
            server.seen.max_in_flight.load(Ordering::SeqCst),
            1,
            "one request at a time"
        );
        assert!(!server.seen.requests().is_empty(), "both servers are used");
    }
    let requests: Vec<Value> = [a.seen.requests(), b.seen.requests()].concat();
    assert_eq!(requests.len(), jobs.len());
    for r in &requests {
        assert_eq!(r["prompt_text"], transcript.as_str(), "{r}");
        assert_eq!(r["prompt_lang"], "en", "{r}");
        assert_eq!(r["media_type"], "wav", "{r}");
        assert_eq!(r["streaming_mode"], false, "{r}");
        assert_eq!(r["text_split_method"], "cut5", "{r}");
        assert_eq!(r["top_k"], 7, "{r}");
        assert_eq!(r["seed"], 42, "{r}");
        assert_eq!(r["temperature"], 0.6, "{r}");
        assert!(
            r["ref_audio_path"]
                .as_str()
                .unwrap()
                .starts_with(&shared.path().display().to_string())
        );
    }
    assert!(requests.iter().any(|r| r["speed_factor"] == 1.5));
    assert!(
        requests
            .iter()
            .any(|r| r["text_lang"] == "zh" && r["text"] == "你好，欢迎使用。")
    );
    // Every clip written for a request was removed after it.
    assert_eq!(std::fs::read_dir(shared.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_v2_refusals_fail_the_job_at_once() {
    let (transcript, reference) = spoken_reference().await;
    // A server with a v1 model speaks no Korean: its 400 fails the job with its own message.
    let v1 = FakeApiV2::start(SovitsVersion::V1, Duration::ZERO).await;
    let (app, _shared) = gpt_sovits_standalone(vec![v1.url()]).await;
    let voice = enrol_for_gpt_sovits(&app, reference, &transcript).await;
    let job = submit(
        &app,
        json!({"text": "안녕하세요", "voice_id": voice, "language": "ko"}),
    )
    .await;
    let record = app.wait_for_job(&job, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["error"], "upstream_rejected", "{record}");
    let message = record["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("text_lang: ko is not supported in version v1"),
        "{message}"
    );
    assert_eq!(record["attempts"], 1, "a refusal is not retried: {record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_costs_no_job_an_attempt_while_another_is_up() {
    let (transcript, reference) = spoken_reference().await;
    let live = FakeApiV2::start(SovitsVersion::V2, Duration::from_millis(50)).await;
    let dead = ClosedPort::new();
    let (app, _shared) = gpt_sovits_standalone(vec![dead.url(), live.url()]).await;
    let voice = enrol_for_gpt_sovits(&app, reference, &transcript).await;
    // Ten jobs at once, four running at a time: the live server is busy most of the time, and
    // the dead one would look free.
    let mut jobs = Vec::new();
    for i in 0..10 {
        jobs.push(
            submit(
                &app,
                json!({"text": format!("Sentence number {i} for the live server."), "voice_id": voice}),
            )
            .await,
        );
    }
    for job in &jobs {
        let record = app.wait_for_job(job, Duration::from_secs(60)).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(
            record["attempts"], 1,
            "succeeded on the first attempt: {record}"
        );
    }
    assert_eq!(live.seen.requests().len(), jobs.len());
    assert_eq!(live.seen.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_of_unknown_length_is_read_and_audio_that_does_not_decode_fails_at_once() {
    let (transcript, reference) = spoken_reference().await;
    let server = FakeApiV2::start(SovitsVersion::V2, Duration::ZERO).await;
    let (app, _shared) = gpt_sovits_standalone(vec![server.url()]).await;
    let voice = enrol_for_gpt_sovits(&app, reference, &transcript).await;

    server.answer_with(Answer::UnknownLength);
    let text = "A header written before its length was known.";
    let job = submit(&app, json!({"text": text, "voice_id": voice})).await;
    let record = app.wait_for_job(&job, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["sample_rate"], 32_000, "{record}");
    let wav = tts_tests::wav::summarise(&app.audio(&job).await.bytes().await.unwrap());
    // Every sample the server sent, to the end of its answer.
    let frames = (text.chars().count() as f32 * 0.06 * 32_000.0) as usize;
    let sent = frames as f32 / 32_000.0;
    assert!(
        (wav.duration_secs - sent).abs() < 0.01,
        "{wav:?}, sent {sent} s"
    );

    server.answer_with(Answer::Garbage);
    let before = server.seen.requests().len();
    let job = submit(&app, json!({"text": "Anything.", "voice_id": voice})).await;
    let record = app.wait_for_job(&job, Duration::from_secs(60)).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["error"], "upstream_bad_audio", "{record}");
    assert_eq!(record["attempts"], 1, "not synthesised again: {record}");
    assert_eq!(server.seen.requests().len(), before + 1);
}

/// The gpt_sovits node of a deployment with one worker, as `GET /api/nodes` shows it.
async fn node(app: &TestApp) -> Value {
    let nodes: Value = app.get_json("/api/nodes").await;
    let nodes = nodes["nodes"].as_array().cloned().unwrap_or_default();
    assert!(nodes.len() <= 1, "{nodes:?}");
    nodes.into_iter().next().unwrap_or(Value::Null)
}

/// Polls `GET /api/nodes` until the worker shows `status`.
async fn wait_for_status(app: &TestApp, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node = node(app).await;
        if node["status"] == status {
            return node;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never became {status}: {node}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the `/ws` fleet stream until a snapshot shows the worker with `status`.
async fn ws_shows(app: &TestApp, status: &str) {
    use futures::StreamExt;
    let url = format!("{}/ws", app.base_url.replacen("http", "ws", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let seen = async {
        while let Some(message) = socket.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(text) = message.unwrap() {
                let fleet: Value = serde_json::from_str(&text).unwrap();
                if fleet["nodes"][0]["status"] == status {
                    return;
                }
            }
        }
        panic!("the fleet stream closed");
    };
    tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .unwrap_or_else(|_| panic!("/ws never showed the worker {status}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_servers_are_all_down_is_degraded_until_one_answers() {
    let (transcript, reference) = spoken_reference().await;
    // Down when the service starts.
    let server = FakeApiV2::down(SovitsVersion::V2, Duration::ZERO);
    let shared = tempfile::tempdir().unwrap();
    let configure = gpt_sovits_app(vec![server.url()], shared.path());
    // Standalone with no engine named starts every configured one that loads: here only
    // gpt_sovits, whose server does not answer yet.
    let app = spawn_engines_with(Deployment::Standalone, &[], move |s| {
        s.workers.retain(|name, _| name == "gpt_sovits");
        configure(s);
    })
    .await;
    wait_for_status(&app, "degraded").await;
    server.accept_connections();
    wait_for_status(&app, "online").await;

    let voice = enrol_for_gpt_sovits(&app, reference, &transcript).await;

    // The server goes down: the worker says so and takes no jobs.
    server.refuse_connections().await;
    ws_shows(&app, "degraded").await;
    let degraded = wait_for_status(&app, "degraded").await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(
            submit(
                &app,
                json!({"text": format!("Waiting sentence {i}."), "voice_id": voice}),
            )
            .await,
        );
    }
    // Nobody would answer a request that waits for its result.
    let response = app
        .synthesize(&json!({"text": "Now, please.", "voice_id": voice}))
        .await;
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_of(response).await, (503, "engine_unavailable".into()));
    // Two more heartbeats later, the jobs are still waiting in the queue, untouched.
    let mut last_seen = degraded["last_seen"].clone();
    for _ in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let node = node(&app).await;
            assert_eq!(node["status"], "degraded", "{node}");
            if node["last_seen"] != last_seen {
                last_seen = node["last_seen"].clone();
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no heartbeat: {node}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for job in &jobs {
        let record = app.job(job).await;
        assert_eq!(record["status"], "queued", "{record}");
        assert_eq!(record["attempts"], 0, "{record}");
    }

    // The server is back: the worker takes the jobs, which succeed at their first attempt.
    server.accept_connections();
    ws_shows(&app, "online").await;
    for job in &jobs {
        let record = app.wait_for_job(job, Duration::from_secs(60)).await;
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["attempts"], 1, "{record}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xtts_latents_are_computed_once_per_voice_and_sent_with_every_job() {
    let reference = make(|| clips::spoken_wav(&format!("{FIRST} {SECOND}"))).await;
    let server = FakeXtts::start().await;
    let url = server.url();
    let app = spawn_engines_with(Deployment::Standalone, &["xtts"], move |s| {
        s.workers.get_mut("xtts").unwrap().set("urls", [url]);
    })
    .await;
    let voice = enrol(
        &app,
        reference.clone(),
        &[("name", "Joe"), ("language", "en"), ("engine", "xtts")],
    )
    .await;
    assert_eq!(server.clones.load(Ordering::SeqCst), 1);
    let expected = tts_tests::upstream::xtts_latents(
        &tts_audio::decode(&clips_reference(&app, &voice).await).unwrap(),
    );

    for (text, language) in [
        ("Hello from the cloned voice.", "en"),
        ("Guten Morgen, wie geht es?", "de"),
    ] {
        let response = app
            .synthesize(&json!({"text": text, "voice_id": voice, "language": language}))
            .await;
        assert_eq!(response.status(), 200);
        let wav = tts_tests::wav::summarise(&response.bytes().await.unwrap());
        assert_eq!(wav.sample_rate, 24_000);
        assert!(wav.duration_secs > 1.0, "{wav:?}");
    }
    assert_eq!(
        server.clones.load(Ordering::SeqCst),
        1,
        "latents are never recomputed"
    );
    let requests = server.seen.requests();
    assert_eq!(requests.len(), 2);
    // Compared as the f32 values they are; their JSON spellings may differ in the last digit.
    let floats = |v: &Value| -> Vec<f32> {
        let mut out = Vec::new();
        let mut stack = vec![v.clone()];
        while let Some(v) = stack.pop() {
            match v {
                Value::Array(items) => stack.extend(items.into_iter().rev()),
                Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
                other => panic!("not a number: {other}"),
            }
        }
        out
    };
    for r in &requests {
        assert_eq!(
            floats(&r["speaker_embedding"]),
            floats(&expected["speaker_embedding"])
        );
        assert_eq!(
            floats(&r["gpt_cond_latent"]),
            floats(&expected["gpt_cond_latent"])
        );
        assert_eq!(r["add_wav_header"], true);
    }
    assert_eq!(requests[1]["language"], "de");

    // The streaming server has no speed control: refused at submit, as a language would be.
    let faster = json!({"text": "Faster.", "voice_id": voice, "speed": 1.5});
    let response = app.submit(&faster, None).await;
    assert_eq!(error_of(response).await, (422, "unsupported_speed".into()));
    let response = app.synthesize(&faster).await;
    assert_eq!(error_of(response).await, (422, "unsupported_speed".into()));
    assert_eq!(
        server.seen.requests().len(),
        2,
        "nothing reached the server"
    );
}

/// The trimmed reference the worker stored for a voice (what it sent to `/clone_speaker`).
async fn clips_reference(app: &TestApp, voice: &str) -> Vec<u8> {
    app.audio
        .get(&tts_contracts::reference_key(voice))
        .await
        .unwrap()
        .expect("the reference is stored")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_whether_the_upstream_server_answers() {
    let server = FakeApiV2::start(SovitsVersion::V2, Duration::ZERO).await;
    let shared = tempfile::tempdir().unwrap();
    let options = |url: String| GptSovitsOptions {
        urls: vec![url],
        timeout: Duration::from_secs(5),
        shared_dir: shared.path().to_path_buf(),
        server_dir: String::new(),
        tuning: Default::default(),
    };
    let closed = ClosedPort::new();
    let (up, down) = (options(server.url()), options(closed.url()));
    // Engines are built and used off the async runtime, as workers do.
    let (up, down) = make(move || {
        let up = GptSovitsEngine::load(&up).unwrap().health();
        let down = GptSovitsEngine::load(&down).unwrap().health();
        (up, down)
    })
    .await;
    assert!(up.ready, "{up:?}");
    assert!(!down.ready, "{down:?}");
    assert!(down.detail.contains("unreachable"), "{down:?}");
}
