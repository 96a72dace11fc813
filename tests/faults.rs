//! Faults a deployment meets in production: servers that are down when a process starts, and
//! servers that die while it runs. Every server here is the test's own, on a port it picked
//! itself, and is killed and restarted by the test.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tts_contracts::audio_key;
use tts_tests::app::{
    VOICE, binary, listening_addr, long_text, spawn_worker_process_logged,
    start_gateway_process_from,
};
use tts_tests::process::rss_mb;
use tts_tests::wait_until_listed;
use tts_tests::wav::assert_plausible_speech;
use tts_tests::{
    Deployment, NatsServer, TestApp, spawn_app_with, spawn_gateway_process, spawn_worker_process,
    test_settings,
};

/// Sends a sync request for a short sentence to the gateway at `url` and checks the speech.
async fn speaks(client: &reqwest::Client, url: &str) {
    let response = client
        .post(format!("{url}/api/synthesize"))
        .json(&json!({"text": "The servers came up after all.", "voice_id": VOICE}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200);
    assert_plausible_speech(&response.bytes().await.unwrap(), 6);
}

fn says_waiting(line: &str) -> Option<()> {
    line.contains("not ready yet").then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_a_worker_started_before_nats_wait_for_it() {
    // A server started and stopped leaves a port that nothing listens on, which it takes again
    // when it restarts.
    let mut nats = NatsServer::start().await;
    nats.stop();
    let storage = tempfile::tempdir().unwrap();
    let mut settings = test_settings(storage.path());
    settings.nats.url = nats.url();

    let (_gateway, mut gateway_log) = start_gateway_process_from(&binary(), &settings, &[]);
    let (_worker, mut worker_log) = spawn_worker_process_logged(&settings, "early-worker");
    let within = Duration::from_secs(60);
    gateway_log
        .wait_for(within, says_waiting)
        .await
        .expect("the gateway waits for NATS");
    worker_log
        .wait_for(within, says_waiting)
        .await
        .expect("the worker waits for NATS");

    nats.restart().await;
    let addr = gateway_log
        .wait_for(within, listening_addr)
        .await
        .expect("the gateway starts once NATS is up");
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    wait_until_listed(&client, &url, None, VOICE, within).await;
    speaks(&client, &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_servers_reaches_the_one_that_is_up() {
    let mut down = NatsServer::start().await;
    down.stop();
    let up = NatsServer::start().await;
    let storage = tempfile::tempdir().unwrap();
    let mut settings = test_settings(storage.path());
    // The server that is down comes first, so that a client which tried only the first would
    // never start.
    settings.nats.url = format!("{}, {}", down.url(), up.url());

    let (_gateway, url) = spawn_gateway_process(&settings).await;
    let _worker = spawn_worker_process(&settings, "listed-worker");
    let client = reqwest::Client::new();
    wait_until_listed(&client, &url, None, VOICE, Duration::from_secs(60)).await;
    speaks(&client, &url).await;
}

async fn cancel(app: &TestApp, job_id: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/api/jobs/{job_id}")))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_that_is_cancelled_never_runs() {
    // A worker that announced the voice and was then killed: the gateway still lists the voice
    // (its threshold for a dead worker is far off), and the job waits in the queue.
    let mut app = spawn_app_with(Deployment::GatewayOnly, |s| {
        s.worker.max_concurrent = 1;
        s.gateway.dead_threshold = 3600;
    })
    .await;
    let mut announcer = spawn_worker_process(&app.settings, "announcer");
    app.wait_for_voice(VOICE, 1).await;
    announcer.kill();
    let job_id = app
        .submit_text("This job is cancelled before it runs.")
        .await;
    let response = cancel(&app, &job_id).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["error"]["error"], "cancelled", "{body}");
    // Repeating it is harmless.
    let again = cancel(&app, &job_id).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "cancelled");
    assert_eq!(
        cancel(&app, &uuid::Uuid::new_v4().to_string())
            .await
            .status(),
        404
    );
    let events = app.ws_events(&job_id).await;
    assert_eq!(events.last().map(|e| e.status.as_str()), Some("cancelled"));

    // A worker with one slot takes the cancelled job first and drops it; the next one runs.
    app.add_worker("piper", |_| {}).await;
    let next = app.submit_text("This one runs.").await;
    let done = app.wait_for_job(&next, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let job = app.job(&job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["attempts"], 0, "{job}");
    assert_eq!(app.audio(&job_id).await.status(), 404);
    let stored = app.audio.get(&audio_key(&job_id.parse().unwrap())).await;
    assert!(stored.unwrap().is_none(), "a cancelled job left audio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_that_is_cancelled_stops_and_leaves_no_audio() {
    let app = spawn_app_with(Deployment::Distributed, |s| s.worker.max_concurrent = 1).await;
    let job_id = app.submit_text(&long_text()).await;
    let (events, ()) = tokio::join!(app.ws_events(&job_id), async {
        // Wait for the first sentence's progress: the engine is at work.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = app.job(&job_id).await;
            if job["status"] == "running" && job["progress"].as_f64().unwrap_or(0.0) > 0.0 {
                break;
            }
            assert!(Instant::now() < deadline, "never ran: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let response = cancel(&app, &job_id).await;
        assert_eq!(response.status(), 200);
    });
    assert_eq!(events.last().map(|e| e.status.as_str()), Some("cancelled"));

    // The worker's one slot frees once the cancelled attempt has stopped; the next job runs.
    let next = app.submit_text("After the cancelled one.").await;
    let done = app.wait_for_job(&next, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let job = app.job(&job_id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["progress"].as_f64().unwrap() < 0.95, "{job}");
    let stored = app.audio.get(&audio_key(&job_id.parse().unwrap())).await;
    assert!(stored.unwrap().is_none(), "a cancelled job left audio");
    // A finished job cannot be cancelled.
    let late = cancel(&app, &next).await;
    assert_eq!(late.status(), 409);
    assert_eq!(late.json::<Value>().await.unwrap()["error"], "job_finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_job_records_expire_after_their_retention() {
    let app = spawn_app_with(Deployment::Distributed, |s| {
        s.redis.job_ttl_secs = 2;
        s.storage.audio_retention_secs = 2;
        s.storage.sweep_interval_secs = 1;
    })
    .await;
    // A cloned voice's files are users' data, not output: retention leaves them alone.
    let reference = "voices/kept/reference.wav";
    app.audio
        .put(reference, bytes::Bytes::from_static(b"RIFF"))
        .await
        .unwrap();
    let job_id = app.submit_text("Gone tomorrow.").await;
    let done = app.wait_for_job(&job_id, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let key = audio_key(&job_id.parse().unwrap());
    assert!(app.audio.get(&key).await.unwrap().is_some());

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let record = app
            .client
            .get(app.url(&format!("/api/jobs/{job_id}")))
            .send()
            .await
            .unwrap()
            .status();
        let audio = app.audio.get(&key).await.unwrap();
        if record == 404 && audio.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still there: record {record}, audio {}",
            audio.is_some()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(app.audio.get(reference).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloned_voices_survive_a_voice_store_that_loses_its_data() {
    use std::sync::Arc;
    use tts_contracts::{VoiceInfo, VoiceRecord, VoiceStatus};
    use tts_infra::{MirroredVoiceStore, RedisJobStore, RedisVoiceStore, VoiceStore};

    let app = spawn_app_with(Deployment::GatewayOnly, |_| {}).await;
    // A voice as enrollment leaves it, written through the same kind of store the service uses.
    let jobs = RedisJobStore::connect(
        &app.settings.redis.url,
        &app.settings.redis.key_prefix,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let voices = MirroredVoiceStore::new(Arc::new(RedisVoiceStore::new(&jobs)), app.audio.clone());
    let record = VoiceRecord {
        info: VoiceInfo {
            voice_id: "kept-voice".into(),
            name: "Kept".into(),
            engine: "kokoro".into(),
            created_at: chrono::Utc::now(),
            language: "en".into(),
            status: VoiceStatus::Ready,
            sample_rate: Some(24_000),
            other_languages: vec![],
            speed_range: None,
            native_language: None,
        },
        prompt_text: None,
        reference_key: Some("voices/kept-voice/reference.wav".into()),
        job_id: None,
        embedding: None,
        similarity: None,
        speech_seconds: None,
        engine_data: None,
        error: None,
        tenant: None,
    };
    voices.put(&record).await.unwrap();
    let path = "/api/voices/kept-voice";
    assert_eq!(app.get_json(path).await["status"], "ready");

    // Redis loses everything of this deployment, as a restart without persistence would.
    let redis = redis::Client::open(app.settings.redis.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}:*", app.settings.redis.key_prefix);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(voices.get("kept-voice").await.unwrap().is_none());

    // The running gateway finds the store empty and puts the voice back from storage.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = app.client.get(app.url(path)).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the voice never came back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(voices.get("kept-voice").await.unwrap(), Some(record));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_meet_object_storage_down_succeed_once_it_is_back() {
    let mut s3 = tts_tests::S3Server::start().await;
    let storage = s3.settings();
    let app = spawn_app_with(Deployment::Distributed, move |s| s.storage = storage).await;
    s3.stop();
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(
            app.submit_text(&format!("Stored once storage is back, number {i}."))
                .await,
        );
    }
    // Wait until a job has met the outage: its write failed and it waits for another delivery.
    let deadline = Instant::now() + Duration::from_secs(60);
    'outage: loop {
        for job_id in &jobs {
            let job = app.job(job_id).await;
            if job["status"] == "queued" && job["attempts"].as_u64().unwrap_or(0) >= 1 {
                break 'outage;
            }
            assert_ne!(
                job["status"], "succeeded",
                "stored while storage was down: {job}"
            );
        }
        assert!(Instant::now() < deadline, "no job met the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    s3.restart().await;
    for job_id in &jobs {
        let job = app.wait_for_job(job_id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        // The stored object is whole: a WAV as long as the record says.
        let wav = app
            .audio
            .get(&audio_key(&job_id.parse().unwrap()))
            .await
            .unwrap()
            .expect("the audio is stored");
        let reader = hound::WavReader::new(std::io::Cursor::new(&wav[..])).unwrap();
        let seconds = reader.duration() as f64 / reader.spec().sample_rate as f64;
        let recorded = job["duration_seconds"].as_f64().unwrap();
        assert!(
            (seconds - recorded).abs() < 0.01,
            "{seconds} s stored, {recorded} s recorded"
        );
    }
    assert_eq!(app.audio.list("audio").await.unwrap().len(), jobs.len());
}

/// 500 WebSocket clients that only listen, and steady sync synthesis beside them, for
/// `TTS_SOAK_SECS` (five minutes unless set): every request succeeds, every socket stays open,
/// and the gateway's memory after the first quarter stays flat to the end.
///
/// Ignored by a plain `cargo test`, which it would hold up for five minutes: `scripts/test` (the
/// README's test command, and CI's) runs it on its own, beside all the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a five-minute soak: scripts/test runs it beside the other tests"]
async fn idle_websockets_and_steady_load_keep_the_gateway_flat() {
    use futures::StreamExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let soak = Duration::from_secs(
        std::env::var("TTS_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let nats = NatsServer::start().await;
    let storage = tempfile::tempdir().unwrap();
    let mut settings = test_settings(storage.path());
    settings.nats.url = nats.url();
    let env = [
        ("TTS__GATEWAY__MAX_WEBSOCKETS_PER_IP", "1000"),
        ("TTS__GATEWAY__CONCURRENT_LIMIT", "1000"),
    ];
    let (gateway, url) = tts_tests::spawn_gateway_process_with_env(&settings, &env).await;
    let _worker = spawn_worker_process(&settings, "soak-worker");
    let client = reqwest::Client::new();
    wait_until_listed(&client, &url, None, VOICE, Duration::from_secs(60)).await;

    // Each socket is read by a task of its own until it closes; a socket that closes or errs
    // before the end is counted.
    let ended = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    let ws_url = format!("{}/ws", url.replacen("http", "ws", 1));
    for _ in 0..500 {
        let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url)
            .await
            .expect("websocket connects");
        // The fleet is pushed at once: the socket is open and served.
        let first = socket.next().await.expect("a first message");
        assert!(first.is_ok(), "{first:?}");
        let ended = ended.clone();
        readers.push(tokio::spawn(async move {
            while let Some(message) = socket.next().await {
                if message.is_err() {
                    break;
                }
            }
            ended.fetch_add(1, Ordering::Relaxed);
        }));
    }

    // Steady means a request every quarter of a second, one at a time, rather than back to
    // back: the soak runs beside the other tests, and a worker kept busy without a pause would
    // take a core from them for five minutes.
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut settled = None;
    let mut requests = 0;
    while started.elapsed() < soak {
        pace.tick().await;
        let response = client
            .post(format!("{url}/api/synthesize"))
            .json(&json!({"text": "Steady as she goes.", "voice_id": VOICE}))
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 200, "request {requests}");
        response.bytes().await.unwrap();
        requests += 1;
        if settled.is_none() && started.elapsed() > soak / 4 {
            settled = Some(rss_mb(gateway.pid()));
        }
    }
    let settled = settled.expect("a quarter of the soak passed");
    let end = rss_mb(gateway.pid());
    assert_eq!(
        ended.load(Ordering::Relaxed),
        0,
        "sockets closed during the soak"
    );
    assert!(
        end <= settled * 1.15 + 5.0,
        "the gateway grew from {settled:.1} MB to {end:.1} MB over {requests} requests"
    );
    eprintln!(
        "soak: {requests} requests; gateway {settled:.1} MB after a quarter, {end:.1} MB at the end"
    );
    for reader in readers {
        reader.abort();
    }
}
