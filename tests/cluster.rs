//! The queue under a fleet: workers that share an engine, die, or are told to stop. Workers run
//! as processes of their own here, so that they can be killed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tts_tests::app::VOICE;
use tts_tests::wav::assert_plausible_speech;
use tts_tests::{Deployment, TestApp, spawn_app, spawn_app_with, spawn_worker_process};

/// Text long enough that a job is still running when the test acts on it.
fn long_text() -> String {
    "This long passage keeps a worker busy for several seconds, so that the test can act while \
     the job is running. "
        .repeat(12)
}

async fn submit(app: &TestApp, text: &str) -> String {
    let response = app
        .submit(&json!({"text": text, "voice_id": VOICE}), None)
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_string()
}

/// Waits until a job is running and returns the node running it.
async fn wait_running(app: &TestApp, job_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = app.job(job_id).await;
        if job["status"] == "running" {
            return job["worker"].as_str().unwrap().to_string();
        }
        assert!(
            job["status"] == "queued" && Instant::now() < deadline,
            "job never ran: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_of_one_engine_split_the_jobs() {
    let app = spawn_app(Deployment::GatewayOnly).await;
    let _a = spawn_worker_process(&app.settings, "worker-a");
    let _b = spawn_worker_process(&app.settings, "worker-b");
    app.wait_for_voice(VOICE, 2).await;

    let mut jobs = Vec::new();
    for i in 0..20 {
        jobs.push(
            submit(
                &app,
                &format!("This is job number {i}. It has two sentences."),
            )
            .await,
        );
    }
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for job_id in &jobs {
        let job = app.wait_for_job(job_id, Duration::from_secs(180)).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        *by_worker
            .entry(job["worker"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(by_worker.values().sum::<usize>(), 20);
    assert!(
        by_worker.get("worker-a").is_some_and(|n| *n > 0)
            && by_worker.get("worker-b").is_some_and(|n| *n > 0),
        "both workers should take jobs: {by_worker:?}"
    );
    let nodes: Value = app.get_json("/health").await;
    assert_eq!(nodes["workers"]["live"], 2, "{nodes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_is_killed_is_redelivered_and_succeeds_once() {
    let app = spawn_app(Deployment::GatewayOnly).await;
    let mut doomed = spawn_worker_process(&app.settings, "doomed");
    app.wait_for_voice(VOICE, 1).await;

    let text = long_text();
    let job_id = submit(&app, &text).await;
    assert_eq!(wait_running(&app, &job_id).await, "doomed");
    doomed.kill();

    let _survivor = spawn_worker_process(&app.settings, "survivor");
    let job = app.wait_for_job(&job_id, Duration::from_secs(180)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["worker"], "survivor", "{job}");
    assert!(job["attempts"].as_u64().unwrap() >= 2, "{job}");

    let audio = app.audio(&job_id).await;
    assert_eq!(audio.status(), 200);
    let words = text.split_whitespace().count();
    assert_plausible_speech(&audio.bytes().await.unwrap(), words);
    let objects = app.audio.list("audio").await.unwrap();
    assert_eq!(objects, vec![format!("audio/{job_id}.wav")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_running_job_then_exits_cleanly() {
    let app = spawn_app(Deployment::GatewayOnly).await;
    let mut worker = spawn_worker_process(&app.settings, "leaving");
    app.wait_for_voice(VOICE, 1).await;

    let job_id = submit(&app, &long_text()).await;
    wait_running(&app, &job_id).await;
    let status = worker.terminate();
    assert!(status.success(), "worker exited with {status}");

    // The job finished on the leaving worker before it exited: no redelivery was needed.
    let job = app.job(&job_id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");

    // Its last heartbeat said it was offline, so the gateway dropped it at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let health: Value = app.get_json("/health").await;
        if health["workers"]["live"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "worker still listed: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_uses_up_its_deliveries_is_marked_failed() {
    // Two deliveries, and a worker that dies during each: then the queue gives up on the job.
    let app = spawn_app_with(Deployment::GatewayOnly, |s| s.worker.max_deliver = 2).await;
    let job_id = {
        let mut first = spawn_worker_process(&app.settings, "doomed-1");
        app.wait_for_voice(VOICE, 1).await;
        let job_id = submit(&app, &long_text()).await;
        assert_eq!(wait_running(&app, &job_id).await, "doomed-1");
        first.kill();
        job_id
    };
    let mut second = spawn_worker_process(&app.settings, "doomed-2");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = app.job(&job_id).await;
        if job["worker"] == "doomed-2" && job["status"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never redelivered: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.kill();

    // Another worker of the engine hears the server's advisory and records the failure.
    let _other = spawn_worker_process(&app.settings, "other");
    let job = app.wait_for_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["error"], "max_deliveries_exceeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(app.audio(&job_id).await.status(), 404);
}

/// The reaper takes a job that used up its deliveries out of the stream by its sequence. A
/// sequence that is no longer there (taken already, or never stored) answers "nothing to fail",
/// which the queue tells from a failure by the server's error kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_job_is_taken_once_and_a_missing_one_is_nothing() {
    use tts_contracts::{JobMessage, JobSpec};
    use tts_infra::{JetStreamQueue, JobQueue, QueueSettings};

    let nats = tts_tests::NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let settings = QueueSettings {
        ack_wait: Duration::from_secs(30),
        max_deliver: 3,
        replicas: 1,
    };
    let queue = JetStreamQueue::connect(client, settings).await.unwrap();
    let job = JobMessage {
        job_id: uuid::Uuid::new_v4(),
        engine: "piper".into(),
        created_at: chrono::Utc::now(),
        tenant: None,
        spec: JobSpec::Synthesize {
            text: "Hello.".into(),
            voice_id: VOICE.into(),
            language: "en".into(),
            speed: 1.0,
            streamed: false,
        },
    };
    queue.enqueue(&job, None).await.unwrap();

    // The new stream's first message has sequence 1.
    let taken = queue.take_exhausted(1).await.unwrap().expect("the job");
    assert_eq!(serde_json::from_slice::<JobMessage>(&taken).unwrap(), job);
    assert!(queue.take_exhausted(1).await.unwrap().is_none());
    assert!(queue.take_exhausted(99).await.unwrap().is_none());
}
