//! The HTTP API end to end, run against both deployments: standalone (one process, no servers)
//! and distributed (NATS JetStream, Redis, a storage directory, gateway and worker apart).

use std::time::Duration;

use serde_json::{Value, json};
use tts_contracts::JobStatus;
use tts_tests::app::VOICE;
use tts_tests::wav::assert_plausible_speech;
use tts_tests::{Deployment, TestApp, spawn_app, spawn_app_with, spawn_standalone};

tts_tests::in_both_deployments!(
    sync_synthesis_returns_speech,
    async_job_is_polled_and_streamed_to_success,
    idempotency_key_gives_one_job,
    bad_input_is_refused_with_json_errors,
    unknown_jobs_and_unready_audio_are_json_404s,
    a_job_the_engine_cannot_do_fails_with_the_reason,
);

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog. It was a sunny day.";
const SENTENCE_WORDS: usize = 14;

async fn sync_synthesis_returns_speech(app: TestApp) {
    let response = app
        .synthesize(&json!({"text": SENTENCE, "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "audio/wav");
    let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
    let audio = response.bytes().await.unwrap();
    assert_plausible_speech(&audio, SENTENCE_WORDS);

    // The job behind the sync answer is recorded like any other.
    let job = app.job(&job_id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["progress"], 1.0);

    // A faster speed gives shorter audio of the same text.
    let fast = app
        .synthesize(
            &json!({"text": SENTENCE, "voice_id": VOICE, "speed": 2.0, "language": "en-US"}),
        )
        .await;
    assert_eq!(fast.status(), 200);
    let fast = tts_tests::wav::summarise(&fast.bytes().await.unwrap());
    let normal = tts_tests::wav::summarise(&audio);
    assert!(
        fast.duration_secs < normal.duration_secs * 0.75,
        "speed 2.0 gave {fast:?}, speed 1.0 gave {normal:?}"
    );
}

async fn async_job_is_polled_and_streamed_to_success(app: TestApp) {
    let text = "First sentence here. Second sentence follows! And a third one?";
    let response = app
        .submit(&json!({"text": text, "voice_id": VOICE}), None)
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    assert!(matches!(
        accepted["status"].as_str(),
        Some("queued" | "running" | "succeeded")
    ));
    assert_eq!(accepted["status_url"], format!("/api/jobs/{job_id}"));
    assert_eq!(accepted["audio_url"], format!("/api/jobs/{job_id}/audio"));
    assert_eq!(accepted["ws_url"], format!("/ws/jobs/{job_id}"));

    let events = app.ws_events(&job_id).await;
    assert!(!events.is_empty());
    let last = events.last().unwrap();
    assert_eq!(last.status, JobStatus::Succeeded, "{events:?}");
    assert_eq!(last.progress, 1.0);
    // Events come in order: progress never goes back, and nothing follows the terminal event.
    for pair in events.windows(2) {
        assert!(pair[0].at <= pair[1].at, "{events:?}");
        assert!(pair[0].progress <= pair[1].progress, "{events:?}");
        assert!(!pair[0].status.is_terminal(), "{events:?}");
    }

    let job = app.wait_for_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["audio_url"], format!("/api/jobs/{job_id}/audio"));
    for field in ["created_at", "started_at", "finished_at", "updated_at"] {
        assert!(job[field].is_string(), "{field} missing: {job}");
    }
    let audio = app.audio(&job_id).await;
    assert_eq!(audio.status(), 200);
    assert_plausible_speech(&audio.bytes().await.unwrap(), 11);

    // A client that connects after the end gets the final state and a close.
    let late = app.ws_events(&job_id).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0].status, JobStatus::Succeeded);
}

async fn idempotency_key_gives_one_job(app: TestApp) {
    let body = json!({"text": "Say this once.", "voice_id": VOICE});
    let key = format!("order-{}", uuid::Uuid::new_v4());
    let first: Value = app.submit(&body, Some(&key)).await.json().await.unwrap();
    let again = app.submit(&body, Some(&key)).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let second: Value = again.json().await.unwrap();
    assert_eq!(first["job_id"], second["job_id"]);
    // Another key is another job.
    let other: Value = app
        .submit(&body, Some("another-key"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(first["job_id"], other["job_id"]);
    let job = app
        .wait_for_job(first["job_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(job["status"], "succeeded");
    // A key that is not printable ASCII is refused.
    let bad = app.submit(&body, Some("has space")).await;
    assert_eq!(bad.status(), 400);
}

async fn assert_error(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status(), status);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn bad_input_is_refused_with_json_errors(app: TestApp) {
    let long = "a".repeat(5001);
    let cases = [
        (json!({"text": "", "voice_id": VOICE}), 422, "invalid_text"),
        (
            json!({"text": "   \n ", "voice_id": VOICE}),
            422,
            "invalid_text",
        ),
        (
            json!({"text": long, "voice_id": VOICE}),
            422,
            "text_too_long",
        ),
        (
            json!({"text": "Hi.", "voice_id": "no-such-voice"}),
            422,
            "unknown_voice",
        ),
        (
            json!({"text": "Hi.", "voice_id": VOICE, "speed": 0.1}),
            422,
            "invalid_speed",
        ),
        (
            json!({"text": "Hi.", "voice_id": VOICE, "speed": 4.5}),
            422,
            "invalid_speed",
        ),
        (
            json!({"text": "Hi.", "voice_id": VOICE, "language": "zh"}),
            422,
            "unsupported_language",
        ),
        (json!({"voice_id": VOICE}), 422, "invalid_request"),
        (
            json!({"text": 5, "voice_id": VOICE}),
            422,
            "invalid_request",
        ),
        (
            json!({"text": "Hi.", "voice_id": VOICE, "sped": 2}),
            422,
            "invalid_request",
        ),
    ];
    for path in ["/api/synthesize", "/api/jobs"] {
        for (body, status, code) in &cases {
            let response = app
                .post_raw(path, Some("application/json"), body.to_string())
                .await;
            assert_error(response, *status, code).await;
        }
        let malformed = app
            .post_raw(path, Some("application/json"), "{\"text\": \"Hi\",")
            .await;
        assert_error(malformed, 400, "invalid_json").await;
        let wrong_type = app
            .post_raw(
                path,
                Some("text/plain"),
                json!({"text": "Hi.", "voice_id": VOICE}).to_string(),
            )
            .await;
        assert_error(wrong_type, 415, "unsupported_media_type").await;
        let no_type = app.post_raw(path, None, "{}").await;
        assert_error(no_type, 415, "unsupported_media_type").await;
        let huge = app
            .post_raw(path, Some("application/json"), vec![b' '; 1 << 20])
            .await;
        assert_error(huge, 413, "payload_too_large").await;
    }
    // None of those made a job.
    app.assert_no_job_made().await;
}

async fn unknown_jobs_and_unready_audio_are_json_404s(app: TestApp) {
    let missing = uuid::Uuid::new_v4();
    assert_error(app.audio(&missing.to_string()).await, 404, "job_not_found").await;
    let response = app
        .client
        .get(app.url(&format!("/api/jobs/{missing}")))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "job_not_found").await;
    let response = app
        .client
        .get(app.url("/api/jobs/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "job_not_found").await;
    let response = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_error(response, 404, "not_found").await;
    let response = app
        .client
        .delete(app.url("/api/synthesize"))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "method_not_allowed").await;
    let response = app
        .client
        .get(app.url(&format!("/ws/jobs/{missing}")))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "websocket_required").await;

    // Audio is a JSON 404 until the job has it. A long text keeps the job busy long enough to ask.
    let text = "This sentence is here to keep the worker busy for a while. ".repeat(8);
    let accepted: Value = app
        .submit(&json!({"text": text, "voice_id": VOICE}), None)
        .await
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap();
    let early = app.audio(job_id).await;
    if early.status() == 404 {
        assert_error(early, 404, "audio_not_ready").await;
    }
    let job = app.wait_for_job(job_id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(app.audio(job_id).await.status(), 200);

    let health: Value = app.get_json("/health").await;
    assert_eq!(health["status"], "ok", "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_wait_limit_answers_504_with_the_job_id_and_the_job_completes() {
    let app = spawn_app_with(Deployment::Distributed, |s| s.gateway.sync_timeout_secs = 0).await;
    let response = app
        .synthesize(&json!({"text": SENTENCE, "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "timeout", "{body}");
    let job_id = body["job_id"].as_str().unwrap();
    let job = app.wait_for_job(job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(app.audio(job_id).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_dependency_that_goes_down_and_comes_back() {
    let mut app = spawn_app(Deployment::Distributed).await;
    app.wait_for_health(200).await;

    app.nats.as_mut().unwrap().stop();
    let body = app.wait_for_health(503).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["dependencies"]["queue"]["status"], "down", "{body}");
    assert_eq!(body["dependencies"]["job_store"]["status"], "up", "{body}");

    // Back again, the gateway reconnects by itself and synthesis works.
    app.nats.as_mut().unwrap().restart().await;
    app.wait_for_health(200).await;
    app.wait_for_voice(VOICE, 1).await;
    let response = app
        .synthesize(&json!({"text": "Back again.", "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 200);
}

async fn a_job_the_engine_cannot_do_fails_with_the_reason(app: TestApp) {
    // Punctuation passes the gateway's checks, but has no words for the voice to speak.
    let body = json!({"text": "?! ... !", "voice_id": VOICE});
    let response = app.synthesize(&body).await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "synthesis_failed", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("nothing_to_say"),
        "{error}"
    );
    let job_id = error["job_id"].as_str().unwrap().to_string();
    let job = app.job(&job_id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["error"], "nothing_to_say", "{job}");
    // Not retried: invalid input is final on the first attempt.
    assert_eq!(job["attempts"], 1, "{job}");
    assert_error(app.audio(&job_id).await, 404, "audio_not_ready").await;

    let accepted: Value = app.submit(&body, None).await.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap();
    let events = app.ws_events(job_id).await;
    assert_eq!(
        events.last().unwrap().status,
        JobStatus::Failed,
        "{events:?}"
    );
    assert_eq!(
        events.last().unwrap().error.as_ref().unwrap().error,
        "nothing_to_say"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_deployment_keeps_audio_in_an_s3_bucket() {
    let s3 = tts_tests::S3Server::start().await;
    let storage = s3.settings();
    let app = spawn_app_with(Deployment::Distributed, |s| s.storage = storage).await;
    let response = app
        .synthesize(&json!({"text": SENTENCE, "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 200);
    let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
    assert_plausible_speech(&response.bytes().await.unwrap(), SENTENCE_WORDS);
    // The object is in the bucket, where the gateway read it from.
    assert_eq!(
        app.audio.list("audio").await.unwrap(),
        vec![format!("audio/{job_id}.wav")]
    );
    assert_eq!(app.audio(&job_id).await.status(), 200);
    let health: Value = app.get_json("/health").await;
    assert_eq!(
        health["dependencies"]["storage"]["status"], "up",
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kokoro_speaks_mandarin_and_english_through_the_api() {
    let app = spawn_standalone(&["piper", "kokoro"]).await;
    app.wait_for_voice("jf_alpha", 2).await;
    let voices: Value = app.get_json("/api/voices").await;
    let kokoro = voices["voices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["voice_id"] == "jf_alpha")
        .unwrap()
        .clone();
    assert_eq!(kokoro["engine"], "kokoro");
    assert_eq!(kokoro["language"], "zh");

    // Mandarin is the voice's default language.
    let response = app
        .synthesize(&json!({"text": "我们一起去公园散步吧。", "voice_id": "jf_alpha"}))
        .await;
    assert_eq!(response.status(), 200);
    let zh = tts_tests::wav::summarise(&response.bytes().await.unwrap());
    assert_eq!(zh.sample_rate, 24000);
    assert!((1.2..=6.0).contains(&zh.duration_secs), "{zh:?}");
    assert!(zh.rms > 0.01, "{zh:?}");

    let response = app
        .synthesize(
            &json!({"text": "Hello from Kokoro.", "voice_id": "jf_alpha", "language": "en-US"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    // A language the voice does not speak is refused before any job exists.
    let response = app
        .synthesize(&json!({"text": "こんにちは。", "voice_id": "jf_alpha", "language": "ja"}))
        .await;
    assert_eq!(response.status(), 422);
}
