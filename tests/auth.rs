//! API keys and tenants: distributed gateways require keys; jobs, audio and cloned voices
//! belong to the key's tenant; the fleet is for admin keys.

use std::time::Duration;

use serde_json::{Value, json};
use tts_config::ApiKeySettings;
use tts_gateway::auth::hash_key;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, TestApp, spawn_engines_with};

const ACME: &str = "acme-key-0123456789";
const GLOBEX: &str = "globex-key-9876543210";
const ADMIN: &str = "admin-key-5555555555";
/// A key with characters a query string must percent-encode.
const SIGNED: &str = "admin+key/with=signs";

fn keys() -> Vec<ApiKeySettings> {
    [
        ("acme", ACME, false),
        ("globex", GLOBEX, false),
        ("ops", ADMIN, true),
        ("ops2", SIGNED, true),
    ]
    .into_iter()
    .map(|(tenant, key, admin)| ApiKeySettings {
        name: format!("{tenant}-key"),
        tenant: tenant.into(),
        sha256: hash_key(key),
        admin,
        rpm: None,
    })
    .collect()
}

async fn get(app: &TestApp, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_jobs_and_strangers_nothing() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "auto".into();
        s.auth.keys = keys();
    })
    .await;
    let _worker = tts_tests::spawn_worker_process(&app.settings, "auth-worker");
    tts_tests::wait_until_listed(
        &app.client,
        &app.base_url,
        Some(ACME),
        VOICE,
        Duration::from_secs(60),
    )
    .await;

    // No key, a wrong key: 401 with a challenge; health stays open for probes.
    for key in [None, Some("not-a-key")] {
        let response = get(&app, "/api/voices", key).await;
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }
    assert_ne!(get(&app, "/health", None).await.status(), 401);

    // Acme's job is Acme's.
    let response = app
        .client
        .post(app.url("/api/jobs"))
        .bearer_auth(ACME)
        .json(&json!({"text": "Hello from Acme.", "voice_id": VOICE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let job_id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let job: Value = get(&app, &format!("/api/jobs/{job_id}"), Some(ACME))
            .await
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&app, &format!("/api/jobs/{job_id}/audio"), Some(ACME))
            .await
            .status(),
        200
    );
    for path in [
        format!("/api/jobs/{job_id}"),
        format!("/api/jobs/{job_id}/audio"),
    ] {
        let response = get(&app, &path, Some(GLOBEX)).await;
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "job_not_found");
    }
    // Nor can another tenant cancel it: it is as missing as for reading.
    let cancel = app
        .client
        .delete(app.url(&format!("/api/jobs/{job_id}")))
        .bearer_auth(GLOBEX)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 404);
    assert_eq!(
        cancel.json::<Value>().await.unwrap()["error"],
        "job_not_found"
    );
    // The admin paths of the queue are for admin keys.
    assert_eq!(
        get(&app, "/api/admin/dead-letters", Some(ACME))
            .await
            .status(),
        403
    );

    // An idempotency key is the tenant's own: the same key elsewhere is another job.
    let submit = |key: &'static str| {
        app.client
            .post(app.url("/api/jobs"))
            .bearer_auth(key)
            .header("idempotency-key", "order-42")
            .json(&json!({"text": "Same key.", "voice_id": VOICE}))
            .send()
    };
    let a: Value = submit(ACME).await.unwrap().json().await.unwrap();
    let b: Value = submit(GLOBEX).await.unwrap().json().await.unwrap();
    assert_ne!(a["job_id"], b["job_id"]);

    // The fleet and the metrics are for admin keys.
    assert_eq!(get(&app, "/api/nodes", Some(ACME)).await.status(), 403);
    assert_eq!(get(&app, "/metrics", Some(ACME)).await.status(), 403);
    assert_eq!(get(&app, "/metrics", None).await.status(), 401);
    assert_eq!(get(&app, "/metrics", Some(ADMIN)).await.status(), 200);
    let nodes: Value = get(&app, "/api/nodes", Some(ADMIN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1);
    let ws = app.url("/ws").replacen("http", "ws", 1);
    assert!(
        tokio_tungstenite::connect_async(&ws).await.is_err(),
        "no key, no fleet"
    );
    let with_token = format!("{ws}?access_token={ADMIN}");
    assert!(tokio_tungstenite::connect_async(&with_token).await.is_ok());
    let encoded = SIGNED
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let with_signs = format!("{ws}?access_token={encoded}");
    assert!(tokio_tungstenite::connect_async(&with_signs).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_gateway_without_keys_refuses_to_start_unless_told() {
    let nats = tts_tests::NatsServer::start().await;
    let storage = tempfile::tempdir().unwrap();
    let mut settings = tts_tests::test_settings(storage.path());
    settings.nats.url = nats.url();
    settings.auth.mode = "auto".into();
    settings.auth.keys = Vec::new();
    let refused =
        voice_clone_tts::Application::build(settings.clone(), voice_clone_tts::Mode::Gateway).await;
    let message = format!("{:#}", refused.err().expect("the gateway refuses to start"));
    assert!(message.contains("auth.keys"), "{message}");
    settings.auth.mode = "off".into();
    assert!(
        voice_clone_tts::Application::build(settings, voice_clone_tts::Mode::Gateway)
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_users_keep_strangers_out_and_workers_from_queueing_jobs() {
    let config = tts_tests::workspace_root().join("nats/nats-server.conf");
    let nats = tts_tests::NatsServer::start_with_config(
        &config,
        &[
            ("TTS_NATS_GATEWAY_PASSWORD", "gateway-secret"),
            ("TTS_NATS_WORKER_PASSWORD", "worker-secret"),
        ],
    )
    .await;
    // A stranger cannot even connect.
    assert!(
        async_nats::ConnectOptions::new()
            .connect(nats.url())
            .await
            .is_err(),
        "anonymous clients are refused"
    );

    // A gateway and a worker with their users serve a job end to end.
    let storage = tempfile::tempdir().unwrap();
    let mut settings = tts_tests::test_settings(storage.path());
    settings.nats.url = nats.url();
    settings.nats.user = "gateway".into();
    settings.nats.password = "gateway-secret".into();
    let gateway =
        voice_clone_tts::Application::build(settings.clone(), voice_clone_tts::Mode::Gateway)
            .await
            .expect("the gateway logs in");
    let base = format!("http://{}", gateway.gateway_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let mut worker_settings = settings.clone();
    worker_settings.nats.user = "worker".into();
    worker_settings.nats.password = "worker-secret".into();
    let _worker = tts_tests::spawn_worker_process(&worker_settings, "nats-user-worker");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let response = loop {
        let response = client
            .post(format!("{base}/api/synthesize"))
            .json(&json!({"text": "Logged in.", "voice_id": VOICE}))
            .send()
            .await
            .unwrap();
        if response.status() != 422 && response.status() != 503 {
            break response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never came up"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(response.status(), 200);

    // The worker's user may not queue jobs: the server refuses the message, and says so to the
    // client, instead of passing it on to the stream.
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let as_worker =
        async_nats::ConnectOptions::with_user_and_password("worker".into(), "worker-secret".into())
            .event_callback(move |event| {
                let errors_tx = errors_tx.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = errors_tx.send(error.to_string());
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap();
    let js = async_nats::jetstream::new(as_worker);
    // Sent, but its ack never comes: the refusal is the answer to wait for.
    let _ack = js
        .publish("tts.jobs.piper", "{}".into())
        .await
        .expect("the message is sent");
    let refusal = tokio::time::timeout(Duration::from_secs(30), errors.recv())
        .await
        .expect("the server answers the publish")
        .expect("the connection reports errors");
    assert!(
        refusal.contains("Permissions Violation for Publish") && refusal.contains("tts.jobs.piper"),
        "{refusal}"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloned_voices_belong_to_their_tenant() {
    let reference = tokio::task::spawn_blocking(|| {
        tts_tests::clips::spoken_wav(&format!(
            "{} {}",
            tts_tests::clips::FIRST,
            tts_tests::clips::SECOND
        ))
    })
    .await
    .unwrap();
    let server = tts_tests::upstream::FakeXtts::start().await;
    let url = server.url();
    let app = spawn_engines_with(Deployment::Standalone, &["xtts"], move |s| {
        s.auth.mode = "on".into();
        s.auth.keys = keys();
        s.workers.get_mut("xtts").unwrap().set("urls", [url]);
    })
    .await;
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(reference).file_name("ref.wav"),
        )
        .text("name", "Acme voice")
        .text("language", "en")
        .text("engine", "xtts");
    let response = app
        .client
        .post(app.url("/api/voices"))
        .bearer_auth(ACME)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let voice = accepted["voice"]["voice_id"].as_str().unwrap().to_string();
    let job = accepted["job_id"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let record: Value = get(&app, &format!("/api/jobs/{job}"), Some(ACME))
            .await
            .json()
            .await
            .unwrap();
        if record["status"] == "succeeded" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{record}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Acme sees and uses it; Globex does not know it exists.
    assert_eq!(
        get(&app, &format!("/api/voices/{voice}"), Some(ACME))
            .await
            .status(),
        200
    );
    assert_eq!(
        get(&app, &format!("/api/voices/{voice}"), Some(GLOBEX))
            .await
            .status(),
        404
    );
    let listed: Value = get(&app, "/api/voices", Some(GLOBEX))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        !listed["voices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["voice_id"] == voice.as_str())
    );
    let speak = |key: &'static str| {
        app.client
            .post(app.url("/api/synthesize"))
            .bearer_auth(key)
            .json(&json!({"text": "Whose voice is this?", "voice_id": voice}))
            .send()
    };
    assert_eq!(speak(ACME).await.unwrap().status(), 200);
    let refused = speak(GLOBEX).await.unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "unknown_voice"
    );
    let delete = |key: &'static str| {
        app.client
            .delete(app.url(&format!("/api/voices/{voice}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(delete(GLOBEX).await.unwrap().status(), 404);
    assert_eq!(delete(ACME).await.unwrap().status(), 204);
}
