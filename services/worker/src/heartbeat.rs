//! Heartbeats: the worker's NodeInfo on `tts.heartbeat.<engine>.<node_id>`, every interval, at
//! once when a gateway asks, and a last one saying `offline` when the worker stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tts_contracts::{NodeInfo, WorkerStatus, subjects};
use tts_infra::Bus;

use crate::engine::Engine;

/// What a worker says about itself; shared by the job loop, heartbeats and `/health`.
pub struct NodeState {
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub max_concurrent: u32,
    pub heartbeat_interval: Duration,
    pub started_at: DateTime<Utc>,
    pub engine: Arc<dyn Engine>,
    pub load: AtomicU32,
    pub draining: AtomicBool,
    /// Set while none of the servers the engine depends on can be reached; the worker takes
    /// no jobs meanwhile.
    pub degraded: AtomicBool,
}

impl NodeState {
    pub fn info(&self, status: Option<WorkerStatus>) -> NodeInfo {
        let load = self.load.load(Ordering::Relaxed);
        let speed_range = self.engine.speed_range();
        let status = status.unwrap_or(if self.draining.load(Ordering::Relaxed) {
            WorkerStatus::Draining
        } else if self.degraded.load(Ordering::Relaxed) {
            WorkerStatus::Degraded
        } else if load >= self.max_concurrent {
            WorkerStatus::Busy
        } else {
            WorkerStatus::Online
        });
        NodeInfo {
            node_id: self.node_id.clone(),
            engine: self.engine.name().to_string(),
            host: self.host.clone(),
            port: self.port,
            status,
            current_load: load,
            max_concurrent: self.max_concurrent,
            voices: self
                .engine
                .voices()
                .into_iter()
                .map(|mut voice| {
                    voice.speed_range.get_or_insert(speed_range);
                    voice
                })
                .collect(),
            clones: self.engine.clones(),
            languages: self.engine.languages(),
            speed_range,
            started_at: self.started_at,
            sent_at: Utc::now(),
            heartbeat_interval_secs: self.heartbeat_interval.as_secs(),
        }
    }
}

pub async fn publish(bus: &dyn Bus, node: &NodeState, status: Option<WorkerStatus>) {
    let info = node.info(status);
    let subject = subjects::heartbeat(&info.engine, &info.node_id);
    match serde_json::to_vec(&info) {
        Ok(payload) => {
            if let Err(e) = bus.publish(subject, Bytes::from(payload)).await {
                tracing::warn!(error = %e, "heartbeat not sent");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not encode heartbeat"),
    }
}

/// Sends heartbeats until `shutdown` is cancelled.
pub async fn run(bus: Arc<dyn Bus>, node: Arc<NodeState>, shutdown: CancellationToken) {
    let mut requests = match bus.subscribe(subjects::HEARTBEAT_REQUEST.to_string()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for heartbeat requests");
            futures::stream::pending().boxed()
        }
    };
    let mut ticker = tokio::time::interval(node.heartbeat_interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => publish(bus.as_ref(), &node, None).await,
            Some(_) = requests.next() => publish(bus.as_ref(), &node, None).await,
            _ = shutdown.cancelled() => return,
        }
    }
}
