//! The edges where work or time used to be lost: request bodies refused while the client is
//! still sending, idempotent sync synthesis, and answers while a dependency is down.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tts_infra::{JobStore, MemoryJobStore, RedisJobStore};
use tts_tests::app::VOICE;
use tts_tests::{Deployment, RedisServer, TestApp, spawn_app, spawn_app_with};

tts_tests::in_both_deployments!(
    over_long_bodies_are_refused_unread_and_drained,
    sync_synthesis_takes_an_idempotency_key,
);

/// One HTTP/1.1 response read off a raw connection: status, headers (lower-case names) and body.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Reads one response whose body has a Content-Length, leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let read = async {
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("the response arrives");
            assert!(n > 0, "the connection closed before a response");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buffer[..head_end].to_vec()).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("a content-length");
        let mut body = buffer[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("the body arrives");
            assert!(n > 0, "the connection closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        RawResponse {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a response within 30 s")
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base_url.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("the gateway accepts")
}

fn post_head(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

async fn over_long_bodies_are_refused_unread_and_drained(app: TestApp) {
    let limit = app.settings.gateway.max_json_bytes;
    for path in ["/api/jobs", "/api/synthesize"] {
        // Only the headers: the answer comes from Content-Length alone, without waiting for a
        // body that is not coming.
        let mut stream = connect(&app).await;
        stream
            .write_all(post_head(path, 10 * 1024 * 1024).as_bytes())
            .await
            .unwrap();
        let refused = read_response(&mut stream).await;
        assert_eq!(refused.status, 413);
        assert!(
            refused
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/json"))
        );
        assert_eq!(refused.json()["error"], "payload_too_large");

        // A body one byte over the limit, sent whole: the client hears the 413, and the body is
        // drained rather than reset, so the same connection serves the next request.
        let mut stream = connect(&app).await;
        stream
            .write_all(post_head(path, limit + 1).as_bytes())
            .await
            .unwrap();
        stream.write_all(&vec![b' '; limit + 1]).await.unwrap();
        let refused = read_response(&mut stream).await;
        assert_eq!(refused.status, 413);
        assert_eq!(refused.json()["error"], "payload_too_large");
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let health = read_response(&mut stream).await;
        assert_eq!(health.status, 200, "{}", health.json());
    }

    // An upload declaring more than the upload limit is refused before it is read.
    let mut stream = connect(&app).await;
    let upload_limit = app.settings.voices.max_upload_bytes + 1024 * 1024;
    stream
        .write_all(
            format!(
                "POST /api/voices HTTP/1.1\r\nHost: test\r\n\
                 Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {}\r\n\r\n",
                upload_limit + 1
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let refused = read_response(&mut stream).await;
    assert_eq!(refused.status, 413);
    assert_eq!(refused.json()["error"], "payload_too_large");

    // A client that sends a whole 1 MiB body, again and again, always reads its 413.
    for _ in 0..20 {
        let response = app
            .post_raw("/api/jobs", Some("application/json"), vec![b' '; 1 << 20])
            .await;
        assert_eq!(response.status(), 413);
    }
}

async fn sync_synthesis_takes_an_idempotency_key(app: TestApp) {
    let body = json!({"text": "Say this once, whatever happens.", "voice_id": VOICE});
    let key = format!("sync-{}", uuid::Uuid::new_v4());
    let sync = |app: &TestApp| {
        app.client
            .post(app.url("/api/synthesize"))
            .header("Idempotency-Key", key.clone())
            .json(&body)
            .send()
    };
    let first = sync(&app).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let job_id = first.headers()["x-job-id"].to_str().unwrap().to_string();
    let audio = first.bytes().await.unwrap();

    // A client that lost the answer retries with the same key and gets the same job's audio,
    // through this gateway or, in distributed mode, through another one.
    let mut gateways = vec![&app];
    let other;
    if app.nats.is_some() {
        other = tts_tests::spawn_gateway(&app.settings).await;
        other.wait_for_voice(VOICE, 1).await;
        gateways.push(&other);
    }
    for gateway in gateways {
        let again = sync(gateway).await.unwrap();
        assert_eq!(again.status(), 200);
        assert_eq!(again.headers()["x-job-id"], job_id.as_str());
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.bytes().await.unwrap(), audio);
    }
    // The key names the job for POST /api/jobs too.
    let accepted = app.submit(&body, Some(&key)).await;
    assert_eq!(accepted.status(), 202);
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["job_id"], job_id.as_str());
    assert_eq!(accepted["status"], "succeeded");

    // And a key first used for an async job gives that job's audio to a sync request.
    let key = format!("async-{}", uuid::Uuid::new_v4());
    let accepted: Value = app.submit(&body, Some(&key)).await.json().await.unwrap();
    let response = app
        .client
        .post(app.url("/api/synthesize"))
        .header("Idempotency-Key", key.as_str())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-job-id"],
        accepted["job_id"].as_str().unwrap()
    );
    let bad = app
        .client
        .post(app.url("/api/synthesize"))
        .header("Idempotency-Key", "has space")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"],
        "invalid_idempotency_key"
    );
}

/// A claim whose first attempt landed but whose answer was lost is retried with the same job
/// id: the key is that job's, not a replay of it (which would leave the job never queued).
async fn a_retried_claim_is_still_the_claimers(store: &dyn JobStore) {
    let key = format!("retried-{}", uuid::Uuid::new_v4());
    let mine = uuid::Uuid::new_v4();
    assert_eq!(
        store.claim_idempotency_key(&key, &mine).await.unwrap(),
        None
    );
    assert_eq!(
        store.claim_idempotency_key(&key, &mine).await.unwrap(),
        None
    );
    let other = uuid::Uuid::new_v4();
    assert_eq!(
        store.claim_idempotency_key(&key, &other).await.unwrap(),
        Some(mine)
    );
    // Releasing it for another job changes nothing; releasing it for its own frees it.
    store.release_idempotency_key(&key, &other).await.unwrap();
    assert_eq!(
        store.claim_idempotency_key(&key, &other).await.unwrap(),
        Some(mine)
    );
    store.release_idempotency_key(&key, &mine).await.unwrap();
    assert_eq!(
        store.claim_idempotency_key(&key, &other).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_retried_idempotency_claim_is_not_a_replay_in_memory() {
    let store = MemoryJobStore::new(Duration::from_secs(60), Duration::from_secs(60));
    a_retried_claim_is_still_the_claimers(&store).await;
}

#[tokio::test]
async fn a_retried_idempotency_claim_is_not_a_replay_in_redis() {
    a_retried_claim_is_still_the_claimers(&redis_job_store().await).await;
}

/// A job store on the machine's Redis, under a prefix of its own.
async fn redis_job_store() -> RedisJobStore {
    let prefix = format!("tts-test-{}", uuid::Uuid::new_v4().simple());
    RedisJobStore::connect(
        &tts_tests::redis_url(),
        &prefix,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

/// A worker starts an attempt with one call to the job store: the record becomes `running` at
/// that attempt on that worker, keeps the time of its first start and every field the gateway
/// wrote, and loses an earlier attempt's progress; a terminal record is returned as it was and
/// left alone; a missing one is `None`.
async fn starting_an_attempt_marks_the_record_running_unless_terminal(store: &dyn JobStore) {
    use tts_contracts::{AudioFormat, JobRecord, JobStatus};
    let message = tts_tests::app::synthesis_job(Some("acme"));
    let mut queued = JobRecord::queued(&message);
    queued.format = Some(AudioFormat::Mp3);
    assert!(store.put(&queued).await.unwrap());

    let first = store.start(&message.job_id, 1, "worker-a").await.unwrap();
    let first = first.expect("the record");
    assert_eq!(first.status, JobStatus::Running);
    assert_eq!(
        (first.attempts, first.worker.as_deref()),
        (1, Some("worker-a"))
    );
    let started_at = first.started_at.expect("a start time");
    assert_eq!(first.updated_at, started_at);
    assert_eq!(
        (
            &first.tenant,
            first.format,
            first.created_at,
            &first.voice_id
        ),
        (
            &queued.tenant,
            queued.format,
            queued.created_at,
            &queued.voice_id
        )
    );
    assert_eq!(
        store.get(&message.job_id).await.unwrap(),
        Some(first.clone())
    );

    // The first attempt got halfway, then the job went back to the queue.
    let mut requeued = first.clone();
    assert!(requeued.progress(0.5) && requeued.requeue());
    assert!(store.put(&requeued).await.unwrap());
    let second = store.start(&message.job_id, 2, "worker-b").await.unwrap();
    let second = second.expect("the record");
    assert_eq!(second.status, JobStatus::Running);
    assert_eq!(
        (second.attempts, second.worker.as_deref()),
        (2, Some("worker-b"))
    );
    assert_eq!(
        (second.progress, second.started_at),
        (0.0, Some(started_at))
    );
    assert!(second.updated_at >= requeued.updated_at);

    let mut cancelled = second.clone();
    assert!(cancelled.cancel());
    assert!(store.put(&cancelled).await.unwrap());
    let third = store.start(&message.job_id, 3, "worker-c").await.unwrap();
    assert_eq!(third, Some(cancelled.clone()));
    assert_eq!(store.get(&message.job_id).await.unwrap(), Some(cancelled));

    let missing = uuid::Uuid::new_v4();
    assert_eq!(store.start(&missing, 1, "worker-a").await.unwrap(), None);
    assert_eq!(store.get(&missing).await.unwrap(), None);
}

#[tokio::test]
async fn starting_an_attempt_in_memory() {
    let store = MemoryJobStore::new(Duration::from_secs(60), Duration::from_secs(60));
    starting_an_attempt_marks_the_record_running_unless_terminal(&store).await;
}

#[tokio::test]
async fn starting_an_attempt_in_redis() {
    starting_an_attempt_marks_the_record_running_unless_terminal(&redis_job_store().await).await;
}

/// Sends `request` and says how long the answer took.
async fn timed(request: reqwest::RequestBuilder) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let response = request.send().await.expect("an answer");
    (response, started.elapsed())
}

/// What "at once" means here: far below the connection timeouts that an outage used to cost
/// (10 to 20 s), with room for a loaded machine.
const PROMPT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_api_answers_503_at_once_and_recovers_by_itself() {
    let mut redis = RedisServer::start_async().await;
    let url = redis.url();
    let app = spawn_app_with(Deployment::Distributed, |s| s.redis.url = url).await;
    let accepted: Value = app
        .submit(
            &json!({"text": "Before the outage.", "voice_id": VOICE}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    app.wait_for_job(&job_id, Duration::from_secs(60)).await;

    redis.stop();
    let health = app.wait_for_health(503).await;
    assert_eq!(
        health["dependencies"]["job_store"]["status"], "down",
        "{health}"
    );
    let reason = health["dependencies"]["job_store"]["reason"]
        .as_str()
        .unwrap();
    assert!(
        !reason.is_empty() && !reason.contains("127.0.0.1"),
        "{health}"
    );
    assert_eq!(health["dependencies"]["queue"]["status"], "up", "{health}");

    for _ in 0..3 {
        let (response, took) = timed(app.client.get(app.url("/health"))).await;
        assert_eq!(response.status(), 503);
        assert!(took < PROMPT, "/health took {took:?}");
        let (response, took) = timed(app.client.get(app.url(&format!("/api/jobs/{job_id}")))).await;
        assert!(took < PROMPT, "a job lookup took {took:?}");
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "service_unavailable", "{body}");
        assert!(body["retry_after"].as_u64().unwrap() >= 1, "{body}");
        let (response, took) = timed(
            app.client
                .post(app.url("/api/synthesize"))
                .json(&json!({"text": "During the outage.", "voice_id": VOICE})),
        )
        .await;
        assert!(took < PROMPT, "a sync request took {took:?}");
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
    }

    // Back again (empty, as a Redis without persistence restarts): the gateway and the worker
    // reconnect by themselves.
    redis.restart().await;
    app.wait_for_health(200).await;
    let response = app
        .synthesize(&json!({"text": "After the outage.", "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_its_dependencies_about_once_a_second_however_often_asked() {
    let redis = RedisServer::start_async().await;
    let url = redis.url();
    let app = spawn_app_with(Deployment::Distributed, |s| s.redis.url = url).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pings = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
            .and_then(|l| l.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    let before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let asks = (0..50).map(|_| app.client.get(app.url("/health")).send());
    for response in futures::future::join_all(asks).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let seconds = started.elapsed().as_secs();
    let after: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let probes = pings(after) - pings(before);
    // One probe a second at most (plus the one in flight at each boundary).
    assert!(
        probes <= seconds + 2,
        "{probes} probes in {seconds} s for 50 asks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_sync_requests_answer_503_at_once_and_recover() {
    let mut app = spawn_app(Deployment::Distributed).await;
    app.nats.as_mut().unwrap().stop();
    let health = app.wait_for_health(503).await;
    assert_eq!(
        health["dependencies"]["queue"]["status"], "down",
        "{health}"
    );
    assert_eq!(
        health["dependencies"]["queue"]["reason"], "not connected to NATS",
        "{health}"
    );
    for path in ["/api/synthesize", "/api/jobs"] {
        let (response, took) = timed(
            app.client
                .post(app.url(path))
                .json(&json!({"text": "During the outage.", "voice_id": VOICE})),
        )
        .await;
        assert!(took < PROMPT, "{path} took {took:?}");
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
    }
    app.nats.as_mut().unwrap().restart().await;
    app.wait_for_health(200).await;
    app.wait_for_voice(VOICE, 1).await;
    let response = app
        .synthesize(&json!({"text": "Back again.", "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_for_an_engine_without_workers_says_when_to_retry() {
    let app = spawn_app(Deployment::Standalone).await;
    // xtts is configured but no worker runs it here.
    let response = app
        .upload_voice(
            b"not checked before the engine".to_vec(),
            "clip.wav",
            &[("name", "Someone"), ("language", "en"), ("engine", "xtts")],
        )
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "engine_unavailable", "{body}");
    assert!(body["retry_after"].as_u64().unwrap() >= 1, "{body}");
}
