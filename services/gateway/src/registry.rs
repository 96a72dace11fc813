//! The fleet as seen from heartbeats: which workers are live and which voices they serve.
//!
//! A worker is live from its first heartbeat until `dead_threshold` after its last one, or until
//! it says it is offline. Voices are routable only while a live worker serves them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tts_contracts::{NodeInfo, VoiceInfo, WorkerStatus, subjects};
use tts_infra::Bus;

use crate::error::AppError;

#[derive(Clone)]
pub struct Registry {
    nodes: Arc<RwLock<HashMap<String, (NodeInfo, Instant)>>>,
    dead_threshold: Duration,
}

impl Registry {
    /// Subscribes to heartbeats, then asks every worker for one so that a new gateway knows the
    /// fleet at once.
    pub async fn start(bus: Arc<dyn Bus>, dead_threshold: Duration) -> Result<Self, AppError> {
        let registry = Registry {
            nodes: Arc::default(),
            dead_threshold,
        };
        let mut heartbeats = bus
            .subscribe(subjects::HEARTBEATS_ALL.to_string())
            .await
            .map_err(AppError::from)?;
        let nodes = registry.nodes.clone();
        tokio::spawn(async move {
            while let Some(message) = heartbeats.next().await {
                match serde_json::from_slice::<NodeInfo>(&message.payload) {
                    Ok(info) => {
                        let mut nodes = nodes.write().unwrap_or_else(|p| p.into_inner());
                        if info.status == WorkerStatus::Offline {
                            nodes.remove(&info.node_id);
                        } else {
                            nodes.insert(info.node_id.clone(), (info, Instant::now()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(subject = %message.subject, error = %e, "ignoring malformed heartbeat")
                    }
                }
            }
        });
        bus.publish(subjects::HEARTBEAT_REQUEST.to_string(), Bytes::new())
            .await
            .map_err(AppError::from)?;
        Ok(registry)
    }

    /// Live workers, oldest first.
    pub fn live_nodes(&self) -> Vec<NodeInfo> {
        let now = Instant::now();
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|_, (_, seen)| now.duration_since(*seen) < self.dead_threshold);
        let mut live: Vec<NodeInfo> = nodes.values().map(|(info, _)| info.clone()).collect();
        live.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then(a.node_id.cmp(&b.node_id))
        });
        live
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

    /// The languages the stock voices of `engine` speak, as its live workers report them.
    pub fn engine_languages(&self, engine: &str) -> Vec<String> {
        let mut languages: Vec<String> = Vec::new();
        for node in self.engine_nodes(engine) {
            for voice in node.voices {
                for language in std::iter::once(voice.language).chain(voice.other_languages) {
                    if !languages.contains(&language) {
                        languages.push(language);
                    }
                }
            }
        }
        languages
    }

    pub fn voice(&self, voice_id: &str) -> Option<VoiceInfo> {
        self.voices().into_iter().find(|v| v.voice_id == voice_id)
    }
}
