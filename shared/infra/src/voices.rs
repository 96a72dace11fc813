//! The voice store: records of cloned voices (stock voices come from the workers' heartbeats).

use std::collections::BTreeMap;
use std::sync::Mutex;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tts_contracts::{VoiceRecord, voice_record_key};

use crate::error::{InfraError, InfraErrorKind, Result};
use crate::jobs::RedisJobStore;
use crate::redis_conn::RedisConn;
use crate::storage::AudioStore;

#[async_trait]
pub trait VoiceStore: Send + Sync + 'static {
    async fn put(&self, record: &VoiceRecord) -> Result<()>;
    /// Replaces a record that still exists; returns false, writing nothing, when it was deleted.
    /// Workers update voices this way so that an enrollment finishing after a `DELETE` does not
    /// bring the voice back.
    async fn update(&self, record: &VoiceRecord) -> Result<bool>;
    async fn get(&self, voice_id: &str) -> Result<Option<VoiceRecord>>;
    /// Removes a record; removing a missing one is not an error. Returns whether one was there.
    async fn delete(&self, voice_id: &str) -> Result<bool>;
    /// Every record, oldest first.
    async fn list(&self) -> Result<Vec<VoiceRecord>>;

    /// Puts back the records kept elsewhere when the store has lost them; returns how many. Only
    /// a store with a copy elsewhere ([`MirroredVoiceStore`]) restores anything.
    async fn restore(&self) -> Result<usize> {
        Ok(0)
    }

    /// Whether the store holds no voice.
    async fn is_empty(&self) -> Result<bool> {
        Ok(self.list().await?.is_empty())
    }
}

/// Restores `voices` at once and then every `every`, until `stop` is cancelled: a store that
/// comes back empty (Redis restarted without persistence) gets its voices back without a
/// restart of anything.
pub async fn keep_restored(
    voices: Arc<dyn VoiceStore>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(e) = voices.restore().await {
            tracing::debug!(error = %e, "could not check the voice store");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Voice records as JSON in Redis, with a set indexing them. Cloned voices do not expire.
#[derive(Clone)]
pub struct RedisVoiceStore {
    conn: RedisConn,
    prefix: String,
}

impl RedisVoiceStore {
    /// Shares the job store's connection (and so its circuit breaker).
    pub fn new(jobs: &RedisJobStore) -> Self {
        RedisVoiceStore {
            conn: jobs.redis().clone(),
            prefix: jobs.prefix().to_string(),
        }
    }

    fn key(&self, voice_id: &str) -> String {
        format!("{}:voice:{voice_id}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}:voices", self.prefix)
    }

    async fn run<T: redis::FromRedisValue + Send>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.conn.query(cmd).await
    }
}

#[async_trait]
impl VoiceStore for RedisVoiceStore {
    async fn put(&self, record: &VoiceRecord) -> Result<()> {
        let json = serde_json::to_string(record)
            .map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))?;
        let id = &record.info.voice_id;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.key(id))
            .arg(json)
            .ignore()
            .cmd("SADD")
            .arg(self.index())
            .arg(id)
            .ignore();
        self.conn.query_pipeline(&pipe).await
    }

    async fn update(&self, record: &VoiceRecord) -> Result<bool> {
        let json = serde_json::to_string(record)
            .map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))?;
        // SET XX writes only over an existing key, atomically.
        let written: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.key(&record.info.voice_id))
                    .arg(json)
                    .arg("XX"),
            )
            .await?;
        Ok(written.is_some())
    }

    async fn get(&self, voice_id: &str) -> Result<Option<VoiceRecord>> {
        let raw: Option<String> = self.run(redis::cmd("GET").arg(self.key(voice_id))).await?;
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))
        })
        .transpose()
    }

    async fn delete(&self, voice_id: &str) -> Result<bool> {
        let removed: i64 = self.run(redis::cmd("DEL").arg(self.key(voice_id))).await?;
        let _: i64 = self
            .run(redis::cmd("SREM").arg(self.index()).arg(voice_id))
            .await?;
        Ok(removed > 0)
    }

    async fn list(&self) -> Result<Vec<VoiceRecord>> {
        let ids: Vec<String> = self.run(redis::cmd("SMEMBERS").arg(self.index())).await?;
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(record) = self.get(&id).await? {
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.info.created_at);
        Ok(records)
    }

    async fn is_empty(&self) -> Result<bool> {
        let count: u64 = self.run(redis::cmd("SCARD").arg(self.index())).await?;
        Ok(count == 0)
    }
}

/// Voice records in process memory, for standalone mode.
#[derive(Default)]
pub struct MemoryVoiceStore {
    records: Mutex<BTreeMap<String, VoiceRecord>>,
}

impl MemoryVoiceStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VoiceRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl VoiceStore for MemoryVoiceStore {
    async fn put(&self, record: &VoiceRecord) -> Result<()> {
        self.lock()
            .insert(record.info.voice_id.clone(), record.clone());
        Ok(())
    }

    async fn update(&self, record: &VoiceRecord) -> Result<bool> {
        let mut records = self.lock();
        match records.get_mut(&record.info.voice_id) {
            Some(existing) => {
                *existing = record.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn get(&self, voice_id: &str) -> Result<Option<VoiceRecord>> {
        Ok(self.lock().get(voice_id).cloned())
    }

    async fn delete(&self, voice_id: &str) -> Result<bool> {
        Ok(self.lock().remove(voice_id).is_some())
    }

    async fn list(&self) -> Result<Vec<VoiceRecord>> {
        let mut records: Vec<VoiceRecord> = self.lock().values().cloned().collect();
        records.sort_by_key(|r| r.info.created_at);
        Ok(records)
    }
}

/// A voice store whose every record is also kept in object storage, beside the voice's
/// reference (`voices/<id>/record.json`). Cloned voices are users' data and Redis often runs
/// without persistence: when the store is found empty, [`VoiceStore::restore`] puts the
/// records back from storage. Storage is written first, so that a record the store has is always
/// in storage too; reads go to the store alone.
pub struct MirroredVoiceStore {
    store: Arc<dyn VoiceStore>,
    storage: AudioStore,
}

impl MirroredVoiceStore {
    pub fn new(store: Arc<dyn VoiceStore>, storage: AudioStore) -> Self {
        MirroredVoiceStore { store, storage }
    }

    async fn keep(&self, record: &VoiceRecord) -> Result<()> {
        let json =
            serde_json::to_vec(record).map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))?;
        self.storage
            .put(&voice_record_key(&record.info.voice_id), Bytes::from(json))
            .await
    }

    /// When the store holds no voice, puts back every record kept in storage. Returns how many
    /// it restored. An unreadable record is skipped and logged.
    async fn restore_from_storage(&self) -> Result<usize> {
        if !self.store.is_empty().await? {
            return Ok(0);
        }
        let mut restored = 0;
        for key in self.storage.list("voices").await? {
            if !key.ends_with("/record.json") {
                continue;
            }
            let Some(bytes) = self.storage.get(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<VoiceRecord>(&bytes) {
                Ok(record) => {
                    self.store.put(&record).await?;
                    restored += 1;
                }
                Err(e) => tracing::warn!(%key, error = %e, "a stored voice record cannot be read"),
            }
        }
        if restored > 0 {
            tracing::warn!(
                restored,
                "the voice store was empty; voices restored from storage"
            );
        }
        Ok(restored)
    }
}

#[async_trait]
impl VoiceStore for MirroredVoiceStore {
    async fn put(&self, record: &VoiceRecord) -> Result<()> {
        self.keep(record).await?;
        self.store.put(record).await
    }

    async fn update(&self, record: &VoiceRecord) -> Result<bool> {
        // Only a voice that still exists is written, in storage too, so that an update racing a
        // delete leaves nothing behind.
        if self.store.get(&record.info.voice_id).await?.is_none() {
            return Ok(false);
        }
        self.keep(record).await?;
        if self.store.update(record).await? {
            return Ok(true);
        }
        self.storage
            .delete(&voice_record_key(&record.info.voice_id))
            .await?;
        Ok(false)
    }

    async fn get(&self, voice_id: &str) -> Result<Option<VoiceRecord>> {
        self.store.get(voice_id).await
    }

    async fn delete(&self, voice_id: &str) -> Result<bool> {
        // Storage first: a voice deleted from the store alone would come back on a restore.
        self.storage.delete(&voice_record_key(voice_id)).await?;
        self.store.delete(voice_id).await
    }

    async fn list(&self) -> Result<Vec<VoiceRecord>> {
        self.store.list().await
    }

    async fn restore(&self) -> Result<usize> {
        self.restore_from_storage().await
    }

    async fn is_empty(&self) -> Result<bool> {
        self.store.is_empty().await
    }
}
