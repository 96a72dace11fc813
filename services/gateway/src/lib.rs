//! The HTTP gateway of voice-clone-tts.
//!
//! It validates requests, turns them into jobs on the queue, and serves job status, audio and
//! progress streams. It never runs a model and never writes synthesised audio (it does not link
//! ONNX Runtime): the workers do, and the gateway reads what they stored. The one object it
//! writes is a client's upload of a reference clip, which it checks decodes as audio first.

pub mod audio;
pub mod auth;
pub mod body;
pub mod console;
pub mod error;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod registry;
pub mod routes;
pub mod stream;
pub mod submit;
pub mod trace;
pub mod upload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tts_infra::Adapters;

pub use error::AppError;
pub use registry::Registry;

#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub public_url: String,
    pub sync_timeout: Duration,
    pub max_text_chars: usize,
    pub max_json_bytes: usize,
    pub dead_threshold: Duration,
    /// Largest reference clip accepted by `POST /api/voices`.
    pub max_upload_bytes: usize,
    /// Engine that enrols a voice when the upload names none.
    pub clone_engine: String,
    /// How long `POST /api/voices` waits for a worker's verdict on the clip.
    pub voice_check_wait: Duration,
    /// The engines configured in `workers`, whether or not a worker runs them now.
    pub engines: Vec<String>,
    pub limits: limits::LimitOptions,
    pub auth: auth::AuthOptions,
    /// A sync request is refused with 503 when its engine's queue holds more jobs than this.
    pub max_queue_depth: u64,
    pub request_timeout: Duration,
    pub cors_origins: Vec<String>,
    /// OpenAI's model and voice names for `/v1/audio/speech`.
    pub openai: routes::OpenAiOptions,
}

/// Shared by every request handler. Axum clones it for every request and every middleware layer,
/// so it is one reference count in front of the parts, not a clone of each.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub deps: Adapters,
    pub options: Arc<GatewayOptions>,
    pub registry: Registry,
    pub limits: Arc<limits::Limits>,
    pub auth: Arc<auth::Auth>,
    /// Cancelled when the gateway starts shutting down; WebSockets close on it.
    pub closing: CancellationToken,
    /// Stops the gateway's background tasks (the registry's). `serve` cancels it once the server
    /// has finished, so that requests still in flight see a registry that follows the fleet.
    pub stop: CancellationToken,
    /// The last probe of the dependencies that `/health` made.
    pub health: Arc<routes::HealthCache>,
    /// The queue depths sync requests were last checked against (see `submit::QueueDepths`).
    pub depths: Arc<submit::QueueDepths>,
}

impl AppState {
    /// Builds the state and starts following worker heartbeats, on tasks spawned on `tasks` that
    /// end when `stop` is cancelled (by `serve`, or earlier by the owner, e.g. when the gateway
    /// is never served).
    pub async fn start(
        deps: Adapters,
        options: GatewayOptions,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, AppError> {
        let registry = Registry::start(
            deps.bus.clone(),
            options.dead_threshold,
            tasks,
            stop.clone(),
        )
        .await?;
        let auth = auth::Auth::new(&options.auth).map_err(AppError::internal)?;
        let limits = limits::Limits::new(
            options.limits.clone(),
            auth.tenant_quotas(),
            deps.rate_limiter.clone(),
        )
        .map_err(AppError::internal)?;
        Ok(AppState(Arc::new(Shared {
            deps,
            options: Arc::new(options),
            registry,
            limits: Arc::new(limits),
            auth: Arc::new(auth),
            // A child, so that stopping the gateway outright closes its sockets too.
            closing: stop.child_token(),
            stop,
            health: Arc::default(),
            depths: Arc::default(),
        })))
    }
}

pub fn router(state: AppState) -> Router {
    routes::router(state)
}

/// Serves the API on `listener` until `shutdown` completes. Then it stops accepting
/// connections, closes WebSockets with "going away" (they outlive HTTP's graceful shutdown
/// otherwise), and lets in-flight requests, sync synthesis included, finish. Last it stops the
/// gateway's background tasks (`AppState::stop`); whoever owns their tracker waits for them.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    let stop = state.stop.clone();
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Streamed audio goes out in small writes; without TCP_NODELAY the first small one after
    // the headers waits for the client's delayed ACK (40 ms on Linux), which was most of the
    // difference between MP3's and PCM's time to first audio.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            closing.cancel();
        })
        .await;
    stop.cancel();
    served
}

/// Serves `/metrics` alone on `listener` (`gateway.metrics_listen`), without a key, until
/// `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, metrics::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
