//! The service under test, in either deployment, with typed request helpers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tts_config::Settings;
use tts_contracts::JobEvent;
use tts_infra::AudioStore;
use voice_clone_tts::{Application, Mode, SuppliedEngines};

use crate::process::{Lines, blocking, strip_ansi};
use crate::{NatsServer, redis_url, workspace_root};

/// The voice every test speaks with.
pub const VOICE: &str = "en_US-joe-medium";

/// A job message as a gateway queues it: "Hello." in [`VOICE`] on the piper engine.
pub fn synthesis_job(tenant: Option<&str>) -> tts_contracts::JobMessage {
    tts_contracts::JobMessage {
        job_id: uuid::Uuid::new_v4(),
        engine: "piper".into(),
        created_at: chrono::Utc::now(),
        tenant: tenant.map(str::to_string),
        spec: tts_contracts::JobSpec::Synthesize {
            text: "Hello.".into(),
            voice_id: VOICE.into(),
            language: "en".into(),
            speed: 1.0,
            streamed: false,
        },
    }
}
/// A stock voice of the kokoro engine.
pub const KOKORO_VOICE: &str = "jf_alpha";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// One process, in-process queue and memory state.
    Standalone,
    /// Gateway and worker on a NATS server of the test's own, Redis and a storage directory.
    Distributed,
    /// As `Distributed` without a worker: the test starts worker processes itself.
    GatewayOnly,
}

/// Settings for a test: ports the services pick themselves (0), a temporary storage directory, a
/// Redis prefix of its own, the shared model cache, and short intervals.
pub fn test_settings(storage: &std::path::Path) -> Settings {
    let mut s = Settings::load_with_env(None, Vec::new()).expect("embedded defaults load");
    s.gateway.host = "127.0.0.1".into();
    s.gateway.port = 0;
    s.gateway.sync_timeout_secs = 60;
    // Tests poll often from one address; the limits have tests of their own.
    s.gateway.global_rpm = 1_000_000;
    s.gateway.ip_rpm = 1_000_000;
    s.gateway.concurrent_limit = 1000;
    // Authentication has tests of its own; the others run open, in every deployment.
    s.auth.mode = "off".into();
    s.worker.heartbeat_interval = 1;
    s.worker.ack_wait_secs = 5;
    s.worker.retry_delay_secs = 1;
    s.worker.shutdown_grace_secs = 30;
    s.worker.max_concurrent = 2;
    for engine in s.workers.values_mut() {
        engine.port = 0;
    }
    s.storage.url = format!("file://{}", storage.display());
    s.redis.url = redis_url();
    s.redis.key_prefix = format!("tts-test-{}", uuid::Uuid::new_v4().simple());
    s.models.cache_dir = workspace_root().join(".cache/voice-clone-tts");
    s
}

/// Polls `GET {url}/api/voices`, as the caller with `key`, until it lists `voice`, failing after
/// `within`. For gateways a [`TestApp`] cannot ask itself (a gateway process, one whose callers
/// need keys): a gateway lists a worker's voice once it has heard its heartbeat.
pub async fn wait_until_listed(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    voice: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let mut request = client.get(format!("{url}/api/voices"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Ok(response) = request.send().await
            && let Ok(body) = response.json::<Value>().await
            && body["voices"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["voice_id"] == voice))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never listed voice {voice}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Text long enough that a job is still running when a test acts on it.
pub fn long_text() -> String {
    "This long passage keeps a worker busy for several seconds, so that the test can act while \
     the job is running. "
        .repeat(12)
}

pub struct TestApp {
    pub base_url: String,
    /// The gateway's own `/metrics` listener (`gateway.metrics_listen`), when configured.
    pub metrics_url: Option<String>,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub audio: AudioStore,
    pub nats: Option<NatsServer>,
    stops: Vec<oneshot::Sender<()>>,
    /// Engines the test built itself, which workers it adds run too.
    supplied: SuppliedEngines,
    _storage: tempfile::TempDir,
}

async fn run(app: Application) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = app
            .run_until_stopped(async {
                let _ = rx.await;
            })
            .await
        {
            eprintln!("application stopped with an error: {e:#}");
        }
    });
    tx
}

pub async fn spawn_app(deployment: Deployment) -> TestApp {
    spawn_app_with(deployment, |_| {}).await
}

/// As [`spawn_app`], with settings changed by `configure` first.
pub async fn spawn_app_with(
    deployment: Deployment,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn(deployment, &["piper"], configure).await
}

/// A standalone deployment running `engines`.
pub async fn spawn_standalone(engines: &[&str]) -> TestApp {
    spawn(Deployment::Standalone, engines, |_| {}).await
}

/// A deployment running a worker for each of `engines` (none for `GatewayOnly`), with settings
/// changed by `configure` first.
pub async fn spawn_engines_with(
    deployment: Deployment,
    engines: &[&str],
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn(deployment, engines, configure).await
}

/// A deployment whose workers run engines the caller built, one worker for each name in
/// `engines` (none for `GatewayOnly`), through the real gateway, queue and stores (see
/// `Application::build_with_engines`). For the benchmarks' engine that does no inference.
/// Returns once a live worker runs each engine.
pub async fn spawn_with_engines(
    deployment: Deployment,
    engines: SuppliedEngines,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let names: Vec<&str> = engines.keys().map(String::as_str).collect();
    spawn_supplied(deployment, &names, engines.clone(), configure).await
}

/// A stock voice of each engine that has them, to wait for.
fn stock_voice(engine: &str) -> Option<&'static str> {
    match engine {
        "kokoro" => Some(KOKORO_VOICE),
        "piper" => Some(VOICE),
        _ => None,
    }
}

async fn spawn(
    deployment: Deployment,
    engines: &[&str],
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    spawn_supplied(deployment, engines, SuppliedEngines::new(), configure).await
}

/// As [`spawn`], with the workers of the engines in `supplied` running those engines.
async fn spawn_supplied(
    deployment: Deployment,
    engines: &[&str],
    supplied: SuppliedEngines,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let storage = tempfile::tempdir().expect("a storage directory");
    let mut settings = test_settings(storage.path());
    configure(&mut settings);
    let audio = AudioStore::from_settings(&settings.storage).expect("storage opens");
    let mut stops = Vec::new();
    let (gateway, nats) = match deployment {
        Deployment::Standalone => {
            let app = Application::build_with_engines(
                settings.clone(),
                Mode::Standalone {
                    engines: engines.iter().map(|e| e.to_string()).collect(),
                },
                supplied.clone(),
            )
            .await
            .expect("standalone builds");
            (app, None)
        }
        Deployment::Distributed | Deployment::GatewayOnly => {
            let nats = NatsServer::start().await;
            settings.nats.url = nats.url();
            let gateway =
                Application::build_with_engines(settings.clone(), Mode::Gateway, supplied.clone())
                    .await
                    .expect("gateway builds");
            if deployment == Deployment::Distributed {
                for engine in engines {
                    let worker = Application::build_with_engines(
                        settings.clone(),
                        Mode::Worker {
                            engine: engine.to_string(),
                        },
                        supplied.clone(),
                    )
                    .await
                    .expect("worker builds");
                    stops.push(run(worker).await);
                }
            }
            (gateway, Some(nats))
        }
    };
    let addr = gateway.gateway_addr().expect("a gateway");
    let metrics_url = gateway
        .metrics_addr()
        .map(|a| format!("http://{a}/metrics"));
    stops.push(run(gateway).await);
    let app = TestApp {
        base_url: format!("http://{addr}"),
        metrics_url,
        client: reqwest::Client::new(),
        settings,
        audio,
        nats,
        stops,
        supplied,
        _storage: storage,
    };
    if deployment != Deployment::GatewayOnly {
        for engine in engines {
            match stock_voice(engine) {
                Some(voice) => app.wait_for_voice(voice, 1).await,
                None => app.wait_for_engine(engine).await,
            }
        }
    }
    app
}

/// One more gateway beside a deployment: the same NATS, Redis prefix and storage as `settings`.
pub async fn spawn_gateway(settings: &Settings) -> TestApp {
    let app = Application::build(settings.clone(), Mode::Gateway)
        .await
        .expect("gateway builds");
    let addr = app.gateway_addr().expect("a gateway");
    let metrics_url = app.metrics_addr().map(|a| format!("http://{a}/metrics"));
    let stop = run(app).await;
    TestApp {
        base_url: format!("http://{addr}"),
        metrics_url,
        client: reqwest::Client::new(),
        settings: settings.clone(),
        audio: AudioStore::from_settings(&settings.storage).expect("storage opens"),
        nats: None,
        stops: vec![stop],
        supplied: SuppliedEngines::new(),
        _storage: tempfile::tempdir().expect("a directory"),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// One more in-process worker of `engine` on a distributed deployment's NATS, Redis and
    /// storage, with its settings changed by `configure` first; it runs the engine the
    /// deployment was given for that name, if any. Returns once it is built, not once the
    /// gateway has heard of it (see [`TestApp::wait_for_voice`]).
    pub async fn add_worker(&mut self, engine: &str, configure: impl FnOnce(&mut Settings)) {
        assert!(self.nats.is_some(), "workers join distributed deployments");
        let mut settings = self.settings.clone();
        configure(&mut settings);
        let worker = Application::build_with_engines(
            settings,
            Mode::Worker {
                engine: engine.to_string(),
            },
            self.supplied.clone(),
        )
        .await
        .expect("worker builds");
        self.stops.push(run(worker).await);
    }

    /// Waits until `workers` live workers serve `voice`.
    pub async fn wait_for_voice(&self, voice: &str, workers: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health: Value = self.get_json("/health").await;
            let live = health["workers"]["live"].as_u64().unwrap_or(0) as usize;
            let voices: Value = self.get_json("/api/voices").await;
            let listed = voices["voices"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["voice_id"] == voice));
            if listed && live >= workers {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "voice {voice} never became available"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until a live worker runs `engine`.
    pub async fn wait_for_engine(&self, engine: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health: Value = self.get_json("/health").await;
            let engines = &health["workers"]["engines"];
            if engines
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e == engine))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no worker of engine {engine} came up: {health}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `GET /health` until it answers `want`; returns that answer's body.
    pub async fn wait_for_health(&self, want: u16) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let response = self.client.get(self.url("/health")).send().await;
            let response = response.expect("the gateway answers");
            let code = response.status().as_u16();
            let body: Value = response.json().await.expect("a JSON body");
            if code == want {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "health stayed {code}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON body")
    }

    pub async fn synthesize(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/synthesize"))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Waits until a job is running and returns the node running it.
    pub async fn wait_running(&self, job_id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.job(job_id).await;
            if job["status"] == "running" {
                return job["worker"].as_str().expect("a worker").to_string();
            }
            assert!(
                job["status"] == "queued" && Instant::now() < deadline,
                "job never ran: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Queues `text` in the test voice and returns the job's id, checking that it was accepted.
    pub async fn submit_text(&self, text: &str) -> String {
        let response = self
            .submit(&serde_json::json!({"text": text, "voice_id": VOICE}), None)
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("a JSON body");
        body["job_id"].as_str().expect("a job id").to_string()
    }

    pub async fn submit(&self, body: &Value, idempotency_key: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(self.url("/api/jobs")).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("request sent")
    }

    /// Posts raw bytes with a content type, for malformed-input tests.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send().await.expect("request sent")
    }

    /// `POST /api/voices` with the clip as `file` (named `file_name`) and the given text fields.
    pub async fn upload_voice(
        &self,
        clip: Vec<u8>,
        file_name: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(clip).file_name(file_name.to_string()),
        );
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        self.client
            .post(self.url("/api/voices"))
            .multipart(form)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn job(&self, job_id: &str) -> Value {
        self.get_json(&format!("/api/jobs/{job_id}")).await
    }

    /// Polls a job until it is terminal.
    pub async fn wait_for_job(&self, job_id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.job(job_id).await;
            if matches!(job["status"].as_str(), Some("succeeded" | "failed")) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} not finished: {job}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn audio(&self, job_id: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/api/jobs/{job_id}/audio")))
            .send()
            .await
            .expect("request sent")
    }

    /// Every event of a job's WebSocket until the server closes it (within two minutes).
    pub async fn ws_events(&self, job_id: &str) -> Vec<JobEvent> {
        self.ws_events_within(job_id, Duration::from_secs(120))
            .await
    }

    /// As [`TestApp::ws_events`], for jobs that take up to `within`.
    pub async fn ws_events_within(&self, job_id: &str, within: Duration) -> Vec<JobEvent> {
        let url = format!(
            "{}/ws/jobs/{job_id}",
            self.base_url.replacen("http", "ws", 1)
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        let mut events = Vec::new();
        let collect = async {
            while let Some(message) = socket.next().await {
                match message.expect("websocket message") {
                    Message::Text(text) => {
                        events.push(serde_json::from_str::<JobEvent>(&text).expect("an event"))
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(within, collect)
            .await
            .expect("websocket ends");
        events
    }

    /// In a distributed deployment, asserts that nothing was ever queued and no job record
    /// exists: what refused requests must leave behind. (Standalone keeps both in memory, out of
    /// the test's reach.)
    pub async fn assert_no_job_made(&self) {
        let Some(nats) = &self.nats else {
            return;
        };
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("TTS_JOBS").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.last_sequence, 0);
        let mut redis = redis::Client::open(self.settings.redis.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:job:*", self.settings.redis.key_prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(keys.is_empty(), "{keys:?}");
    }

    /// Stops the in-process services.
    pub fn stop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Variables (by name or prefix) that `cargo test` sets to describe the test crate to the test
/// process; a build started from the test must not inherit them.
const INHERITED_FROM_CARGO_TEST: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// The service binary, built once per test run. The build blocks (see [`blocking`]).
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_binary(false)).clone()
}

/// The service binary in the release profile, as it is deployed, built once per run: for the
/// benchmarks that measure the processes themselves (memory, say), where the debug build's
/// figures would mean nothing.
pub fn release_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| build_binary(true)).clone()
}

fn build_binary(release: bool) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // Cargo describes the test crate to this process in variables that build scripts
    // (ring's, for one) watch: passed on, they would rebuild those crates here, and the
    // next `cargo test` would rebuild them back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if INHERITED_FROM_CARGO_TEST
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            build.env_remove(name.as_ref());
        }
    }
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "voice-clone-tts",
            "--bin",
            "voice-clone-tts",
        ])
        .current_dir(workspace_root());
    if release {
        build.arg("--release");
    }
    let status = blocking(|| build.status()).expect("cargo runs");
    assert!(status.success(), "the service binary builds");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    target
        .join(if release { "release" } else { "debug" })
        .join("voice-clone-tts")
}

/// A worker in a process of its own, so that a test can kill it. Killed on drop.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the worker gets no chance to ack, nak or say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status, which takes as long as the process drains (see
    /// [`blocking`]).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        blocking(|| self.child.wait()).expect("worker exits")
    }

    /// SIGSTOP: the process freezes where it is, holding its connections and its jobs without
    /// acking, nacking or heartbeating, as a process that stalls (swapped out, paused) does.
    pub fn suspend(&self) {
        self.signal("STOP");
    }

    /// SIGCONT: a process frozen by [`WorkerProcess::suspend`] carries on where it stopped.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `voice-clone-tts worker --engine piper` with the test's settings, passed as the
/// environment overrides an operator would use.
pub fn spawn_worker_process(settings: &Settings, node_id: &str) -> WorkerProcess {
    let child = worker_command(settings, node_id)
        .stdout(Stdio::null())
        .spawn()
        .expect("worker process starts");
    WorkerProcess { child }
}

/// As [`spawn_worker_process`], with more environment variables (more settings) in `env`.
pub fn spawn_worker_process_with_env(
    settings: &Settings,
    node_id: &str,
    env: &[(&str, &str)],
) -> WorkerProcess {
    let child = worker_command(settings, node_id)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("worker process starts");
    WorkerProcess { child }
}

/// As [`spawn_worker_process`], logging JSON lines, which the returned [`Lines`] follow.
pub fn spawn_worker_process_logged(settings: &Settings, node_id: &str) -> (WorkerProcess, Lines) {
    spawn_worker_process_logged_with_env(settings, node_id, &[])
}

/// As [`spawn_worker_process_logged`], with more environment variables (more settings, or
/// `RUST_LOG`) in `env`.
pub fn spawn_worker_process_logged_with_env(
    settings: &Settings,
    node_id: &str,
    env: &[(&str, &str)],
) -> (WorkerProcess, Lines) {
    let mut child = worker_command(settings, node_id)
        .env("TTS__LOGGING__FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("worker process starts");
    let logs = Lines::follow(child.stdout.take().expect("stdout is piped"));
    (WorkerProcess { child }, logs)
}

/// As [`spawn_worker_process_with_env`], running `binary` (such as [`release_binary`]).
pub fn spawn_worker_process_from(
    binary: &std::path::Path,
    settings: &Settings,
    node_id: &str,
    env: &[(&str, &str)],
) -> WorkerProcess {
    let child = worker_command_of(binary, settings, node_id)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .spawn()
        .expect("worker process starts");
    WorkerProcess { child }
}

fn worker_command(settings: &Settings, node_id: &str) -> Command {
    worker_command_of(&binary(), settings, node_id)
}

fn worker_command_of(binary: &std::path::Path, settings: &Settings, node_id: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["worker", "--engine", "piper", "--port", "0"])
        .env("TTS__NATS__URL", &settings.nats.url)
        .env("TTS__NATS__USER", &settings.nats.user)
        .env("TTS__NATS__PASSWORD", settings.nats.password.expose())
        .env("TTS__REDIS__URL", &settings.redis.url)
        .env("TTS__REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("TTS__STORAGE__URL", &settings.storage.url)
        .env("TTS__MODELS__CACHE_DIR", &settings.models.cache_dir)
        .env("TTS__WORKER__NODE_ID", node_id)
        .env(
            "TTS__WORKER__HEARTBEAT_INTERVAL",
            settings.worker.heartbeat_interval.to_string(),
        )
        .env(
            "TTS__WORKER__ACK_WAIT_SECS",
            settings.worker.ack_wait_secs.to_string(),
        )
        .env(
            "TTS__WORKER__MAX_CONCURRENT",
            settings.worker.max_concurrent.to_string(),
        )
        .env(
            "TTS__WORKER__RETRY_DELAY_SECS",
            settings.worker.retry_delay_secs.to_string(),
        )
        .env(
            "TTS__WORKER__MAX_DELIVER",
            settings.worker.max_deliver.to_string(),
        )
        .env("RUST_LOG", "info")
        .stderr(Stdio::inherit());
    command
}

/// A gateway as a process of its own, on the deployment's NATS, Redis and storage (for tests
/// that signal it). It listens on a port it picks itself, read back from its "gateway
/// listening" log line. Returns the process and its base URL.
pub async fn spawn_gateway_process(settings: &Settings) -> (WorkerProcess, String) {
    spawn_gateway_process_with_env(settings, &[]).await
}

/// As [`spawn_gateway_process`], with more environment variables (more settings) in `env`.
pub async fn spawn_gateway_process_with_env(
    settings: &Settings,
    env: &[(&str, &str)],
) -> (WorkerProcess, String) {
    spawn_gateway_process_from(&binary(), settings, env).await
}

/// As [`spawn_gateway_process_with_env`], running `binary` (such as [`release_binary`]).
pub async fn spawn_gateway_process_from(
    binary: &std::path::Path,
    settings: &Settings,
    env: &[(&str, &str)],
) -> (WorkerProcess, String) {
    let (mut process, mut log) = start_gateway_process_from(binary, settings, env);
    let addr = log
        .wait_for(Duration::from_secs(60), listening_addr)
        .await
        .unwrap_or_else(|printed| {
            process.kill();
            panic!("the gateway process never listened: {printed}")
        });
    (process, format!("http://{addr}"))
}

/// A gateway process as [`spawn_gateway_process_from`] starts it, returned before it listens,
/// with the lines it logs (text), for tests that watch it start.
pub fn start_gateway_process_from(
    binary: &std::path::Path,
    settings: &Settings,
    env: &[(&str, &str)],
) -> (WorkerProcess, Lines) {
    let mut child = Command::new(binary)
        .args(["gateway", "--port", "0"])
        .env("TTS__GATEWAY__HOST", "127.0.0.1")
        .env("TTS__NATS__URL", &settings.nats.url)
        .env("TTS__REDIS__URL", &settings.redis.url)
        .env("TTS__REDIS__KEY_PREFIX", &settings.redis.key_prefix)
        .env("TTS__STORAGE__URL", &settings.storage.url)
        .env("TTS__GATEWAY__IP_RPM", "100000")
        .env("TTS__AUTH__MODE", &settings.auth.mode)
        .env(
            "TTS__AUTH__KEYS",
            serde_json::to_string(&settings.auth.keys).expect("keys serialise"),
        )
        .env("TTS__GATEWAY__GLOBAL_RPM", "100000")
        // The address is read from the log, text unless the caller asks for JSON.
        .env("TTS__LOGGING__FORMAT", "text")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("gateway process starts");
    let log = Lines::follow(child.stdout.take().expect("stdout is piped"));
    (WorkerProcess { child }, log)
}

/// The address in the gateway's "gateway listening" log line, in text (`addr=...`) or JSON
/// (`"addr":"..."`).
pub fn listening_addr(line: &str) -> Option<std::net::SocketAddr> {
    let line = strip_ansi(line);
    if !line.contains("gateway listening") {
        return None;
    }
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) {
        return json["fields"]["addr"].as_str()?.parse().ok();
    }
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))?
        .parse()
        .ok()
}
