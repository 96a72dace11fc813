//! Synthesis benchmarks: `cargo bench -p tts-tests --bench synthesis`.
//!
//! Measures the piper engine's real-time factor, then end-to-end latency and throughput of the
//! HTTP API in both deployments. Prints a table; results are recorded in docs/PERFORMANCE.md.
//! Request counts are bounded so a run takes a few minutes on two cores.

use std::time::{Duration, Instant};

use serde_json::json;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, TestApp, spawn_app, workspace_root};
use tts_worker::engine::piper::{PiperEngine, PiperOptions};
use tts_worker::engine::{Engine, SynthesisInput};

const SHORT: &str = "The quick brown fox jumps over the lazy dog.";

fn paragraph() -> String {
    "Voice synthesis turns written words into speech. Each sentence is phonemized, then the \
     model renders it as audio at twenty-two kilohertz. "
        .repeat(5)
}

fn engine_rtf(threads: usize) {
    let paths = tts_worker::models::ensure(&workspace_root().join(".cache/voice-clone-tts"))
        .expect("models");
    let engine = PiperEngine::load(&PiperOptions {
        model_dir: paths.piper_dir,
        voice: VOICE.into(),
        device: "cpu".into(),
        threads,
        sessions: 1,
        onnxruntime: paths.onnxruntime,
    })
    .expect("engine loads");
    for (name, text) in [("short", SHORT.to_string()), ("paragraph", paragraph())] {
        let input = SynthesisInput {
            text,
            voice_id: VOICE.into(),
            language: "en".into(),
            speed: 1.0,
            voice: None,
            reference_wav: None,
        };
        // One warm-up run, then the measured ones.
        engine.synthesize(&input, &mut |_| {}).unwrap();
        let runs = 5;
        let mut compute = Duration::ZERO;
        let mut audio = 0.0;
        for _ in 0..runs {
            let start = Instant::now();
            let out = engine.synthesize(&input, &mut |_| {}).unwrap();
            compute += start.elapsed();
            audio += out.duration_seconds();
        }
        println!(
            "engine piper, {threads} thread(s), {name:9}: {:.2} s audio in {:.3} s, RTF {:.3}",
            audio / runs as f32,
            compute.as_secs_f32() / runs as f32,
            compute.as_secs_f32() / audio
        );
    }
}

async fn http(deployment: Deployment, requests: usize, concurrency: usize) {
    let app = std::sync::Arc::new(spawn_app(deployment).await);
    // Warm-up.
    let _ = app
        .synthesize(&json!({"text": SHORT, "voice_id": VOICE}))
        .await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    let per_task = requests / concurrency;
    for _ in 0..concurrency {
        let app: std::sync::Arc<TestApp> = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for _ in 0..per_task {
                let t = Instant::now();
                let response = app
                    .synthesize(&json!({"text": SHORT, "voice_id": VOICE}))
                    .await;
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let wall = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "http {deployment:?}, {} sync requests at concurrency {concurrency}: p50 {:?}, p95 {:?}, {:.2} req/s",
        latencies.len(),
        pct(0.50),
        pct(0.95),
        latencies.len() as f64 / wall.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; anything else in the arguments is a filter we do not use.
    engine_rtf(1);
    engine_rtf(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        http(Deployment::Standalone, 40, 2).await;
        http(Deployment::Distributed, 40, 2).await;
    });
}
