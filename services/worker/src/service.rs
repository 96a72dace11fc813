//! The worker's life: pull jobs while there are free slots and the engine's servers can be
//! reached, stop pulling on shutdown, finish and ack what is in flight, say goodbye.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tts_contracts::WorkerStatus;
use tts_infra::{Adapters, Bus, Delivery, JobSource};

use crate::engine::CloneSettings;
use crate::engine::Engine;
use crate::heartbeat::{self, NodeState};
use crate::job::{self, JobContext};
use crate::voice::Analysis;
use crate::{health, reaper};

/// How long one pull waits for a job before the loop checks for shutdown again.
const PULL_WAIT: Duration = Duration::from_secs(2);

/// The most pulls a worker has waiting at once. Each waits for one job with a slot of its own,
/// so more of them only lets a worker with many free slots fill them faster. Four leave room for
/// 128 workers of an engine under the server's default limit of 512 waiting pulls a consumer.
const PULLERS: usize = 4;

/// How often the worker checks that its engine's servers can be reached: how soon it stops
/// taking jobs after the last one goes away, and resumes after one comes back.
const REACHABILITY_CHECK_EVERY: Duration = Duration::from_secs(2);

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
    /// Where this worker pulls its engine's jobs.
    pub source: Arc<dyn JobSource>,
    /// The reference-analysis models, for an engine that clones voices.
    pub analysis: Option<Arc<Analysis>>,
    pub adapters: Adapters,
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
            degraded: Default::default(),
        });
        Worker {
            options,
            deps,
            node,
        }
    }

    /// Runs until `shutdown` is cancelled, then drains. `health` is the listener for `/health`
    /// (absent in standalone mode, where the gateway's covers the process). Every task the worker
    /// starts has ended when this returns (or soon after, should this future be dropped).
    pub async fn run(
        self,
        shutdown: CancellationToken,
        health: Option<TcpListener>,
    ) -> anyhow::Result<()> {
        let Worker {
            options,
            deps,
            node,
        } = self;
        let ctx = job_context(&options, &deps);
        let reachable = first_reachability(&node).await;
        let (reachable_tx, reachable_rx) = watch::channel(reachable);
        let background = Background::start(&deps, &node, &ctx, reachable_tx, health);
        tracing::info!(
            node_id = %options.node_id,
            engine = deps.engine.name(),
            max_concurrent = options.max_concurrent,
            "worker started"
        );

        // Cancelled when the worker starts draining: jobs held for want of a server give up.
        let draining = CancellationToken::new();
        let jobs = Jobs::new(&options, ctx, node.clone(), reachable_rx, draining.clone());
        jobs.pull_until(deps.source.as_ref(), &shutdown).await;

        tracing::info!(node_id = %options.node_id, "worker draining");
        node.draining.store(true, Ordering::Relaxed);
        draining.cancel();
        heartbeat::publish(
            deps.adapters.bus.as_ref(),
            &node,
            Some(WorkerStatus::Draining),
        )
        .await;
        if !jobs.settled_within(options.shutdown_grace).await {
            tracing::warn!(
                "in-flight jobs did not finish within the shutdown grace; the queue will redeliver them"
            );
        }
        background.stop(deps.adapters.bus.as_ref(), &node).await;
        tracing::info!(node_id = %options.node_id, "worker stopped");
        Ok(())
    }
}

/// What a job handler needs, from the worker's options and dependencies.
fn job_context(options: &WorkerOptions, deps: &WorkerDeps) -> JobContext {
    JobContext {
        engine: deps.engine.clone(),
        adapters: deps.adapters.clone(),
        analysis: deps.analysis.clone(),
        clone_settings: options.clone_settings.clone(),
        ack_wait: options.ack_wait,
        retry_delay: options.retry_delay,
        node_id: options.node_id.clone(),
    }
}

/// Whether the engine's servers can be reached at start, recorded as the node's `degraded`
/// flag. It is checked before the first heartbeat and the first pull, so that a worker whose
/// servers are all down at start never claims to be online or takes a job.
async fn first_reachability(node: &NodeState) -> bool {
    let reachable = reachable(&node.engine).await;
    if !reachable {
        tracing::warn!(
            engine = node.engine.name(),
            "no server of the engine can be reached; taking no jobs until one answers"
        );
    }
    node.degraded.store(!reachable, Ordering::Relaxed);
    reachable
}

/// The tasks that run beside the pull loop for the worker's whole life: the reachability
/// watcher, heartbeats, the reaper (distributed mode) and the `/health` server. They outlive
/// `shutdown` (a draining worker still heartbeats), so they stop on a token of their own.
struct Background {
    tasks: TaskTracker,
    /// Cancels the token when dropped, so that a worker dropped half-way stops its tasks too.
    stop: tokio_util::sync::DropGuard,
}

impl Background {
    fn start(
        deps: &WorkerDeps,
        node: &Arc<NodeState>,
        ctx: &JobContext,
        reachable_tx: watch::Sender<bool>,
        health: Option<TcpListener>,
    ) -> Self {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        tasks.spawn(watch_reachability(
            deps.adapters.bus.clone(),
            node.clone(),
            reachable_tx,
            stop.clone(),
        ));
        tasks.spawn(heartbeat::run(
            deps.adapters.bus.clone(),
            node.clone(),
            stop.clone(),
        ));
        if let Some(queue) = deps.adapters.jetstream.clone() {
            tasks.spawn(reaper::run(queue, ctx.clone(), stop.clone()));
        }
        if let Some(listener) = health {
            let app = health::router(health::HealthState {
                node: node.clone(),
                adapters: deps.adapters.clone(),
            });
            let stopped = stop.clone().cancelled_owned();
            tasks.spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
            });
        }
        tasks.close();
        Background {
            tasks,
            stop: stop.drop_guard(),
        }
    }

    /// Stops every task and says `offline` last.
    async fn stop(self, bus: &dyn Bus, node: &NodeState) {
        let Background { tasks, stop } = self;
        drop(stop);
        // The watcher and the heartbeats publish heartbeats: they are done before the last one
        // says `offline`.
        tasks.wait().await;
        heartbeat::publish(bus, node, Some(WorkerStatus::Offline)).await;
        if let Err(e) = bus.flush().await {
            tracing::warn!(error = %e, "the offline heartbeat may not have been sent");
        }
    }
}

/// The jobs this worker runs: a slot each and a task each, on a tracker that draining waits on.
struct Jobs {
    ctx: JobContext,
    node: Arc<NodeState>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Cancelled when the shutdown grace runs out: the jobs still running are dropped where they
    /// wait, unsettled, and the queue redelivers them, as it would after the process exits.
    abandon: CancellationToken,
    reachable: watch::Receiver<bool>,
    draining: CancellationToken,
    keepalive: Duration,
    /// How many pulls wait at once: [`PULLERS`], or fewer when the worker has fewer slots.
    pullers: usize,
}

impl Jobs {
    fn new(
        options: &WorkerOptions,
        ctx: JobContext,
        node: Arc<NodeState>,
        reachable: watch::Receiver<bool>,
        draining: CancellationToken,
    ) -> Self {
        Jobs {
            ctx,
            node,
            slots: Arc::new(Semaphore::new(options.max_concurrent as usize)),
            tasks: TaskTracker::new(),
            abandon: CancellationToken::new(),
            reachable,
            draining,
            keepalive: (options.ack_wait / 3).max(Duration::from_millis(100)),
            pullers: (options.max_concurrent as usize).clamp(1, PULLERS),
        }
    }

    /// Pulls a job for every free slot and runs each on its own task, until `shutdown`. Up to
    /// [`PULLERS`] pulls wait at once, each holding a free slot: one at a time, a worker could take
    /// jobs no faster than one per round trip to the queue, however many slots it had free.
    async fn pull_until(&self, source: &dyn JobSource, shutdown: &CancellationToken) {
        let pullers = (0..self.pullers).map(|index| self.puller(index, source, shutdown));
        futures::future::join_all(pullers).await;
    }

    async fn puller(&self, index: usize, source: &dyn JobSource, shutdown: &CancellationToken) {
        let mut reachable = self.reachable.clone();
        loop {
            // While the engine's servers cannot be reached, jobs would only fail: the worker
            // leaves them in the queue (for other workers, or for later) until one answers.
            if !*reachable.borrow() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = reachable_again(&mut reachable) => {}
                }
            }
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                permit = self.slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
            };
            // A pull is never cancelled half-way, so a job the server handed over is never
            // dropped unseen; the wait is short, so shutdown is noticed soon after.
            match source.next(PULL_WAIT).await {
                Ok(Some(delivery)) => self.spawn(delivery, permit),
                Ok(None) => drop(permit),
                Err(e) => {
                    drop(permit);
                    // Every puller sees an outage; one of them says so.
                    if index == 0 {
                        tracing::warn!(error = %e, "cannot pull jobs; retrying");
                    } else {
                        tracing::debug!(error = %e, puller = index, "cannot pull jobs; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Runs one delivery on its own task, which holds `permit` until the delivery is settled
    /// (or abandoned).
    fn spawn(&self, delivery: Box<dyn Delivery>, permit: OwnedSemaphorePermit) {
        self.node.load.fetch_add(1, Ordering::Relaxed);
        let ctx = self.ctx.clone();
        let node = self.node.clone();
        let reachable = self.reachable.clone();
        let draining = self.draining.clone();
        let abandon = self.abandon.clone();
        let keepalive = self.keepalive;
        self.tasks.spawn(async move {
            let settled = abandon.run_until_cancelled(async move {
                if let Some(delivery) =
                    hold_while_unreachable(delivery, reachable, draining, keepalive).await
                {
                    let outcome = job::handle(&ctx, delivery).await;
                    tracing::debug!(?outcome, "delivery settled");
                }
            });
            if settled.await.is_none() {
                tracing::debug!("delivery abandoned at the end of the shutdown grace");
            }
            node.load.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }

    /// Waits up to `grace` for every job in flight to be settled; false when some were not, which
    /// are then abandoned (and waited for, so that no job task outlives the worker).
    async fn settled_within(self, grace: Duration) -> bool {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_ok() {
            return true;
        }
        self.abandon.cancel();
        self.tasks.wait().await;
        false
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        // A worker dropped before its jobs were settled leaves no job task behind.
        self.abandon.cancel();
    }
}

/// Whether the engine's servers can be reached; the check may connect to them, so it runs on a
/// blocking thread.
async fn reachable(engine: &Arc<dyn Engine>) -> bool {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.reachable())
        .await
        // A check that panicked says nothing about the servers; the jobs will.
        .unwrap_or(true)
}

/// A pull that was already waiting when the engine's servers went away may still bring a job.
/// Rather than run it to fail, the worker holds it (keeping it from redelivery, as a running job
/// is kept) until a server answers, and gives it back to the queue if the worker drains first.
/// `None` when it was given back.
async fn hold_while_unreachable(
    delivery: Box<dyn Delivery>,
    mut reachable: watch::Receiver<bool>,
    draining: CancellationToken,
    keepalive: Duration,
) -> Option<Box<dyn Delivery>> {
    if *reachable.borrow() {
        return Some(delivery);
    }
    let mut ticker = tokio::time::interval(keepalive);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = reachable_again(&mut reachable) => return Some(delivery),
            _ = draining.cancelled() => {
                if let Err(e) = delivery.nak(Duration::ZERO).await {
                    tracing::warn!(error = %e, "a held job could not be given back; the queue will redeliver it");
                }
                return None;
            }
            _ = ticker.tick() => {
                if let Err(e) = delivery.in_progress().await {
                    tracing::warn!(error = %e, "progress ack of a held job failed");
                }
            }
        }
    }
}

/// Completes once the engine's servers can be reached again (or the watcher is gone).
async fn reachable_again(reachable: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is dropped here, so the future stays Send.
    let _ = reachable.wait_for(|r| *r).await;
}

/// Checks the engine's servers every [`REACHABILITY_CHECK_EVERY`] until `stop` is cancelled. When none can
/// be reached the worker is `degraded`, and when one can again it is back; each change is
/// heartbeated at once, so that gateways stop (or resume) counting on this worker without
/// waiting for the next interval.
async fn watch_reachability(
    bus: Arc<dyn Bus>,
    node: Arc<NodeState>,
    reachable_tx: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(REACHABILITY_CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and the state at start is already known.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = reachable(&node.engine).await;
        if now == *reachable_tx.borrow() {
            continue;
        }
        node.degraded.store(!now, Ordering::Relaxed);
        if now {
            tracing::info!(
                engine = node.engine.name(),
                "a server of the engine answers again; taking jobs"
            );
        } else {
            tracing::warn!(
                engine = node.engine.name(),
                "no server of the engine can be reached; taking no jobs until one answers"
            );
        }
        heartbeat::publish(bus.as_ref(), &node, None).await;
        let _ = reachable_tx.send(now);
    }
}
