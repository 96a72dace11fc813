//! Processes killed, frozen and restarted under load: a worker SIGKILLed among 200 jobs, NATS
//! killed and restarted on its file store, a worker frozen past its ack wait and then resumed,
//! a job that fails on every delivery, and Redis restarted with jobs in flight. Each test owns
//! its servers; each waits for the state it needs, never for a fixed time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tts_tests::app::{VOICE, long_text, spawn_worker_process_logged_with_env};
use tts_tests::faults::{
    LOG_SETTLED, POISONED, PoisonEngine, audio_keys, audio_objects, read_jobs, settled_outcome,
    timed, wait_for_jobs,
};
use tts_tests::{
    Deployment, RedisServer, spawn_app, spawn_app_with, spawn_with_engines, spawn_worker_process,
};
use voice_clone_tts::SuppliedEngines;

/// Asserts that a refusal is the API's JSON 503, which tells the client to come back.
async fn assert_unavailable(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 503, "{what}");
    assert!(response.headers().contains_key("retry-after"), "{what}");
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["error"], "service_unavailable", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_jobs_survive_a_worker_killed_mid_load() {
    const JOBS: usize = 200;
    let app = spawn_app(Deployment::GatewayOnly).await;
    let mut victim = spawn_worker_process(&app.settings, "victim");
    let _survivor = spawn_worker_process(&app.settings, "survivor");
    app.wait_for_voice(VOICE, 2).await;

    let ids: Vec<String> = futures::stream::iter(0..JOBS)
        .map(|i| {
            let app = &app;
            async move { app.submit_text(&format!("This is job number {i}.")).await }
        })
        .buffered(8)
        .collect()
        .await;

    // The victim is frozen while the test reads where the load stands, so that what it is
    // running stays unfinished; once some jobs are done, others wait and the victim holds one,
    // it dies with them.
    let deadline = Instant::now() + Duration::from_secs(180);
    let orphans: Vec<String> = loop {
        victim.suspend();
        let records = read_jobs(&app, &ids).await;
        let succeeded = records
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count();
        let waiting = records.iter().filter(|r| r["status"] == "queued").count();
        let held: Vec<String> = records
            .iter()
            .filter(|r| r["status"] == "running" && r["worker"] == "victim")
            .map(|r| r["job_id"].as_str().unwrap().to_string())
            .collect();
        if succeeded >= 10 && waiting > 0 && !held.is_empty() {
            victim.kill();
            break held;
        }
        victim.resume();
        assert!(
            Instant::now() < deadline && waiting > 0,
            "the load never reached mid-course with the victim at work: {succeeded} succeeded, \
             {waiting} queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let records = wait_for_jobs(&app, &ids, Duration::from_secs(240)).await;
    let mut by_worker: HashMap<&str, usize> = HashMap::new();
    for record in &records {
        assert_eq!(record["status"], "succeeded", "{record}");
        *by_worker
            .entry(record["worker"].as_str().unwrap())
            .or_default() += 1;
    }
    assert!(
        by_worker.get("victim").is_some_and(|n| *n > 0),
        "{by_worker:?}"
    );
    // What the victim held when it died was delivered again, to the one worker left.
    for orphan in &orphans {
        let record = records.iter().find(|r| r["job_id"] == orphan.as_str());
        let record = record.unwrap();
        assert_eq!(record["worker"], "survivor", "{record}");
        assert!(record["attempts"].as_u64().unwrap() >= 2, "{record}");
    }
    assert_eq!(audio_objects(&app).await, audio_keys(&ids));
}

/// Polls `ready` until it holds, failing after a minute with `what` was awaited.
async fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one submission got: its status and its body (the job, or the refusal).
struct Submission {
    status: u16,
    body: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_mid_load_loses_no_accepted_job() {
    let mut app = spawn_app(Deployment::GatewayOnly).await;
    let _worker = spawn_worker_process(&app.settings, "steady");
    app.wait_for_voice(VOICE, 1).await;

    // A client that submits one job after another throughout, keeping every answer.
    let submissions: Arc<Mutex<Vec<Submission>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (submissions, done) = (submissions.clone(), done.clone());
        let (http, url) = (app.client.clone(), app.url("/api/jobs"));
        tokio::spawn(async move {
            let mut n = 0;
            while !done.load(Ordering::SeqCst) {
                n += 1;
                let response = http
                    .post(&url)
                    .json(&json!({"text": format!("Submission {n} arrives."), "voice_id": VOICE}))
                    .send()
                    .await
                    .expect("the gateway answers");
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                submissions
                    .lock()
                    .unwrap()
                    .push(Submission { status, body });
                // A client's pace, not a wait for anything.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let count = |status: u16| {
        submissions
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.status == status)
            .count()
    };

    wait_until("ten submissions accepted", || count(202) >= 10).await;
    // A burst on top, so that jobs are surely waiting in the stream when its server dies.
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.push(
            app.submit_text(&format!("Burst job {i} waits its turn."))
                .await,
        );
    }
    let nats = app.nats.as_mut().unwrap();
    nats.stop();
    let refused_before = count(503);
    wait_until("three submissions refused during the outage", || {
        count(503) >= refused_before + 3
    })
    .await;
    nats.restart().await;
    let accepted_before = count(202);
    wait_until("ten submissions accepted after the restart", || {
        count(202) >= accepted_before + 10
    })
    .await;
    done.store(true, Ordering::SeqCst);
    client.await.unwrap();

    let submissions = std::mem::take(&mut *submissions.lock().unwrap());
    let mut accepted = burst;
    for submission in &submissions {
        match submission.status {
            202 => accepted.push(submission.body["job_id"].as_str().unwrap().to_string()),
            503 => assert_eq!(
                submission.body["error"], "service_unavailable",
                "{}",
                submission.body
            ),
            other => panic!("a submission answered {other}: {}", submission.body),
        }
    }
    let records = wait_for_jobs(&app, &accepted, Duration::from_secs(180)).await;
    for record in &records {
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    let objects = audio_objects(&app).await;
    assert!(objects.is_superset(&audio_keys(&accepted)), "{objects:?}");
}

/// The pulls of one source, several waiting at once on the inboxes it keeps between pulls, take
/// every job exactly once, before NATS is killed and restarted on its file store and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_waiting_at_once_take_each_job_once_across_a_nats_restart() {
    use std::collections::HashSet;
    use tts_contracts::JobMessage;
    use tts_infra::{JobQueue, JobSource};

    let mut nats = tts_tests::NatsServer::start().await;
    let queue = nats.queue().await;
    let source = Arc::new(queue.source("piper").await.unwrap());
    for round in 0..2 {
        let mut queued = HashSet::new();
        for _ in 0..40 {
            let job = tts_tests::app::synthesis_job(None);
            // Right after the restart the server may still be loading its streams.
            while queue.enqueue(&job, None).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            queued.insert(job.job_id);
        }
        let taken = Arc::new(Mutex::new(Vec::new()));
        let pullers: Vec<_> = (0..4)
            .map(|_| {
                let (source, taken) = (source.clone(), taken.clone());
                tokio::spawn(async move {
                    while taken.lock().unwrap().len() < 40 {
                        // A pull that was waiting when the server went down ends with nothing.
                        let Ok(Some(delivery)) = source.next(Duration::from_millis(500)).await
                        else {
                            continue;
                        };
                        let job: JobMessage = serde_json::from_slice(delivery.payload()).unwrap();
                        delivery.ack().await.unwrap();
                        taken.lock().unwrap().push(job.job_id);
                    }
                })
            })
            .collect();
        let all_taken = async {
            for puller in pullers {
                puller.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(120), all_taken)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the pulls did not take every job"));
        let taken = taken.lock().unwrap().clone();
        assert_eq!(taken.len(), 40, "round {round}: each job once: {taken:?}");
        assert_eq!(
            taken.into_iter().collect::<HashSet<_>>(),
            queued,
            "round {round}"
        );
        assert_eq!(queue.depth("piper").await.unwrap(), 0, "round {round}");
        if round == 0 {
            nats.restart().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_ack_wait_leaves_the_job_to_another() {
    let app = spawn_app(Deployment::GatewayOnly).await;
    let (frozen, mut frozen_log) =
        spawn_worker_process_logged_with_env(&app.settings, "frozen", &[("RUST_LOG", LOG_SETTLED)]);
    app.wait_for_voice(VOICE, 1).await;
    let job_id = app.submit_text(&long_text()).await;
    assert_eq!(app.wait_running(&job_id).await, "frozen");
    frozen.suspend();

    // Frozen, the worker sends no progress acks, so the queue hands the job on after its ack
    // wait to the worker that starts now.
    let _rescuer = spawn_worker_process(&app.settings, "rescuer");
    let done = app.wait_for_job(&job_id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["worker"], "rescuer", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
    let key = tts_contracts::audio_key(&job_id.parse().unwrap());
    let stored = app.audio.get(&key).await.unwrap().expect("the audio");

    // Thawed, the first worker finds its attempt overtaken and settles it without a trace.
    frozen.resume();
    let outcome = frozen_log
        .wait_for(Duration::from_secs(120), settled_outcome)
        .await
        .expect("the thawed worker settles its delivery");
    assert_eq!(outcome, "Duplicate");
    assert_eq!(app.job(&job_id).await, done);
    assert_eq!(app.audio.get(&key).await.unwrap(), Some(stored));
    assert_eq!(audio_objects(&app).await, [key].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_on_every_delivery_ends_failed_and_the_worker_serves_on() {
    const POISON: &str = "This sentence trips the engine.";
    const MAX_DELIVER: i64 = 3;
    let engine = PoisonEngine::new(POISON);
    let engines = SuppliedEngines::from([(
        "piper".to_string(),
        engine.clone() as Arc<dyn tts_worker::Engine>,
    )]);
    let app = spawn_with_engines(Deployment::Distributed, engines, |s| {
        s.worker.max_deliver = MAX_DELIVER;
    })
    .await;

    let poisoned = app.submit_text(POISON).await;
    let failed = app.wait_for_job(&poisoned, Duration::from_secs(120)).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["error"], POISONED, "{failed}");
    assert_eq!(failed["attempts"], MAX_DELIVER, "{failed}");
    assert_eq!(engine.poisoned_calls(), MAX_DELIVER as usize);
    assert_eq!(app.audio(&poisoned).await.status(), 404);

    let next = app.submit_text("The worker is still here.").await;
    let done = app.wait_for_job(&next, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(app.audio(&next).await.status(), 200);
    // The failed job was terminated, not left to come round again.
    assert_eq!(engine.poisoned_calls(), MAX_DELIVER as usize);
    assert_eq!(app.job(&poisoned).await["status"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_jobs_in_flight_answers_503_promptly_and_finishes_them() {
    const PROMPT: Duration = Duration::from_secs(1);
    let mut redis = RedisServer::start_async().await;
    let url = redis.url();
    // Few deliveries, so that the outage outlasts them all: a job must wait for the store, not
    // spend its deliveries on it.
    let app = spawn_app_with(Deployment::GatewayOnly, |s| {
        s.redis.url = url;
        s.worker.max_deliver = 3;
    })
    .await;
    let _worker = spawn_worker_process(&app.settings, "steadfast");
    app.wait_for_voice(VOICE, 1).await;

    let text = "A job in flight when the store goes away. It has a few sentences. Each one takes \
                a moment to speak.";
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        in_flight.push(app.submit_text(text).await);
    }
    app.wait_running(&in_flight[0]).await;

    redis.stop();
    // Every request the outage meets is refused at once, whatever it asks, for as long as it
    // lasts.
    let outage = Instant::now();
    let mut asked = 0;
    let lasts = Duration::from_secs(
        (app.settings.worker.max_deliver as u64 + 2) * app.settings.worker.retry_delay_secs,
    );
    while outage.elapsed() < lasts {
        let requests = [
            (
                "a job lookup",
                app.client
                    .get(app.url(&format!("/api/jobs/{}", in_flight[0]))),
            ),
            (
                "a submission",
                app.client
                    .post(app.url("/api/jobs"))
                    .json(&json!({"text": "During the outage.", "voice_id": VOICE})),
            ),
            (
                "a sync request",
                app.client
                    .post(app.url("/api/synthesize"))
                    .json(&json!({"text": "During the outage.", "voice_id": VOICE})),
            ),
        ];
        for (what, request) in requests {
            let (response, took) = timed(request).await;
            assert!(took < PROMPT, "{what} took {took:?}");
            assert_unavailable(response, what).await;
            asked += 1;
        }
        // A client's pace, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(asked >= 9, "{asked} requests in the outage");

    // Back, empty, as a Redis without persistence restarts: nothing else is restarted.
    redis.restart().await;
    app.wait_for_health(200).await;
    let records = wait_for_jobs(&app, &in_flight, Duration::from_secs(120)).await;
    for record in &records {
        assert_eq!(record["status"], "succeeded", "{record}");
    }
    let after = app.submit_text("After the outage.").await;
    let done = app.wait_for_job(&after, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    in_flight.push(after);
    assert_eq!(audio_objects(&app).await, audio_keys(&in_flight));
}
