//! The worker's life: pull jobs while there are free slots, stop pulling on shutdown, finish
//! and ack what is in flight, say goodbye.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tts_contracts::WorkerStatus;
use tts_infra::{AudioStore, Bus, JetStreamQueue, JobSource, JobStore, VoiceStore};

use crate::engine::Engine;
use crate::heartbeat::{self, NodeState};
use crate::process::{self, JobContext};
use crate::voice::Analysis;
use crate::voice::clone::CloneSettings;
use crate::{health, reaper};

/// How long one pull waits for a job before the loop checks for shutdown again.
const PULL_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub node_id: String,
    pub advertise_host: String,
    pub port: u16,
    pub max_concurrent: u32,
    pub heartbeat_interval: Duration,
    pub ack_wait: Duration,
    pub retry_delay: Duration,
    pub shutdown_grace: Duration,
    /// Budget and seed of voice enrollment.
    pub clone_settings: CloneSettings,
}

pub struct WorkerDeps {
    pub engine: Arc<dyn Engine>,
    pub source: Arc<dyn JobSource>,
    pub store: Arc<dyn JobStore>,
    pub bus: Arc<dyn Bus>,
    pub audio: AudioStore,
    pub voices: Arc<dyn VoiceStore>,
    /// The reference-analysis models, for an engine that clones voices.
    pub analysis: Option<Arc<Analysis>>,
    /// Present in distributed mode, where jobs the queue gave up on must be marked failed.
    pub jetstream: Option<JetStreamQueue>,
}

pub struct Worker {
    options: WorkerOptions,
    deps: WorkerDeps,
    node: Arc<NodeState>,
}

impl Worker {
    pub fn new(options: WorkerOptions, deps: WorkerDeps) -> Self {
        let node = Arc::new(NodeState {
            node_id: options.node_id.clone(),
            host: options.advertise_host.clone(),
            port: options.port,
            max_concurrent: options.max_concurrent,
            heartbeat_interval: options.heartbeat_interval,
            started_at: Utc::now(),
            engine: deps.engine.clone(),
            load: Default::default(),
            draining: Default::default(),
        });
        Worker {
            options,
            deps,
            node,
        }
    }

    /// Runs until `shutdown` completes, then drains. `health` is the listener for `/health`
    /// (absent in standalone mode, where the gateway's covers the process).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
        health: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let Worker {
            options,
            deps,
            node,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let ctx = JobContext {
            engine: deps.engine.clone(),
            store: deps.store.clone(),
            bus: deps.bus.clone(),
            audio: deps.audio.clone(),
            voices: deps.voices.clone(),
            analysis: deps.analysis.clone(),
            clone_settings: options.clone_settings.clone(),
            ack_wait: options.ack_wait,
            retry_delay: options.retry_delay,
            node_id: options.node_id.clone(),
        };

        let heartbeats = tokio::spawn(heartbeat::run(
            deps.bus.clone(),
            node.clone(),
            stop_rx.clone(),
        ));
        if let Some(queue) = deps.jetstream.clone() {
            tokio::spawn(reaper::run(queue, ctx.clone(), stop_rx.clone()));
        }
        let health_server = health.map(|listener| {
            let app = health::router(health::HealthState {
                node: node.clone(),
                bus: deps.bus.clone(),
                store: deps.store.clone(),
            });
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { heartbeat::stopped(&mut stop).await })
                    .await;
            })
        });

        tracing::info!(
            node_id = %options.node_id,
            engine = deps.engine.name(),
            max_concurrent = options.max_concurrent,
            "worker started"
        );

        // Each job task holds a clone of `done_tx`; when all are dropped, `done_rx` yields None
        // and every in-flight job has been settled.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let slots = Arc::new(Semaphore::new(options.max_concurrent as usize));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            // A pull is never cancelled half-way, so a job the server handed over is never
            // dropped unseen; the wait is short, so shutdown is noticed soon after.
            let next = deps.source.next(PULL_WAIT).await;
            match next {
                Ok(Some(delivery)) => {
                    node.load.fetch_add(1, Ordering::Relaxed);
                    let ctx = ctx.clone();
                    let node = node.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let outcome = process::handle(&ctx, delivery).await;
                        tracing::debug!(?outcome, "delivery settled");
                        node.load.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                        drop(done);
                    });
                }
                Ok(None) => drop(permit),
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "cannot pull jobs; retrying");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }

        tracing::info!(node_id = %options.node_id, "worker draining");
        node.draining.store(true, Ordering::Relaxed);
        heartbeat::publish(deps.bus.as_ref(), &node, Some(WorkerStatus::Draining)).await;
        drop(done_tx);
        if tokio::time::timeout(options.shutdown_grace, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight jobs did not finish within the shutdown grace; the queue will redeliver them"
            );
        }
        let _ = stop_tx.send(true);
        let _ = heartbeats.await;
        heartbeat::publish(deps.bus.as_ref(), &node, Some(WorkerStatus::Offline)).await;
        if let Err(e) = deps.bus.flush().await {
            tracing::warn!(error = %e, "the offline heartbeat may not have been sent");
        }
        if let Some(server) = health_server {
            let _ = server.await;
        }
        tracing::info!(node_id = %options.node_id, "worker stopped");
        Ok(())
    }
}
