//! The worker fleet as gateways see it (`GET /api/nodes`, the `/ws` stream), and scaling out:
//! two gateways and three workers of one engine on one NATS and Redis.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tts_contracts::{JobEvent, JobStatus, subjects};
use tts_infra::{JobStore, RedisJobStore};
use tts_tests::app::VOICE;
use tts_tests::{Deployment, spawn_engines_with, spawn_gateway, spawn_worker_process};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads fleet messages until one satisfies `done`; returns it.
async fn until(
    socket: &mut Socket,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .expect("a fleet change in time")
            .expect("the socket stays open")
            .expect("a message");
        if let Message::Text(text) = message {
            let body: Value = serde_json::from_str(&text).unwrap();
            let nodes = body["nodes"]
                .as_array()
                .expect("{\"nodes\": [...]}")
                .clone();
            if done(&nodes) {
                return nodes;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_stream_follows_workers_joining_leaving_and_dying() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.gateway.dead_threshold = 3;
    })
    .await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(app.url("/ws").replacen("http", "ws", 1))
            .await
            .expect("the fleet socket opens");
    until(&mut socket, Duration::from_secs(5), |nodes| {
        nodes.is_empty()
    })
    .await;

    let mut first = spawn_worker_process(&app.settings, "fleet-a");
    let mut second = spawn_worker_process(&app.settings, "fleet-b");
    let nodes = until(&mut socket, Duration::from_secs(60), |nodes| {
        nodes.len() == 2
    })
    .await;
    for node in &nodes {
        assert_eq!(node["engine"], "piper", "{node}");
        assert_eq!(node["status"], "online", "{node}");
        assert_eq!(node["max_concurrent"], app.settings.worker.max_concurrent);
        for field in ["node_id", "host", "port", "current_load", "last_seen"] {
            assert!(node.get(field).is_some(), "{field} missing: {node}");
        }
        // Each worker's health server took a port of its own choosing; the heartbeat says which.
        let port = node["port"].as_u64().unwrap();
        let health: Value = app
            .client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["node"]["node_id"], node["node_id"], "{health}");
    }
    let listed = app.get_json("/api/nodes").await;
    let ids: BTreeSet<&str> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["fleet-a", "fleet-b"]));

    // A clean stop is announced at once; a killed worker after dead_threshold (3 s).
    let stopped = Instant::now();
    assert!(first.terminate().success());
    let nodes = until(&mut socket, Duration::from_secs(10), |nodes| {
        nodes.len() == 1
    })
    .await;
    assert_eq!(nodes[0]["node_id"], "fleet-b");
    second.kill();
    until(&mut socket, Duration::from_secs(15), |nodes| {
        nodes.is_empty()
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(20));

    let plain = app.client.get(app.url("/ws")).send().await.unwrap();
    assert_eq!(plain.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_and_three_workers_share_the_jobs_and_the_limits() {
    // Clients come through a proxy on this machine, each with its own address.
    let first = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.gateway.trusted_proxies = vec!["127.0.0.1".into()];
        s.gateway.ip_rpm = 40;
        // The whole minute's quota at once: the clients below send theirs in one go.
        s.gateway.rate_burst_percent = 100;
        s.worker.max_concurrent = 2;
    })
    .await;
    let second = spawn_gateway(&first.settings).await;
    let workers: Vec<_> = ["scale-1", "scale-2", "scale-3"]
        .iter()
        .map(|id| spawn_worker_process(&first.settings, id))
        .collect();
    // Waiting goes through a fleet socket, which is one request, not a poll.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(second.url("/ws").replacen("http", "ws", 1))
            .await
            .unwrap();
    until(&mut socket, Duration::from_secs(90), |nodes| {
        nodes.len() == 3
    })
    .await;

    // Sixty sync requests from three clients (20 each, under their 40), alternating gateways.
    let requests = (0..60).map(|i| {
        let gateway = if i % 2 == 0 { &first } else { &second };
        let client = gateway.client.clone();
        let url = gateway.url("/api/synthesize");
        async move {
            let response = client
                .post(url)
                .header("x-forwarded-for", format!("203.0.113.{}", i % 3))
                .json(&json!({"text": format!("Job number {i}."), "voice_id": VOICE}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "job {i}");
            response.headers()["x-job-id"].to_str().unwrap().to_string()
        }
    });
    let job_ids: Vec<String> = futures::future::join_all(requests).await;

    let store = RedisJobStore::connect(
        &first.settings.redis.url,
        &first.settings.redis.key_prefix,
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let mut ran_on = BTreeSet::new();
    for id in &job_ids {
        let record = store
            .get(&id.parse().unwrap())
            .await
            .unwrap()
            .expect("a record");
        assert_eq!(record.status.as_str(), "succeeded");
        ran_on.insert(record.worker.expect("the worker is recorded"));
    }
    assert_eq!(ran_on.len(), 3, "every worker took some jobs: {ran_on:?}");

    // One client's 40 a minute hold across both gateways together.
    let from = |gateway: &tts_tests::TestApp| {
        gateway
            .client
            .get(gateway.url("/api/voices"))
            .header("x-forwarded-for", "198.51.100.9")
            .send()
    };
    for i in 0..40 {
        let gateway = if i % 2 == 0 { &first } else { &second };
        assert_eq!(from(gateway).await.unwrap().status(), 200, "request {i}");
    }
    assert_eq!(from(&first).await.unwrap().status(), 429);
    assert_eq!(from(&second).await.unwrap().status(), 429);
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_sigterm_finishes_sync_requests_closes_websockets_and_exits_cleanly() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |_| {}).await;
    let _worker = spawn_worker_process(&app.settings, "sigterm-worker");
    let (mut gateway, url) = tts_tests::spawn_gateway_process(&app.settings).await;
    let client = reqwest::Client::new();
    // Ready once it serves the voice.
    tts_tests::wait_until_listed(&client, &url, None, VOICE, Duration::from_secs(90)).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{}/ws", url.replacen("http", "ws", 1)))
            .await
            .unwrap();
    until(&mut socket, Duration::from_secs(10), |nodes| {
        !nodes.is_empty()
    })
    .await;

    // The sync request is in flight once its job runs, which the worker announces on the job's
    // events: listen to the events of every job before sending it.
    let nats = async_nats::connect(&app.settings.nats.url).await.unwrap();
    let mut events = nats.subscribe(subjects::job_events(&"*")).await.unwrap();
    nats.flush().await.unwrap();

    let long_text = "The quick brown fox jumps over the lazy dog. ".repeat(10);
    let sync = {
        let client = client.clone();
        let url = format!("{url}/api/synthesize");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"text": long_text, "voice_id": VOICE}))
                .send()
                .await
                .expect("the in-flight request is answered")
        })
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(message) = events.next().await {
            let event: JobEvent = serde_json::from_slice(&message.payload).expect("an event");
            if event.status == JobStatus::Running {
                return;
            }
        }
        panic!("the event subscription ended");
    })
    .await
    .expect("the job of the sync request runs");
    let status = tokio::task::spawn_blocking(move || gateway.terminate());

    // The WebSocket is told the gateway is going away.
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = socket.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame;
            }
        }
        None
    })
    .await
    .expect("a close frame in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1001);

    // The sync request in flight finishes with its audio.
    let response = sync.await.unwrap();
    assert_eq!(response.status(), 200);
    tts_tests::wav::assert_plausible_speech(&response.bytes().await.unwrap(), 90);

    assert!(status.await.unwrap().success(), "exit status 0");
    // New requests are refused: nothing listens any more.
    assert!(client.get(format!("{url}/health")).send().await.is_err());
}
