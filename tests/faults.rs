//! Faults a deployment meets in production: servers that are down when a process starts, and
//! servers that die while it runs. Every server here is the test's own, on a port it picked
//! itself, and is killed and restarted by the test.

use std::time::Duration;

use serde_json::json;
use tts_tests::app::{
    VOICE, binary, listening_addr, spawn_worker_process_logged, start_gateway_process_from,
};
use tts_tests::wait_until_listed;
use tts_tests::wav::assert_plausible_speech;
use tts_tests::{NatsServer, spawn_gateway_process, spawn_worker_process, test_settings};

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
