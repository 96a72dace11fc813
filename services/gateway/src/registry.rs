//! The fleet as seen from heartbeats: which workers are live and which voices they serve.
//!
//! A worker is live from its first heartbeat until `dead_threshold` after its last one, or until
//! it says it is offline. Voices are routable only while a live worker serves them. A `degraded`
//! worker (its engine's servers cannot be reached) is live and keeps its voices routable, so
//! that jobs queue for it, but it serves nobody who waits: sync requests see no worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tts_contracts::{NodeInfo, NodeView, SpeedRange, VoiceInfo, WorkerStatus, subjects};
use tts_infra::Bus;

use crate::error::AppError;

/// How often dead workers are looked for, so that a death is announced promptly.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Seen {
    info: NodeInfo,
    at: Instant,
    at_utc: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Registry {
    nodes: Arc<RwLock<HashMap<String, Seen>>>,
    /// Every stock voice any worker has announced since this gateway started, so that a voice
    /// whose workers are all gone is told apart from one that never existed.
    heard_voices: Arc<RwLock<HashMap<String, VoiceInfo>>>,
    dead_threshold: Duration,
    /// Bumped whenever the fleet as `/api/nodes` shows it changes.
    changes: watch::Sender<u64>,
}

/// What of a heartbeat the fleet view shows; a change in any of it is announced.
fn shown(info: &NodeInfo) -> (WorkerStatus, u32, u32, &str, u16) {
    (
        info.status,
        info.current_load,
        info.max_concurrent,
        &info.host,
        info.port,
    )
}

impl Registry {
    /// Subscribes to heartbeats, then asks every worker for one so that a new gateway knows the
    /// fleet at once. The listener and the sweeper run on `tasks` until `stop` is cancelled, so
    /// that whoever owns the gateway can end them and wait for them.
    pub async fn start(
        bus: Arc<dyn Bus>,
        dead_threshold: Duration,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Self, AppError> {
        let registry = Registry {
            nodes: Arc::default(),
            heard_voices: Arc::default(),
            dead_threshold,
            changes: watch::Sender::new(0),
        };
        let mut heartbeats = bus
            .subscribe(subjects::HEARTBEATS_ALL.to_string())
            .await
            .map_err(AppError::from)?;
        let listener = registry.clone();
        let listener_stop = stop.clone();
        tasks.spawn(async move {
            while let Some(Some(message)) =
                listener_stop.run_until_cancelled(heartbeats.next()).await
            {
                match serde_json::from_slice::<NodeInfo>(&message.payload) {
                    Ok(info) => listener.heard(info),
                    Err(e) => {
                        tracing::warn!(subject = %message.subject, error = %e, "ignoring malformed heartbeat")
                    }
                }
            }
        });
        let sweeper = registry.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                sweeper.sweep();
            }
        });
        bus.publish(subjects::HEARTBEAT_REQUEST.to_string(), Bytes::new())
            .await
            .map_err(AppError::from)?;
        Ok(registry)
    }

    fn heard(&self, info: NodeInfo) {
        {
            let mut voices = self.heard_voices.write().unwrap_or_else(|p| p.into_inner());
            for voice in &info.voices {
                voices.insert(voice.voice_id.clone(), voice.clone());
            }
        }
        let changed = {
            let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
            if info.status == WorkerStatus::Offline {
                // A worker that stops cleanly leaves at once.
                nodes.remove(&info.node_id).is_some()
            } else {
                let changed = nodes
                    .get(&info.node_id)
                    .is_none_or(|seen| shown(&seen.info) != shown(&info));
                nodes.insert(
                    info.node_id.clone(),
                    Seen {
                        info,
                        at: Instant::now(),
                        at_utc: Utc::now(),
                    },
                );
                changed
            }
        };
        if changed {
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// Follows changes of the fleet: the receiver is marked changed on each.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Live workers as `GET /api/nodes` shows them, oldest first.
    pub fn node_views(&self) -> Vec<NodeView> {
        self.sweep();
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut views: Vec<(DateTime<Utc>, NodeView)> = nodes
            .values()
            .map(|seen| {
                let i = &seen.info;
                (
                    i.started_at,
                    NodeView {
                        node_id: i.node_id.clone(),
                        engine: i.engine.clone(),
                        host: i.host.clone(),
                        port: i.port,
                        status: i.status,
                        current_load: i.current_load,
                        max_concurrent: i.max_concurrent,
                        last_seen: seen.at_utc,
                    },
                )
            })
            .collect();
        views.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.node_id.cmp(&b.1.node_id)));
        views.into_iter().map(|(_, v)| v).collect()
    }

    /// Live workers, oldest first.
    pub fn live_nodes(&self) -> Vec<NodeInfo> {
        self.sweep();
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<NodeInfo> = nodes.values().map(|seen| seen.info.clone()).collect();
        live.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then(a.node_id.cmp(&b.node_id))
        });
        live
    }

    /// Forgets (and announces) the workers that died.
    fn sweep(&self) {
        let now = Instant::now();
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let before = nodes.len();
        nodes.retain(|_, seen| now.duration_since(seen.at) < self.dead_threshold);
        if nodes.len() != before {
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// Every voice a live worker serves, once each, by id.
    pub fn voices(&self) -> Vec<VoiceInfo> {
        let mut voices = BTreeMap::new();
        for node in self.live_nodes() {
            if node.status == WorkerStatus::Draining {
                continue;
            }
            for voice in node.voices {
                voices.entry(voice.voice_id.clone()).or_insert(voice);
            }
        }
        voices.into_values().collect()
    }

    /// Live workers of `engine` that take jobs (draining ones do not).
    pub fn engine_nodes(&self, engine: &str) -> Vec<NodeInfo> {
        self.live_nodes()
            .into_iter()
            .filter(|n| n.engine == engine && n.status != WorkerStatus::Draining)
            .collect()
    }

    /// Live workers of `engine` that are taking jobs now: neither draining nor degraded.
    pub fn serving_nodes(&self, engine: &str) -> Vec<NodeInfo> {
        self.engine_nodes(engine)
            .into_iter()
            .filter(|n| n.status != WorkerStatus::Degraded)
            .collect()
    }

    /// The speeds every live worker of `engine` honours; `None` when it has none.
    pub fn engine_speed_range(&self, engine: &str) -> Option<SpeedRange> {
        self.engine_nodes(engine)
            .iter()
            .map(|n| n.speed_range)
            .reduce(|a, b| a.intersect(&b))
    }

    /// The languages `engine` speaks, as its live workers report them.
    pub fn engine_languages(&self, engine: &str) -> Vec<String> {
        let mut languages: Vec<String> = Vec::new();
        for node in self.engine_nodes(engine) {
            for language in node.languages {
                if !languages.contains(&language) {
                    languages.push(language);
                }
            }
        }
        languages
    }

    /// A stock voice some worker announced since this gateway started, whether or not one
    /// serves it now: asked after [`Registry::voice`] found no live one, it names a voice whose
    /// workers are gone.
    pub fn heard_voice(&self, voice_id: &str) -> Option<VoiceInfo> {
        let voices = self.heard_voices.read().unwrap_or_else(|p| p.into_inner());
        voices.get(voice_id).cloned()
    }

    pub fn voice(&self, voice_id: &str) -> Option<VoiceInfo> {
        self.voices().into_iter().find(|v| v.voice_id == voice_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tts_infra::LocalBus;

    #[tokio::test]
    async fn its_tasks_end_when_the_token_is_cancelled() {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let bus: Arc<dyn Bus> = Arc::new(LocalBus::default());
        let _registry = Registry::start(bus, Duration::from_secs(5), &tasks, stop.clone())
            .await
            .expect("the registry starts");
        assert_eq!(tasks.len(), 2, "the listener and the sweeper run");
        tasks.close();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), tasks.wait())
                .await
                .is_err(),
            "the tasks run until the token is cancelled"
        );

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .expect("the listener and the sweeper end once the token is cancelled");
    }
}
