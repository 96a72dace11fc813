//! Prometheus metrics after known traffic: the gateway counts requests by route and status and
//! refusals by code, and a worker process counts its jobs by outcome with their queue wait and
//! engine time, each on its own `/metrics`.

use serde_json::{Value, json};
use tts_tests::app::VOICE;
use tts_tests::{Deployment, TestApp, spawn_engines_with, spawn_worker_process};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_worker_count_known_traffic() {
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
