//! Pipeline benchmarks: `cargo bench -p tts-tests --bench pipeline [-- overhead|throughput|scaling|memory [jobs]]`.
//!
//! What the service costs around its engine, measured with an engine that does no inference
//! ([`NullEngine`], which exists only in this file: never in the binary, a default config or
//! the voice list), run through the real gateway, queue, stores and worker by
//! `Application::build_with_engines`:
//!
//! - `overhead`: tiny sync requests one after another; per request, the client's latency less
//!   the worker's started-to-finished time (from the job record), and less the engine call alone.
//! - `throughput`: sync requests with 32 in flight; jobs a second.
//! - `scaling`: 1, 2 and 4 workers that each run one job at a time and hold it 20 ms without
//!   using the CPU (as an accelerator-bound engine would); jobs a second against k times one
//!   worker's.
//! - `memory`: the release binary's resident memory, a gateway idle and a real piper worker
//!   after loading, every 1,000 of 10,000 short jobs, 20 long ones, and 1,000 short ones more.
//!
//! With no argument every part runs. Results are recorded in docs/PERFORMANCE.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tts_contracts::{VoiceInfo, VoiceStatus};
use tts_tests::app::{
    VOICE as PIPER_VOICE, release_binary, spawn_gateway_process_from, spawn_worker_process_from,
    wait_until_listed,
};
use tts_tests::process::rss_mb;
use tts_tests::{Deployment, NatsServer, TestApp, spawn_with_engines, test_settings};
use tts_worker::engine::{Audio, Engine, EngineError, EngineHealth, Step, SynthesisInput};

/// The benchmark engine's name, as its jobs' subject and its workers' section say it.
const ENGINE: &str = "bench";
/// Its one stock voice.
const VOICE: &str = "bench-silence";
const SAMPLE_RATE: u32 = 22_050;
/// The audio each job returns: a few milliseconds of silence, so that encoding and storing it
/// cost next to nothing.
const SILENCE: Duration = Duration::from_millis(5);

/// An engine that does no inference: every job returns [`SILENCE`], reported as one step as a
/// one-sentence synthesis would be, after holding the job for `hold` without using the CPU.
struct NullEngine {
    hold: Duration,
    voice: VoiceInfo,
    /// How long the latest call took, in nanoseconds: with requests one after another, the call
    /// of the request that just ended.
    last_call_ns: AtomicU64,
}

impl NullEngine {
    fn new(hold: Duration) -> Arc<Self> {
        Arc::new(NullEngine {
            hold,
            voice: VoiceInfo {
                voice_id: VOICE.into(),
                name: "Silence (benchmark)".into(),
                engine: ENGINE.into(),
                created_at: Utc::now(),
                language: "en".into(),
                status: VoiceStatus::Ready,
                sample_rate: Some(SAMPLE_RATE),
                other_languages: Vec::new(),
                speed_range: None,
                native_language: None,
            },
            last_call_ns: AtomicU64::new(0),
        })
    }

    fn last_call(&self) -> Duration {
        Duration::from_nanos(self.last_call_ns.load(Ordering::Relaxed))
    }
}

impl Engine for NullEngine {
    fn name(&self) -> &str {
        ENGINE
    }

    fn voices(&self) -> Vec<VoiceInfo> {
        vec![self.voice.clone()]
    }

    fn synthesize(
        &self,
        _input: &SynthesisInput,
        progress: &mut dyn FnMut(Step<'_>),
    ) -> Result<Audio, EngineError> {
        let started = Instant::now();
        if !self.hold.is_zero() {
            // A sleep, not a spin: the job waits as it would on an accelerator, and the CPU is
            // left to the pipeline.
            std::thread::sleep(self.hold);
        }
        let samples = vec![0.0; (SAMPLE_RATE as u128 * SILENCE.as_millis() / 1000) as usize];
        progress(Step {
            done: 1,
            total: 1,
            audio: &samples,
            sample_rate: SAMPLE_RATE,
        });
        self.last_call_ns
            .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(Audio {
            samples,
            sample_rate: SAMPLE_RATE,
        })
    }

    fn health(&self) -> EngineHealth {
        EngineHealth {
            ready: true,
            device: "none".into(),
            detail: "benchmark engine: no inference".into(),
        }
    }
}

/// A deployment whose one engine is `engine`, with settings changed by `configure`, and the
/// directory its audio is stored in (removed when dropped).
///
/// The audio goes to a tmpfs directory (`/dev/shm`) where there is one: on this machine's
/// root file system, much churned by builds, creating a file costs 0.6 to 1 ms of kernel time
/// (ext4 searching its inode tables for a free inode), which would swamp what is measured here.
/// `PIPELINE_STORAGE_DIR` chooses another parent directory.
async fn deploy(
    deployment: Deployment,
    engine: Arc<NullEngine>,
    configure: impl FnOnce(&mut tts_config::Settings),
) -> (TestApp, tempfile::TempDir) {
    let parent = std::env::var("PIPELINE_STORAGE_DIR").unwrap_or_else(|_| {
        if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm".into()
        } else {
            std::env::temp_dir().display().to_string()
        }
    });
    let storage = tempfile::tempdir_in(&parent).expect("a storage directory");
    let url = format!("file://{}", storage.path().display());
    let mut engines: BTreeMap<String, Arc<dyn Engine>> = BTreeMap::new();
    engines.insert(ENGINE.into(), engine);
    let app = spawn_with_engines(deployment, engines, |s| {
        s.storage.url = url;
        configure(s);
    })
    .await;
    app.wait_for_voice(VOICE, 1).await;
    (app, storage)
}

/// The body of every request: the shortest text, serialised once.
fn tiny_request() -> Bytes {
    Bytes::from(json!({"text": "Hi.", "voice_id": VOICE}).to_string())
}

/// One sync request; the answer's job id.
async fn synthesize(client: &reqwest::Client, url: &str, body: &Bytes) -> String {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 200, "a sync request failed");
    let job_id = response.headers()["x-job-id"]
        .to_str()
        .expect("a job id")
        .to_string();
    response.bytes().await.expect("the audio");
    job_id
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn timestamp(record: &Value, field: &str) -> DateTime<Utc> {
    record[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("the record has no {field}: {record}"))
}

/// Tiny sync requests one after another. The measure is the client's latency less the
/// worker's started-to-finished time from the job record; beside it, the latency less the engine
/// call alone (which also charges the worker's own writes to the pipeline) and the latency.
async fn overhead(deployment: Deployment, warmup: usize, requests: usize) {
    let engine = NullEngine::new(Duration::ZERO);
    let (app, _storage) = deploy(deployment, engine.clone(), |_| {}).await;
    let url = app.url("/api/synthesize");
    let body = tiny_request();
    let (mut by_record, mut by_engine, mut latencies) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + requests {
        let start = Instant::now();
        let job_id = synthesize(&app.client, &url, &body).await;
        let latency = start.elapsed();
        let engine_time = engine.last_call();
        // Read after the clock stopped, so that it costs the measure nothing.
        let record = app.job(&job_id).await;
        let worker_time = (timestamp(&record, "finished_at") - timestamp(&record, "started_at"))
            .to_std()
            .unwrap_or_default();
        if i >= warmup {
            by_record.push(latency.saturating_sub(worker_time));
            by_engine.push(latency.saturating_sub(engine_time));
            latencies.push(latency);
        }
    }
    for series in [&mut by_record, &mut by_engine, &mut latencies] {
        series.sort();
    }
    let deployment = format!("{deployment:?}").to_lowercase();
    for (name, series) in [
        ("overhead (latency - worker started..finished)", &by_record),
        ("overhead (latency - engine call)", &by_engine),
        ("latency", &latencies),
    ] {
        println!(
            "overhead {deployment:11} {requests} sequential requests, {name}: p50 {} p99 {}",
            ms(percentile(series, 0.50)),
            ms(percentile(series, 0.99)),
        );
    }
}

/// Runs `jobs` sync requests, `in_flight` at a time; returns jobs a second.
async fn run_concurrently(app: &TestApp, in_flight: usize, jobs: usize) -> f64 {
    let url = app.url("/api/synthesize");
    let start = Instant::now();
    send_all(&app.client, &url, &tiny_request(), in_flight, jobs).await;
    jobs as f64 / start.elapsed().as_secs_f64()
}

/// Sends `jobs` sync requests of `body` to `url`, `in_flight` at a time, and waits for every
/// answer.
async fn send_all(
    client: &reqwest::Client,
    url: &str,
    body: &Bytes,
    in_flight: usize,
    jobs: usize,
) {
    let url = Arc::new(url.to_string());
    let left = Arc::new(AtomicUsize::new(jobs));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (client, url, body, left) = (client.clone(), url.clone(), body.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                synthesize(&client, &url, &body).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client task");
    }
}

/// Sync requests with `in_flight` of them at a time, through one worker that takes as many.
async fn throughput(deployment: Deployment, in_flight: usize, jobs: usize) {
    let (app, _storage) = deploy(deployment, NullEngine::new(Duration::ZERO), |s| {
        s.worker.max_concurrent = in_flight as u32;
    })
    .await;
    run_concurrently(&app, in_flight, jobs / 10).await;
    let rate = run_concurrently(&app, in_flight, jobs).await;
    let deployment = format!("{deployment:?}").to_lowercase();
    println!("throughput {deployment:11} {jobs} jobs, {in_flight} in flight: {rate:.0} jobs/s");
}

/// k = 1, 2, 4 workers that run one job at a time and hold each for `hold`; jobs a second and
/// the ratio to k times one worker's.
async fn scaling(hold: Duration) {
    let engine = NullEngine::new(hold);
    let (mut app, _storage) = deploy(Deployment::Distributed, engine, |s| {
        s.worker.max_concurrent = 1;
    })
    .await;
    let per_worker_ideal = 1.0 / hold.as_secs_f64();
    let mut one = None;
    let mut workers = 1;
    for k in [1, 2, 4] {
        while workers < k {
            app.add_worker(ENGINE, |s| s.worker.max_concurrent = 1)
                .await;
            workers += 1;
        }
        app.wait_for_voice(VOICE, k).await;
        // Twice as many in flight as workers, so that a worker never waits for a request.
        let in_flight = 2 * k;
        let jobs = 150 * k;
        run_concurrently(&app, in_flight, 10 * k).await;
        let rate = run_concurrently(&app, in_flight, jobs).await;
        let one = *one.get_or_insert(rate);
        println!(
            "scaling     k={k}, hold {}, {in_flight} in flight, {jobs} jobs: {rate:.1} jobs/s \
             ({:.2} of k x one worker's {one:.1}; a worker's ideal {per_worker_ideal:.1})",
            ms(hold),
            rate / (k as f64 * one),
        );
    }
}

/// The release binary as a gateway process (idle, then after serving) and as a real piper
/// worker after loading and every 1,000 of `jobs` short sync jobs.
async fn memory(jobs: usize) {
    let binary = tokio::task::spawn_blocking(release_binary)
        .await
        .expect("the build ran");
    let storage = tempfile::tempdir().expect("a storage directory");
    let nats = NatsServer::start().await;
    let mut settings = test_settings(storage.path());
    settings.nats.url = nats.url();
    // The worker runs as deployed: the default number of jobs at once, so of sessions.
    let defaults = tts_config::Settings::load_with_env(None, Vec::new()).expect("defaults load");
    settings.worker.max_concurrent = defaults.worker.max_concurrent;
    let quiet = [("RUST_LOG", "warn")];
    let (gateway, url) = spawn_gateway_process_from(&binary, &settings, &[]).await;
    // Idle: started, connected, nothing asked of it yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "memory      gateway idle after start: {:.1} MB",
        rss_mb(gateway.pid())
    );

    let worker = spawn_worker_process_from(&binary, &settings, "bench-memory", &quiet);
    let client = reqwest::Client::new();
    wait_until_listed(&client, &url, None, PIPER_VOICE, Duration::from_secs(300)).await;
    let model = settings
        .models
        .cache_dir
        .join(format!("piper/{PIPER_VOICE}.onnx"));
    let model_mb = std::fs::metadata(&model).expect("the model").len() as f64 / (1024.0 * 1024.0);
    println!(
        "memory      piper model file {:.1} MB; worker budget {:.1} MB",
        model_mb,
        model_mb + 60.0
    );
    println!(
        "memory      worker after load: {:.1} MB (gateway {:.1} MB)",
        rss_mb(worker.pid()),
        rss_mb(gateway.pid())
    );
    let body = Bytes::from(json!({"text": "Hi.", "voice_id": PIPER_VOICE}).to_string());
    let synth = format!("{url}/api/synthesize");
    let in_flight = settings.worker.max_concurrent as usize;
    let start = Instant::now();
    for done in (1_000..=jobs).step_by(1_000) {
        send_all(&client, &synth, &body, in_flight, 1_000).await;
        println!(
            "memory      worker after {done:5} jobs: {:.1} MB (gateway {:.1} MB), {:.0} s",
            rss_mb(worker.pid()),
            rss_mb(gateway.pid()),
            start.elapsed().as_secs_f64()
        );
    }
    // Long sentences take far more memory for a run than "Hi." does; what they took must go
    // back, not stay as the worker's new floor.
    let long = Bytes::from(json!({"text": LONG_TEXT, "voice_id": PIPER_VOICE}).to_string());
    send_all(&client, &synth, &long, in_flight, LONG_JOBS).await;
    println!(
        "memory      worker after {LONG_JOBS} long jobs: {:.1} MB, {:.0} s",
        rss_mb(worker.pid()),
        start.elapsed().as_secs_f64()
    );
    send_all(&client, &synth, &body, in_flight, 1_000).await;
    println!(
        "memory      worker after 1000 short jobs more: {:.1} MB, {:.0} s",
        rss_mb(worker.pid()),
        start.elapsed().as_secs_f64()
    );
    drop(worker);
    drop(gateway);
}

/// Jobs of [`LONG_TEXT`] in the memory run, after the short ones.
const LONG_JOBS: usize = 20;
/// Four long sentences, each spoken in two halves at once.
const LONG_TEXT: &str = "The committee reviewed the proposal carefully, and after a long \
    discussion about the budget and the schedule, it agreed to fund the project for another year. \
    Every member of the team wrote a short report about the work of the last six months, and the \
    reports were read aloud at the start of the meeting. The new building will open in the spring, \
    with a library on the ground floor and classrooms for the evening courses above it. Visitors \
    who arrive by train can walk from the station in ten minutes, or take the bus that stops at \
    the main entrance every quarter of an hour.";

fn main() {
    // `cargo bench` passes --bench; a part's name runs that part alone.
    let parts = ["overhead", "throughput", "scaling", "memory"];
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| parts.contains(&a.as_str()))
        .collect();
    let run = |part: &str| chosen.is_empty() || chosen.iter().any(|c| c == part);
    // A number after the part's name shortens the memory run (a multiple of 1,000 jobs).
    let jobs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        if run("overhead") {
            for deployment in [Deployment::Standalone, Deployment::Distributed] {
                overhead(deployment, 200, 2_000).await;
            }
        }
        if run("throughput") {
            for deployment in [Deployment::Distributed, Deployment::Standalone] {
                throughput(deployment, 32, 10_000).await;
            }
        }
        if run("scaling") {
            scaling(Duration::from_millis(20)).await;
        }
        if run("memory") {
            memory(jobs).await;
        }
    });
}
