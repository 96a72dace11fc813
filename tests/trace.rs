//! One job traceable from request to audio: every request has an id, and the trace a request
//! starts (or brings) crosses the queue into the worker's log lines about the job.

use std::time::Duration;

use serde_json::{Value, json};
use tts_tests::app::{VOICE, spawn_worker_process_logged};
use tts_tests::{Deployment, spawn_engines_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_keeps_its_id_and_its_trace_reaches_the_workers_log() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |_| {}).await;
    let (_worker, mut logs) = spawn_worker_process_logged(&app.settings, "traced-worker");
    app.wait_for_voice(VOICE, 1).await;

    // A request without an id is given one.
    let response = app.client.get(app.url("/api/voices")).send().await.unwrap();
    let given = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(given).is_ok(), "{given}");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = app
        .client
        .post(app.url("/api/jobs"))
        .header("x-request-id", "order-42")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"text": "Follow this job.", "voice_id": VOICE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "order-42");
    let accepted: Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let job = app.wait_for_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // The worker says the job succeeded inside the job's span, which names the job, the attempt
    // and the trace the request brought.
    let line = logs
        .wait_for(Duration::from_secs(30), |line| {
            let entry: Value = serde_json::from_str(line).ok()?;
            (entry["fields"]["message"] == "job succeeded"
                && entry["span"]["job_id"] == job_id.as_str())
            .then_some(entry)
        })
        .await
        .unwrap_or_else(|printed| panic!("no log line of job {job_id}: {printed}"));
    assert_eq!(line["span"]["trace_id"], trace_id, "{line}");
    assert_eq!(line["span"]["attempt"], 1, "{line}");
    assert_eq!(line["span"]["engine"], "piper", "{line}");
    assert_eq!(line["span"]["node"], "traced-worker", "{line}");
}
