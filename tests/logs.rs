//! Log files as the origin document lays them out: with `logging.files` on, the gateway writes
//! `<dir>/gateway.log` and a worker `<dir>/worker-<engine>.log`, beside the console, in the
//! configured format, and a job's lines there name the job.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tts_tests::app::VOICE;
use tts_tests::{
    Deployment, spawn_engines_with, spawn_gateway_process_with_env, spawn_worker_process_with_env,
};

/// Waits until the file at `path` holds a line for which `wanted` holds.
async fn wait_for_line(path: &Path, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if let Some(line) = text.lines().find(|l| wanted(l)) {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such line in {}:\n{text}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_worker_write_their_own_log_files_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let env = [
        ("TTS__LOGGING__FILES", "true"),
        ("TTS__LOGGING__DIR", logs.to_str().unwrap()),
        ("TTS__LOGGING__FORMAT", "json"),
    ];
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |_| {}).await;
    let _worker = spawn_worker_process_with_env(&app.settings, "logging-worker", &env);
    let (_gateway, url) = spawn_gateway_process_with_env(&app.settings, &env).await;
    tts_tests::wait_until_listed(&app.client, &url, None, VOICE, Duration::from_secs(90)).await;

    let response = app
        .client
        .post(format!("{url}/api/jobs"))
        .json(&json!({"text": "Write this down.", "voice_id": VOICE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let job = app.wait_for_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    // Every line of both files is a JSON object, and each process's file has lines about the
    // job, carrying its id.
    for file in ["gateway.log", "worker-piper.log"] {
        let path = logs.join(file);
        let line = wait_for_line(&path, |l| l.contains(&job_id)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        for l in text.lines() {
            let value: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{file}: not JSON ({e}): {l}"));
            assert!(value["level"].is_string(), "{file}: {l}");
        }
        assert!(!line.contains("\u{1b}["), "{file} has colour codes: {line}");
    }
    // Nothing else was written there: one file per process.
    let mut names: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["gateway.log", "worker-piper.log"]);
}
