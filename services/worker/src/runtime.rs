//! ONNX Runtime: loading the shared library once per process and building sessions on the
//! configured device.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights, SessionBuilder};
use ort::value::DynValue;

use crate::error::{EngineError, EngineHealth};
use crate::{conv2d, weights};

static ENVIRONMENT: OnceLock<Result<(Environment, PathBuf), String>> = OnceLock::new();

/// Loads ONNX Runtime from `library` (a `libonnxruntime.so`). The library can be loaded once per
/// process; later calls return the first result, whatever path they name.
pub fn environment(library: &Path) -> Result<&'static Environment, EngineError> {
    // The PyPI build queues usage telemetry unless told not to; a self-hosted service sends none.
    // SAFETY: set before the runtime is loaded, from the thread that loads it; nothing else in
    // this process reads the variable concurrently.
    unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    let result = ENVIRONMENT.get_or_init(|| {
        if !library.exists() {
            return Err(format!(
                "ONNX Runtime library {} does not exist",
                library.display()
            ));
        }
        let builder = ort::init_from(library)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?;
        // One intra-op thread pool, as many threads as cores, shared by every session that does
        // not ask for threads of its own: a lone request gets every core, and concurrent
        // requests share them instead of each spinning up a pool that competes for the cores.
        let shared = GlobalThreadPoolOptions::default()
            .with_intra_threads(0)
            .and_then(|o| o.with_inter_threads(1))
            // Runs of several sessions share these threads: a thread that spins waiting for
            // its next task takes the core another run needs.
            .and_then(|o| o.with_spin_control(false))
            .map_err(|e| format!("cannot configure ONNX Runtime's threads: {e}"))?;
        let env = builder
            .with_name("voice-clone-tts")
            .with_telemetry(false)
            .with_global_thread_pool(shared)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime: {e}"))?;
        Ok((env, library.to_path_buf()))
    });
    match result {
        Ok((env, _)) => Ok(env),
        Err(message) => Err(EngineError::internal(message.clone())),
    }
}

/// The execution device a session ended up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub device: String,
    /// Why the configured device was not used, when it was not.
    pub fallback_reason: Option<String>,
}

impl Placement {
    /// An engine's health: ready, on this device, with `what` it has loaded and why it is not on
    /// the configured device when it is not.
    pub fn health(&self, what: &str) -> EngineHealth {
        EngineHealth {
            ready: true,
            device: self.device.clone(),
            detail: match &self.fallback_reason {
                Some(reason) => format!("{what} on cpu (cuda unavailable: {reason})"),
                None => format!("{what} loaded"),
            },
        }
    }
}

/// What the sessions of one pool share: the model's weights, and the rearranged copies of them
/// that some kernels make at load (prepacking), so that a pool of n sessions holds them once.
struct Shared {
    initializers: Vec<(String, Arc<DynValue>)>,
    prepacked: PrepackedWeights,
}

/// Builds a session for `model` (its file's bytes, read from `path`) on `device` (`cuda` or
/// `cpu`). When CUDA cannot be used the session runs on the CPU and the reason is logged and
/// returned. With `threads` 0 the session runs on the process's shared thread pool (see
/// [`environment`]); otherwise on a pool of its own with that many threads. `shared` weights
/// take the place of the model's own copies.
fn session(
    env: &Environment,
    path: &Path,
    model: &[u8],
    device: &str,
    threads: usize,
    shared: Option<&Shared>,
) -> Result<(Session, Placement), EngineError> {
    let builder = || -> Result<SessionBuilder, EngineError> {
        // A run's tensors come from the process's allocator, not from an arena of the session's
        // own: an arena keeps every block it grew to for the session's life, so one long
        // sentence held a worker at its high-water mark for good, while the process's allocator
        // (jemalloc, set by the `voice-clone-tts` crate) hands freed pages back within seconds
        // and reuses them meanwhile, for about 5 % more time per run (docs/PERFORMANCE.md). A
        // memory pattern (one block planned for all of a run's tensors) is off for the same
        // reason: the sizes of these models' tensors follow the text.
        let mut b = Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort::Error::<()>::from)?
            .with_memory_pattern(false)
            .map_err(ort::Error::<()>::from)?
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(false).build()])
            .map_err(ort::Error::<()>::from)?;
        if threads > 0 {
            b = b
                .with_independent_thread_pool()
                .map_err(ort::Error::<()>::from)?
                .with_intra_threads(threads)
                .map_err(ort::Error::<()>::from)?;
        }
        if let Some(shared) = shared {
            for (name, value) in &shared.initializers {
                b = b
                    .with_initializer(name, Arc::clone(value))
                    .map_err(ort::Error::<()>::from)?;
            }
            b = b
                .with_prepacked_weights(&shared.prepacked)
                .map_err(ort::Error::<()>::from)?;
        }
        Ok(b)
    };
    let load = |mut b: SessionBuilder| {
        b.commit_from_memory(model).map_err(|e| {
            EngineError::internal(format!("cannot load model {}: {e}", path.display()))
                .with_source(e)
        })
    };
    if device == "cuda" {
        let attempt = builder()?
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| e.to_string())
            .and_then(|b| load(b).map_err(|e| e.to_string()));
        match attempt {
            Ok(session) => {
                return Ok((
                    session,
                    Placement {
                        device: "cuda".into(),
                        fallback_reason: None,
                    },
                ));
            }
            Err(reason) => {
                tracing::warn!(
                    model = %path.display(),
                    %reason,
                    "CUDA execution provider unavailable; running on CPU"
                );
                let session = load(builder()?)?;
                return Ok((
                    session,
                    Placement {
                        device: "cpu".into(),
                        fallback_reason: Some(reason),
                    },
                ));
            }
        }
    }
    Ok((
        load(builder()?)?,
        Placement {
            device: "cpu".into(),
            fallback_reason: None,
        },
    ))
}

/// Loaded sessions, each used by one synthesis at a time.
pub(crate) struct SessionPool {
    free: Mutex<Vec<Session>>,
    returned: Condvar,
    size: usize,
}

pub(crate) struct PooledSession<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl SessionPool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        SessionPool {
            size: sessions.len(),
            free: Mutex::new(sessions),
            returned: Condvar::new(),
        }
    }

    /// A free session, if one is free now: for work that is worth doing only on a core that
    /// nothing else wants.
    pub(crate) fn try_take(&self) -> Option<PooledSession<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.pop().map(|session| PooledSession {
            pool: self,
            session: Some(session),
        })
    }

    /// How many sessions the pool holds, free or not.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn take(&self) -> PooledSession<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(session) = free.pop() {
                return PooledSession {
                    pool: self,
                    session: Some(session),
                };
            }
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl std::ops::Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for PooledSession<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("held until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
            free.push(session);
            self.pool.returned.notify_one();
        }
    }
}

/// Builds `count` sessions of one model and checks each against its expected inputs and outputs.
/// On the CPU the sessions share one copy of the model's weights.
pub(crate) fn session_pool(
    env: &Environment,
    model: &Path,
    device: &str,
    threads: usize,
    count: usize,
    inputs: &[&str],
    outputs: &[&str],
) -> Result<(SessionPool, Placement), EngineError> {
    let mut bytes = std::fs::read(model).map_err(|e| {
        EngineError::internal(format!("cannot read model {}: {e}", model.display())).with_source(e)
    })?;
    // On the CPU a VITS decoder runs faster with its 1-D convolutions as 2-D ones (see
    // `conv2d`); a model it cannot be done to is loaded as it is.
    let mut private = Vec::new();
    if device == "cpu" {
        match conv2d::decoder_as_2d(&bytes) {
            Ok(Some(rewritten)) => {
                tracing::info!(
                    model = %model.display(),
                    convolutions = rewritten.convolutions,
                    "running the decoder's 1-D convolutions as 2-D"
                );
                bytes = rewritten.model;
                private = rewritten.relaid_weights;
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(model = %model.display(), %reason, "model not rewritten")
            }
        }
    }
    // Weights handed over from outside stay in host memory; a CUDA session would copy them to
    // the device anyway, so only CPU sessions share them.
    let shared = if device == "cpu" && count > 1 {
        let initializers = weights::shared(&bytes, &private).map_err(|e| {
            EngineError::internal(format!("cannot read model {}: {e}", model.display()))
        })?;
        Some(Shared {
            initializers,
            prepacked: PrepackedWeights::new(),
        })
    } else {
        None
    };
    let mut sessions = Vec::new();
    let mut placement = None;
    for _ in 0..count.max(1) {
        let (session, p) = session(env, model, &bytes, device, threads, shared.as_ref())?;
        check_signature(&session, model, inputs, outputs)?;
        sessions.push(session);
        placement = Some(p);
    }
    Ok((
        SessionPool::new(sessions),
        placement.expect("at least one session"),
    ))
}

/// Refuses a model whose inputs and outputs are not the ones an engine feeds and reads, naming
/// what differs.
pub(crate) fn check_signature(
    session: &Session,
    model: &Path,
    inputs: &[&str],
    outputs: &[&str],
) -> Result<(), EngineError> {
    let have_in: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    let have_out: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for name in inputs {
        if !have_in.contains(name) {
            return Err(EngineError::internal(format!(
                "model {} has no input {name:?} (inputs: {have_in:?})",
                model.display()
            )));
        }
    }
    for name in outputs {
        if !have_out.contains(name) {
            return Err(EngineError::internal(format!(
                "model {} has no output {name:?} (outputs: {have_out:?})",
                model.display()
            )));
        }
    }
    Ok(())
}

/// The ONNX Runtime library to load: `models.onnxruntime_path` when set (a CUDA build, say),
/// otherwise the one in the model cache.
pub(crate) fn onnxruntime_library(
    models: &tts_config::ModelSettings,
    cached: std::path::PathBuf,
) -> std::path::PathBuf {
    if models.onnxruntime_path.is_empty() {
        cached
    } else {
        models.onnxruntime_path.clone().into()
    }
}

/// The family of ONNX Runtime's CPU kernels this machine gets, by the instructions they are
/// chosen by. Results differ between families beyond rounding (the 8-bit matrix kernels
/// without VNNI saturate where those with it do not), so values computed once and kept, such
/// as stock voices' embeddings, are kept per family.
pub fn cpu_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            return "x86-avx512vnni";
        }
        if std::arch::is_x86_feature_detected!("avxvnni") {
            return "x86-avxvnni";
        }
        if std::arch::is_x86_feature_detected!("avx512bw") {
            return "x86-avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "x86-avx2";
        }
        "x86"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}
