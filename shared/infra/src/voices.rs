//! The voice store: records of cloned voices (stock voices come from the workers' heartbeats).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tts_contracts::VoiceRecord;

use crate::error::{InfraError, InfraErrorKind, Result};
use crate::jobs::RedisJobStore;
use crate::redis_conn::RedisConn;

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
