//! The queue under a fleet: workers that share an engine, die, or are told to stop. Workers run
//! as processes of their own here, so that they can be killed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tts_tests::app::{VOICE, long_text};
use tts_tests::cluster::NatsCluster;
use tts_tests::wav::assert_plausible_speech;
use tts_tests::{Deployment, TestApp, spawn_app, spawn_app_with, spawn_worker_process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_of_one_engine_split_the_jobs() {
    let app = spawn_app(Deployment::GatewayOnly).await;
    let _a = spawn_worker_process(&app.settings, "worker-a");
    let _b = spawn_worker_process(&app.settings, "worker-b");
    app.wait_for_voice(VOICE, 2).await;

    let mut jobs = Vec::new();
    for i in 0..20 {
        jobs.push(
            app.submit_text(&format!("This is job number {i}. It has two sentences."))
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
    let job_id = app.submit_text(&text).await;
    assert_eq!(app.wait_running(&job_id).await, "doomed");
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

    let job_id = app.submit_text(&long_text()).await;
    app.wait_running(&job_id).await;
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
        let job_id = app.submit_text(&long_text()).await;
        assert_eq!(app.wait_running(&job_id).await, "doomed-1");
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

    // Another worker of the engine takes the server's advisory, kept in a stream however late
    // the worker starts, and records the failure.
    let _other = spawn_worker_process(&app.settings, "other");
    let job = app.wait_for_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["error"], "max_deliveries_exceeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(app.audio(&job_id).await.status(), 404);

    // The job is kept as a dead letter, which an admin lists and requeues; it then runs on the
    // worker that is left, under the same id.
    let letters = app.get_json("/api/admin/dead-letters").await;
    let letters = letters["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["job_id"], job_id.as_str());
    assert_eq!(letters[0]["reason"]["error"], "max_deliveries_exceeded");
    assert_eq!(letters[0]["deliveries"], 2);
    let requeue = |id: &str| {
        app.client
            .post(app.url(&format!("/api/admin/dead-letters/{id}/requeue")))
            .send()
    };
    let response = requeue(&job_id).await.unwrap();
    assert_eq!(response.status(), 202);
    let job = app.wait_for_job(&job_id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["worker"], "other", "{job}");
    assert_eq!(app.audio(&job_id).await.status(), 200);
    let letters = app.get_json("/api/admin/dead-letters").await;
    assert_eq!(letters["dead_letters"], json!([]));
    // Requeueing it again finds nothing to requeue.
    let again = requeue(&job_id).await.unwrap();
    assert_eq!(again.status(), 404);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"], "dead_letter_not_found");
}

/// The queue's side of a job that used up its deliveries: it is read from the jobs stream by its
/// sequence, kept as a dead letter (once, however often it is buried), taken out of the jobs
/// stream (a message already gone is no error), listed, found by its id, and requeued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_job_becomes_a_dead_letter_that_can_be_requeued() {
    use tts_contracts::{JobFailure, JobMessage};
    use tts_infra::JobQueue;

    let nats = tts_tests::NatsServer::start().await;
    let queue = nats.queue().await;
    let job = tts_tests::app::synthesis_job(Some("acme"));
    queue.enqueue(&job, None).await.unwrap();

    // The new stream's first message has sequence 1.
    let payload = queue.job_at(1).await.unwrap().expect("the job");
    assert_eq!(serde_json::from_slice::<JobMessage>(&payload).unwrap(), job);
    let reason = JobFailure {
        error: "max_deliveries_exceeded".into(),
        message: "delivered 3 times".into(),
    };
    queue.bury(&job, &reason, 3).await.unwrap();
    queue.bury(&job, &reason, 3).await.unwrap();
    queue.remove_job(1).await.unwrap();
    queue.remove_job(1).await.unwrap();
    queue.remove_job(99).await.unwrap();
    assert!(queue.job_at(1).await.unwrap().is_none());
    assert_eq!(queue.depth("piper").await.unwrap(), 0);

    let letters = queue.dead_letters(100).await.unwrap().expect("kept");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].job, job);
    assert_eq!(letters[0].reason, reason);
    assert_eq!(letters[0].deliveries, 3);
    let letter = queue
        .dead_letter(&job.job_id)
        .await
        .unwrap()
        .expect("found");
    assert!(
        queue
            .dead_letter(&uuid::Uuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );

    queue.requeue(&letter).await.unwrap();
    assert_eq!(queue.depth("piper").await.unwrap(), 1);
    assert!(queue.dead_letter(&job.job_id).await.unwrap().is_none());
    assert!(queue.dead_letters(100).await.unwrap().unwrap().is_empty());
}

/// Queues a job through `app`, retrying with the same idempotency key while the gateway answers
/// 503 (its NATS server died and the client is reconnecting, or the stream is electing a leader).
async fn submit_until_accepted(app: &TestApp, text: &str) -> String {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = app
            .submit(&json!({"text": text, "voice_id": VOICE}), Some(&key))
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status == 202 {
            return body["job_id"].as_str().unwrap().to_string();
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "never accepted: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server that leads the jobs stream now.
async fn stream_leader(js: &async_nats::jetstream::Context) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = js.get_stream(tts_contracts::subjects::JOBS_STREAM).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "the jobs stream has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server that holds the connection named `connection`, from each server's monitoring.
async fn server_holding(cluster: &NatsCluster, connection: &str) -> String {
    let client = reqwest::Client::new();
    for name in cluster.names() {
        let url = format!("{}/connz", cluster.monitoring(&name));
        let Ok(response) = client.get(url).send().await else {
            continue;
        };
        let connz: Value = response.json().await.unwrap();
        let holds = connz["connections"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == connection));
        if holds {
            return name;
        }
    }
    panic!("no server holds the connection {connection}");
}

/// Three servers, the streams at three replicas: killing the stream's leader, or the server the
/// gateway is connected to, while jobs are being queued loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_cluster_loses_no_job_when_a_server_dies() {
    let config = tts_tests::workspace_root().join("nats/nats-cluster.conf");
    let env = [
        ("TTS_NATS_GATEWAY_PASSWORD", "gateway-pass"),
        ("TTS_NATS_WORKER_PASSWORD", "worker-pass"),
    ];
    let mut cluster = NatsCluster::start(&config, &env).await;
    let storage = tempfile::tempdir().unwrap();
    let mut settings = tts_tests::test_settings(storage.path());
    settings.nats.url = cluster.urls();
    settings.nats.replicas = 3;
    let mut workers = settings.clone();
    workers.nats.user = "worker".into();
    workers.nats.password = "worker-pass".into();
    settings.nats.user = "gateway".into();
    settings.nats.password = "gateway-pass".into();
    let app = tts_tests::spawn_gateway(&settings).await;
    let _a = spawn_worker_process(&workers, "cluster-a");
    let _b = spawn_worker_process(&workers, "cluster-b");
    app.wait_for_voice(VOICE, 2).await;
    let servers: Vec<String> = settings
        .nats
        .servers()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let observer =
        async_nats::ConnectOptions::with_user_and_password("gateway".into(), "gateway-pass".into())
            .connect(servers)
            .await
            .unwrap();
    let js = async_nats::jetstream::new(observer);

    let mut all = Vec::new();
    for round in ["stream leader", "gateway's server"] {
        let mut victim = None;
        for i in 0..40 {
            if i == 10 {
                let name = if round == "stream leader" {
                    stream_leader(&js).await
                } else {
                    server_holding(&cluster, "voice-clone-tts gateway").await
                };
                cluster.kill(&name);
                victim = Some(name);
            }
            all.push(submit_until_accepted(&app, &format!("Job {i}, {round} round.")).await);
        }
        for job_id in &all {
            let job = app.wait_for_job(job_id, Duration::from_secs(180)).await;
            assert_eq!(job["status"], "succeeded", "{round}: {job}");
        }
        // Back to three servers before the next round.
        cluster.restart(&victim.expect("a server was killed")).await;
    }
    assert_eq!(app.audio.list("audio").await.unwrap().len(), all.len());
}
