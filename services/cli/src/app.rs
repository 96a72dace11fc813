//! `Application::build(settings, mode)` then `run_until_stopped(shutdown)`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tts_config::Settings;
use tts_gateway::{AppState, GatewayOptions};
use tts_infra::{
    Adapters, AudioStore, JetStreamQueue, JobSource, LocalBus, LocalQueue, MemoryJobStore,
    MemoryVoiceStore, MirroredVoiceStore, NatsBus, QueueSettings, RedisJobStore, RedisRateLimiter,
    RedisVoiceStore, nats,
};
use tts_worker::{Worker, WorkerDeps, WorkerOptions};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Gateway and one worker per configured engine in one process, with an in-process queue,
    /// in-memory job state and audio in `storage.url`. Needs neither NATS nor Redis.
    Standalone { engines: Vec<String> },
    /// The HTTP gateway alone, on NATS, Redis and object storage.
    Gateway,
    /// One worker for `engine`, on NATS, Redis and object storage.
    Worker { engine: String },
}

pub struct Application {
    gateway: Option<(TcpListener, AppState)>,
    /// The listener of `/metrics` alone (`gateway.metrics_listen`), when configured.
    metrics: Option<(TcpListener, AppState)>,
    workers: Vec<(Worker, Option<TcpListener>)>,
    gateway_addr: Option<SocketAddr>,
    background: Background,
}

/// The long-lived tasks that run beside the gateway and the workers (the gateway's registry, the
/// in-process queue's delayed naks), and the token that stops them. Workers own their tasks
/// themselves: they stop them and wait for them before `Worker::run` returns.
struct Background {
    tasks: TaskTracker,
    /// The root token: every token the application hands out is a child of it or it itself.
    stop: CancellationToken,
    /// Cancels `stop` when dropped, so that an application dropped unrun (a build that fails
    /// half-way included) leaves nothing running.
    _guard: DropGuard,
}

impl Background {
    fn new() -> Self {
        let stop = CancellationToken::new();
        Background {
            tasks: TaskTracker::new(),
            _guard: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Stops every task and waits until each has ended.
    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Engines a caller built itself, by the name their workers serve; see
/// [`Application::build_with_engines`].
pub type SuppliedEngines = BTreeMap<String, Arc<dyn tts_worker::Engine>>;

impl Application {
    pub async fn build(settings: Settings, mode: Mode) -> anyhow::Result<Self> {
        Self::build_with_engines(settings, mode, SuppliedEngines::new()).await
    }

    /// As [`Application::build`], with engines the caller built for the names in `engines`:
    /// a worker for such a name runs the given engine instead of loading one from its
    /// `workers.<name>` section, and the section's options are not checked. This is how the
    /// benchmarks run an engine that does no inference through the real gateway, queue and
    /// worker; the binary never calls it.
    ///
    /// A supplied name without a `workers.<name>` section gets an empty one (port 0, no
    /// options), because the worker's health port and the gateway's list of engines come from
    /// there. Everything else behaves as `build` does, engines not in `engines` included.
    pub async fn build_with_engines(
        mut settings: Settings,
        mode: Mode,
        engines: SuppliedEngines,
    ) -> anyhow::Result<Self> {
        if !crate::allocator::first_arena_keeps_large_blocks() {
            tracing::warn!("the allocator's first arena may purge large blocks early");
        }
        for name in engines.keys() {
            settings
                .workers
                .entry(name.clone())
                .or_insert_with(|| tts_config::EngineSettings {
                    port: 0,
                    options: Default::default(),
                });
        }
        // Every other engine's options are checked in every role, so that a misspelt key fails
        // the deployment at once rather than the first worker that runs the engine.
        for name in settings.workers.keys() {
            if !engines.contains_key(name) {
                tts_worker::engine::EngineConfig::parse(name, &settings.workers)?;
            }
        }
        let background = Background::new();
        match mode {
            Mode::Standalone { engines: names } => {
                Self::standalone(settings, names, &engines, background).await
            }
            Mode::Gateway => Self::gateway(settings, background).await,
            Mode::Worker { engine } => Self::worker(settings, engine, &engines, background).await,
        }
    }

    /// The gateway's address, when this process runs one.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway_addr
    }

    /// The address of the gateway's own `/metrics` listener, when one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    async fn standalone(
        settings: Settings,
        engines: Vec<String>,
        supplied: &SuppliedEngines,
        background: Background,
    ) -> anyhow::Result<Self> {
        // Engines named on the command line must start; with none named, every configured
        // engine that can run here does, and one that cannot load (no model) is skipped with
        // the reason, so that the embedded defaults always start. An engine whose upstream
        // servers do not answer yet still starts: its worker is `degraded` and takes jobs once
        // one answers.
        let explicit = !engines.is_empty();
        let engines: Vec<String> = if explicit {
            engines
        } else {
            settings.workers.keys().cloned().collect()
        };
        let queue = LocalQueue::new(
            settings.worker.max_deliver as u32,
            background.tasks.clone(),
            background.stop.clone(),
        );
        let audio = AudioStore::from_settings(&settings.storage)?;
        let adapters = Adapters {
            store: Arc::new(MemoryJobStore::new(
                Duration::from_secs(settings.redis.job_ttl_secs),
                Duration::from_secs(settings.gateway.idempotency_ttl_secs),
            )),
            voices: Arc::new(MirroredVoiceStore::new(
                Arc::new(MemoryVoiceStore::default()),
                audio.clone(),
            )),
            bus: Arc::new(LocalBus::default()),
            audio,
            queue: Arc::new(queue.clone()),
            rate_limiter: None,
            jetstream: None,
        };
        // The gateway starts first so that its registry hears the workers' first heartbeats.
        let (listener, state) =
            Self::gateway_parts(&settings, adapters.clone(), false, &background).await?;
        let mut workers = Vec::new();
        for engine in engines {
            let (engine_impl, analysis) = match load_engine(&settings, &engine, supplied).await {
                Ok(loaded) => loaded,
                Err(e) if !explicit => {
                    tracing::warn!(%engine, error = %format!("{e:#}"), "engine skipped");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let deps = WorkerDeps {
                engine: engine_impl,
                source: Arc::new(queue.source(&engine)),
                analysis,
                adapters: adapters.clone(),
            };
            let mut options = worker_options(&settings, &engine)?;
            if !settings.worker.node_id.is_empty() {
                // One process, several workers: each needs its own id in the registry.
                options.node_id = format!("{}-{engine}", settings.worker.node_id);
            }
            workers.push((Worker::new(options, deps), None));
        }
        Ok(Application {
            gateway_addr: Some(listener.local_addr()?),
            metrics: metrics_listener(&settings, &state).await?,
            gateway: Some((listener, state)),
            workers,
            background,
        })
    }

    async fn gateway(settings: Settings, background: Background) -> anyhow::Result<Self> {
        let client = connect_nats(&settings, "voice-clone-tts gateway").await?;
        let queue = jobs_queue(&settings, &client).await?;
        let adapters = distributed_adapters(&settings, NatsBus::new(client), queue).await?;
        let (listener, state) = Self::gateway_parts(&settings, adapters, true, &background).await?;
        Ok(Application {
            gateway_addr: Some(listener.local_addr()?),
            metrics: metrics_listener(&settings, &state).await?,
            gateway: Some((listener, state)),
            workers: Vec::new(),
            background,
        })
    }

    async fn worker(
        settings: Settings,
        engine: String,
        supplied: &SuppliedEngines,
        background: Background,
    ) -> anyhow::Result<Self> {
        let engine_settings = settings.engine(&engine)?.clone();
        let client = connect_nats(&settings, &format!("voice-clone-tts worker {engine}")).await?;
        let queue = jobs_queue(&settings, &client).await?;
        let source: Arc<dyn JobSource> = Arc::new(
            nats::retry_startup(
                "the engine's jobs consumer",
                settings.nats.startup_wait(),
                || queue.source(&engine),
            )
            .await?,
        );
        let (engine_impl, analysis) = load_engine(&settings, &engine, supplied).await?;
        let deps = WorkerDeps {
            engine: engine_impl,
            source,
            analysis,
            adapters: distributed_adapters(&settings, NatsBus::new(client), queue).await?,
        };
        let listener = TcpListener::bind(("0.0.0.0", engine_settings.port))
            .await
            .with_context(|| format!("cannot listen on port {}", engine_settings.port))?;
        let mut options = worker_options(&settings, &engine)?;
        options.port = listener.local_addr()?.port();
        Ok(Application {
            gateway: None,
            metrics: None,
            gateway_addr: None,
            workers: vec![(Worker::new(options, deps), Some(listener))],
            background,
        })
    }

    async fn gateway_parts(
        settings: &Settings,
        deps: Adapters,
        distributed: bool,
        background: &Background,
    ) -> anyhow::Result<(TcpListener, AppState)> {
        let g = &settings.gateway;
        let options = GatewayOptions {
            public_url: g.public_url.clone(),
            sync_timeout: Duration::from_secs(g.sync_timeout_secs),
            max_text_chars: g.max_text_chars,
            max_json_bytes: g.max_json_bytes,
            dead_threshold: Duration::from_secs(g.dead_threshold),
            max_upload_bytes: settings.voices.max_upload_bytes,
            clone_engine: settings.voices.default_engine.clone(),
            voice_check_wait: Duration::from_secs(settings.voices.check_wait_secs),
            engines: settings.workers.keys().cloned().collect(),
            limits: tts_gateway::limits::LimitOptions {
                global_rpm: g.global_rpm,
                ip_rpm: g.ip_rpm,
                unauthenticated_rpm: g.unauthenticated_rpm,
                burst_percent: g.rate_burst_percent,
                concurrent: g.concurrent_limit,
                max_websockets: g.max_websockets,
                max_websockets_per_ip: g.max_websockets_per_ip,
                trusted_proxies: g.trusted_proxies.clone(),
            },
            max_queue_depth: g.max_queue_depth,
            request_timeout: Duration::from_secs(g.request_timeout_secs),
            cors_origins: g.cors_origins.clone(),
            openai: tts_gateway::routes::OpenAiOptions {
                models: settings.openai.models.clone(),
                voices: settings.openai.voices.clone(),
                language_voices: settings.openai.language_voices.clone(),
            },
            auth: tts_gateway::auth::AuthOptions {
                // Distributed mode is reachable by others: keys are required there unless
                // switched off; standalone runs open unless switched on.
                required: match settings.auth.mode.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => distributed,
                },
                keys: settings
                    .auth
                    .keys
                    .iter()
                    .map(|k| tts_gateway::auth::ApiKey {
                        name: k.name.clone(),
                        tenant: k.tenant.clone(),
                        sha256: k.sha256.clone(),
                        admin: k.admin,
                        rpm: k.rpm,
                    })
                    .collect(),
            },
        };
        let storage = &settings.storage;
        if storage.audio_retention_secs > 0 {
            background.tasks.spawn(tts_infra::retention::run(
                deps.audio.clone(),
                Duration::from_secs(storage.audio_retention_secs),
                Duration::from_secs(storage.sweep_interval_secs),
                background.stop.child_token(),
            ));
        }
        // Cloned voices come back from storage whenever the voice store is found empty.
        background.tasks.spawn(tts_infra::voices::keep_restored(
            deps.voices.clone(),
            VOICE_RESTORE_INTERVAL,
            background.stop.child_token(),
        ));
        // A child token of its own, which `serve` cancels once the server has finished.
        let state = AppState::start(
            deps,
            options,
            &background.tasks,
            background.stop.child_token(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("gateway: {e}"))?;
        let listener = TcpListener::bind((g.host.as_str(), g.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", g.host, g.port))?;
        Ok((listener, state))
    }

    /// Runs until `shutdown` completes: the gateway stops accepting and finishes in-flight
    /// requests; workers stop pulling, finish and ack their jobs. Then the tasks beside them are
    /// stopped, and it returns only once every task the application started has ended.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            gateway,
            metrics,
            workers,
            background,
            ..
        } = self;
        // Cancelled when `shutdown` completes; a child of the root, so that nothing outlives it.
        let stopping = background.stop.child_token();
        let mut parts = JoinSet::new();
        if let Some((listener, state)) = gateway {
            tracing::info!(addr = %listener.local_addr()?, "gateway listening");
            let signal = stopping.clone().cancelled_owned();
            parts.spawn(async move {
                tts_gateway::serve(listener, state, signal)
                    .await
                    .context("gateway")
            });
        }
        if let Some((listener, state)) = metrics {
            tracing::info!(addr = %listener.local_addr()?, "metrics listening");
            let signal = stopping.clone().cancelled_owned();
            parts.spawn(async move {
                tts_gateway::serve_metrics(listener, state, signal)
                    .await
                    .context("metrics listener")
            });
        }
        for (worker, listener) in workers {
            parts.spawn(worker.run(stopping.clone(), listener));
        }
        tokio::pin!(shutdown);
        let mut result = Ok(());
        loop {
            tokio::select! {
                _ = &mut shutdown, if !stopping.is_cancelled() => {
                    tracing::info!("shutting down");
                    stopping.cancel();
                }
                joined = parts.join_next() => match joined {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => result = Err(e),
                    Some(Err(e)) => result = Err(anyhow::anyhow!("task failed: {e}")),
                },
            }
        }
        // The gateway and the workers are done; what ran beside them stops only now, so that
        // requests and jobs in flight had it to the end.
        background.stop().await;
        result
    }
}

/// The listener of the gateway's `/metrics` alone, bound now so that a taken address fails the
/// start, not the first scrape; none unless `gateway.metrics_listen` names one.
async fn metrics_listener(
    settings: &Settings,
    state: &AppState,
) -> anyhow::Result<Option<(TcpListener, AppState)>> {
    let addr = settings.gateway.metrics_listen.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("gateway.metrics_listen: cannot listen on {addr}"))?;
    Ok(Some((listener, state.clone())))
}

/// Connects to NATS, waiting for a server to answer for up to `nats.startup_wait_secs`.
async fn connect_nats(settings: &Settings, name: &str) -> anyhow::Result<nats::Client> {
    let servers = settings.nats.servers();
    let user = &settings.nats.user;
    let password = settings.nats.password.expose();
    Ok(
        nats::retry_startup("nats", settings.nats.startup_wait(), || {
            nats::connect(&servers, name, user, password)
        })
        .await?,
    )
}

/// The jobs stream, waiting for JetStream to answer (a cluster may still be electing its leader)
/// for up to `nats.startup_wait_secs`.
async fn jobs_queue(settings: &Settings, client: &nats::Client) -> anyhow::Result<JetStreamQueue> {
    Ok(
        nats::retry_startup("the jobs stream", settings.nats.startup_wait(), || {
            JetStreamQueue::connect(client.clone(), queue_settings(settings))
        })
        .await?,
    )
}

/// How often a gateway checks that the voice store still has its voices.
const VOICE_RESTORE_INTERVAL: Duration = Duration::from_secs(10);

fn queue_settings(settings: &Settings) -> QueueSettings {
    QueueSettings {
        ack_wait: Duration::from_secs(settings.worker.ack_wait_secs),
        max_deliver: settings.worker.max_deliver,
        replicas: settings.nats.replicas,
        dead_letter_max_age: Duration::from_secs(settings.nats.dead_letter_days.max(1) * 86_400),
    }
}

/// The adapters of distributed mode: the job store, the voice store and the shared rate limits
/// on one Redis connection, the bus and the queue on one NATS connection, and object storage.
async fn distributed_adapters(
    settings: &Settings,
    bus: NatsBus,
    queue: JetStreamQueue,
) -> anyhow::Result<Adapters> {
    let jobs = RedisJobStore::connect(
        &settings.redis.url,
        &settings.redis.key_prefix,
        Duration::from_secs(settings.redis.job_ttl_secs),
        Duration::from_secs(settings.gateway.idempotency_ttl_secs),
    )
    .await?;
    let audio = AudioStore::from_settings(&settings.storage)?;
    Ok(Adapters {
        voices: Arc::new(MirroredVoiceStore::new(
            Arc::new(RedisVoiceStore::new(&jobs)),
            audio.clone(),
        )),
        rate_limiter: Some(RedisRateLimiter::new(&jobs)),
        store: Arc::new(jobs),
        bus: Arc::new(bus),
        audio,
        queue: Arc::new(queue.clone()),
        jetstream: Some(queue),
    })
}

type LoadedEngine = (
    Arc<dyn tts_worker::Engine>,
    Option<Arc<tts_worker::voice::Analysis>>,
);

/// Loads an engine (unless the caller supplied one by that name), and the reference-analysis
/// models when it clones voices, on a blocking thread: fetching and loading models takes a
/// while.
async fn load_engine(
    settings: &Settings,
    engine: &str,
    supplied: &SuppliedEngines,
) -> anyhow::Result<LoadedEngine> {
    let settings = settings.clone();
    let name = engine.to_string();
    let sessions = settings.worker.max_concurrent as usize;
    let supplied = supplied.get(engine).cloned();
    tokio::task::spawn_blocking(move || {
        let engine = match supplied {
            Some(engine) => engine,
            None => {
                let config = tts_worker::engine::EngineConfig::parse(&name, &settings.workers)?;
                tts_worker::engine::build(&config, &settings.models, sessions)?
            }
        };
        let analysis = if engine.clones() {
            Some(Arc::new(tts_worker::voice::Analysis::load(&settings)?))
        } else {
            None
        };
        // What parsing the models left behind goes back to the system now.
        crate::allocator::release_freed_memory();
        Ok::<_, tts_worker::EngineError>((engine, analysis))
    })
    .await?
    .map_err(|e| anyhow::anyhow!("engine {engine}: {e}"))
}

fn worker_options(settings: &Settings, engine: &str) -> anyhow::Result<WorkerOptions> {
    let w = &settings.worker;
    let node_id = if w.node_id.is_empty() {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "node".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}-{engine}-{}", &suffix[..8])
    } else {
        w.node_id.clone()
    };
    Ok(WorkerOptions {
        node_id,
        advertise_host: w.advertise_host.clone(),
        port: settings.engine(engine)?.port,
        max_concurrent: w.max_concurrent,
        heartbeat_interval: Duration::from_secs(w.heartbeat_interval),
        ack_wait: Duration::from_secs(w.ack_wait_secs),
        retry_delay: Duration::from_secs(w.retry_delay_secs),
        shutdown_grace: Duration::from_secs(w.shutdown_grace_secs),
        clone_settings: tts_worker::engine::CloneSettings::from_config(&settings.voices),
    })
}
