//! Synthesis benchmarks: `cargo bench -p tts-tests --bench synthesis`.
//!
//! Measures the piper engine's real-time factor, then end-to-end latency and throughput of the
//! HTTP API in both deployments. Prints a table; results are recorded in docs/PERFORMANCE.md.
//! Request counts are bounded so a run takes a few minutes on two cores.

use std::time::{Duration, Instant};

use serde_json::json;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, TestApp, spawn_app, spawn_engines_with};
use tts_worker::engine::piper::{PiperEngine, PiperOptions};
use tts_worker::engine::{Engine, SynthesisInput};

const SHORT: &str = "The quick brown fox jumps over the lazy dog.";

fn paragraph() -> String {
    "Voice synthesis turns written words into speech. Each sentence is phonemized, then the \
     model renders it as audio at twenty-two kilohertz. "
        .repeat(5)
}

fn engine_rtf(threads: usize) {
    let engine = PiperEngine::load(&PiperOptions {
        threads,
        ..tts_tests::engines::piper_options("cpu")
    })
    .expect("engine loads");
    for (name, text) in [("short", SHORT.to_string()), ("paragraph", paragraph())] {
        let input = SynthesisInput {
            text,
            voice_id: VOICE.into(),
            language: "en".into(),
            speed: 1.0,
            streamed: false,
            voice: None,
            cancel: Default::default(),
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

/// A 300-character English paragraph, as the time-to-first-audio target names.
const PARAGRAPH_300: &str = "Streaming speech lets a listener hear the first words while the rest \
     of the text is still being made. The service splits the paragraph into sentences, and each \
     one goes out as soon as the engine has rendered it. A busy worker should never hold back the \
     opening line for long, even on a small machine.";

/// Time to first audio through the whole queue: request to the first byte of a streamed
/// `POST /v1/audio/speech` answer, beside the time to the last byte.
async fn first_audio(deployment: Deployment, engine: &str, voice: &str, format: &str, runs: usize) {
    let app = spawn_engines_with(deployment, &[engine], |_| {}).await;
    let body = json!({
        "model": engine, "voice": voice, "input": PARAGRAPH_300, "response_format": format,
    });
    let run = || async {
        let start = Instant::now();
        let mut response = app
            .client
            .post(app.url("/v1/audio/speech"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut first = None;
        while let Some(bytes) = response.chunk().await.unwrap() {
            if first.is_none() && !bytes.is_empty() {
                first = Some(start.elapsed());
            }
        }
        (first.expect("some audio"), start.elapsed())
    };
    // Warm-up: the first synthesis loads sessions and caches.
    run().await;
    let (mut firsts, mut totals) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (first, total) = run().await;
        firsts.push(first);
        totals.push(total);
    }
    firsts.sort();
    totals.sort();
    let at = |q: f64| ((runs - 1) as f64 * q).round() as usize;
    println!(
        "first audio {deployment:?} {engine} {format}, {} chars, {runs} runs: first byte p50 {:?} p90 {:?}; whole answer p50 {:?} p90 {:?}",
        PARAGRAPH_300.len(),
        firsts[at(0.5)],
        firsts[at(0.9)],
        totals[at(0.5)],
        totals[at(0.9)]
    );
}

fn main() {
    // `cargo bench` passes --bench; `-- first-audio` runs the time-to-first-audio part alone,
    // and `-- first-audio piper` only its piper rows.
    let only_first_audio = std::env::args().any(|a| a == "first-audio");
    let only_piper = std::env::args().any(|a| a == "piper");
    if !only_first_audio {
        engine_rtf(1);
        engine_rtf(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if !only_first_audio {
            http(Deployment::Standalone, 40, 2).await;
            http(Deployment::Distributed, 40, 2).await;
        }
        for deployment in [Deployment::Standalone, Deployment::Distributed] {
            first_audio(deployment, "piper", VOICE, "pcm", 20).await;
            first_audio(deployment, "piper", VOICE, "mp3", 20).await;
            if !only_piper {
                first_audio(deployment, "kokoro", "af_heart", "pcm", 10).await;
            }
        }
    });
}
