//! Prometheus metrics after known traffic: the gateway counts requests by route and status and
//! refusals by code, and a worker process counts its jobs by outcome with their queue wait and
//! engine time, each on its own `/metrics`.

use std::time::Duration;

use serde_json::{Value, json};
use tts_config::ApiKeySettings;
use tts_gateway::auth::hash_key;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, TestApp, spawn_engines_with, spawn_worker_process, wait_until_listed};

/// The value of the sample `name` whose labels include every one of `labels`; 0 when there is
/// none yet.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(app: &TestApp, url: &str) -> String {
    let response = app.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{:?}",
        response.headers()
    );
    response.text().await.unwrap()
}

/// The tests of this binary share one metrics recorder (one process); the fleet's gauges are set
/// by whichever gateway is scraped, so the tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_worker_count_known_traffic() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |_| {}).await;
    let _worker = spawn_worker_process(&app.settings, "metrics-worker");
    app.wait_for_voice(VOICE, 1).await;
    let nodes = app.get_json("/api/nodes").await;
    let port = nodes["nodes"][0]["port"]
        .as_u64()
        .expect("the worker's port");
    let worker_metrics = format!("http://127.0.0.1:{port}/metrics");

    // Both processes count from their start, before anything scraped them: the worker's
    // heartbeats and the gateway's requests so far are already there.
    let gateway_before = scrape(&app, &app.url("/metrics")).await;
    assert!(
        sample(
            &gateway_before,
            "tts_http_requests_total",
            &[("route", "/api/nodes")]
        ) >= 1.0,
        "{gateway_before}"
    );
    let worker_before = scrape(&app, &worker_metrics).await;

    for text in ["One sentence.", "Another sentence."] {
        let response = app
            .synthesize(&json!({"text": text, "voice_id": VOICE}))
            .await;
        assert_eq!(response.status(), 200);
    }
    let refused = app
        .synthesize(&json!({"text": "Nobody.", "voice_id": "no-such-voice"}))
        .await;
    let refused_status = refused.status().as_u16().to_string();
    let refused_body: Value = refused.json().await.unwrap();
    let code = refused_body["error"].as_str().unwrap().to_string();

    let gateway = scrape(&app, &app.url("/metrics")).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&gateway, name, labels) - sample(&gateway_before, name, labels)
    };
    let route = ("route", "/api/synthesize");
    assert_eq!(
        delta(
            "tts_http_requests_total",
            &[route, ("method", "POST"), ("status", "200")]
        ),
        2.0,
        "{gateway}"
    );
    assert_eq!(
        delta(
            "tts_http_requests_total",
            &[route, ("status", &refused_status)]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "tts_http_refusals_total",
            &[("code", &code), ("status", &refused_status)]
        ),
        1.0
    );
    assert_eq!(
        delta("tts_http_request_duration_seconds_count", &[route]),
        3.0
    );
    assert_eq!(
        delta(
            "tts_jobs_submitted_total",
            &[("engine", "piper"), ("kind", "synthesize")]
        ),
        2.0
    );

    // The fleet as the gateway sees it at the scrape: piper's queue is empty again, and its one
    // worker (max_concurrent 2 in the tests' settings) is idle.
    let piper = [("engine", "piper")];
    for gauge in [
        "tts_queue_depth",
        "tts_workers_live",
        "tts_workers_capacity",
    ] {
        assert!(
            gateway.contains(&format!("{gauge}{{engine=\"piper\"}}")),
            "{gauge} is missing:\n{gateway}"
        );
    }
    assert_eq!(sample(&gateway, "tts_queue_depth", &piper), 0.0);
    assert_eq!(sample(&gateway, "tts_workers_live", &piper), 1.0);
    assert_eq!(sample(&gateway, "tts_workers_capacity", &piper), 2.0);
    // Enrollment jobs are counted as jobs of kind `enroll`; nothing was enrolled.
    assert_eq!(
        sample(&gateway, "tts_jobs_submitted_total", &[("kind", "enroll")]),
        0.0
    );

    // The worker's own process: its jobs, by outcome, timed.
    let worker = scrape(&app, &worker_metrics).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&worker, name, labels) - sample(&worker_before, name, labels)
    };
    let piper = ("engine", "piper");
    assert_eq!(
        delta(
            "tts_jobs_finished_total",
            &[piper, ("kind", "synthesize"), ("outcome", "succeeded")]
        ),
        2.0,
        "{worker}"
    );
    assert_eq!(delta("tts_job_queue_wait_seconds_count", &[piper]), 2.0);
    assert_eq!(delta("tts_job_engine_seconds_count", &[piper]), 2.0);
    assert_eq!(
        delta(
            "tts_job_total_seconds_count",
            &[piper, ("outcome", "succeeded")]
        ),
        2.0
    );
    assert_eq!(sample(&worker, "tts_worker_jobs_in_flight", &[piper]), 0.0);
    // The engine's time is part of the job's whole time.
    assert!(
        sample(&worker, "tts_job_engine_seconds_sum", &[piper])
            <= sample(&worker, "tts_job_total_seconds_sum", &[piper])
    );
}

const KEY: &str = "metrics-test-key-0123456789";

/// With `gateway.metrics_listen` the metrics have a listener of their own that needs no key,
/// while the API port keeps them for admin keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_of_their_own_serves_the_metrics_without_a_key() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.gateway.metrics_listen = "127.0.0.1:0".into();
        s.auth.mode = "on".into();
        s.auth.keys = vec![ApiKeySettings {
            name: "tenant".into(),
            tenant: "tenant".into(),
            sha256: hash_key(KEY),
            admin: false,
            rpm: None,
        }];
    })
    .await;
    let _worker = spawn_worker_process(&app.settings, "metrics-listener-worker");
    wait_until_listed(
        &app.client,
        &app.base_url,
        Some(KEY),
        VOICE,
        Duration::from_secs(120),
    )
    .await;
    let on_api_port = app.client.get(app.url("/metrics")).bearer_auth(KEY);
    assert_eq!(on_api_port.send().await.unwrap().status(), 403);
    let url = app.metrics_url.clone().expect("a metrics listener");
    let page = scrape(&app, &url).await;
    assert!(page.contains("tts_http_requests_total"), "{page}");
    assert_eq!(
        sample(&page, "tts_workers_live", &[("engine", "piper")]),
        1.0
    );
    // Only the metrics: the API is not served there.
    let base = url.trim_end_matches("/metrics");
    let voices = app.client.get(format!("{base}/api/voices")).send().await;
    assert_eq!(voices.unwrap().status(), 404);
}
