//! Stopping an application ends every task it started (the gateway's registry, the workers'
//! heartbeats and jobs, the in-process queue's delayed naks), so that tests which start many
//! applications in one process leak nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::runtime::Handle;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, spawn_app};

/// Tasks alive on the test's runtime.
fn alive_tasks() -> usize {
    Handle::current().metrics().num_alive_tasks()
}

/// Waits until no more tasks are alive than `baseline`.
async fn wait_for_tasks(baseline: usize, round: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = alive_tasks();
        if alive <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: {alive} tasks still alive after the app stopped, {baseline} before it started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_standalone_app_leaves_no_task_behind() {
    let baseline = alive_tasks();
    for round in 0..3 {
        let mut app = spawn_app(Deployment::Standalone).await;
        // One job finished and one still in flight when the app stops, which the worker drains.
        let finished = app
            .submit(&json!({"text": "Hello there.", "voice_id": VOICE}), None)
            .await;
        assert_eq!(finished.status(), 202);
        let finished: Value = finished.json().await.unwrap();
        let job = app
            .wait_for_job(
                finished["job_id"].as_str().unwrap(),
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let in_flight = app
            .submit(&json!({"text": "Goodbye now.", "voice_id": VOICE}), None)
            .await;
        assert_eq!(in_flight.status(), 202);

        app.stop();
        drop(app);
        wait_for_tasks(baseline, round).await;
    }
}
