//! Object storage for audio: a local directory, an S3-compatible bucket or memory, behind the
//! `object_store` trait. Only workers write; the gateway reads.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tts_config::StorageSettings;

use crate::error::{InfraError, Result};

#[derive(Clone)]
pub struct AudioStore {
    inner: Arc<dyn ObjectStore>,
    description: String,
    /// Top-level prefixes (`voices`, `audio`) kept in a store of their own instead of `inner`:
    /// `storage.voices_dir` and `storage.audio_dir`. Keys keep their prefix outside; inside its
    /// store an object's path lacks it.
    routes: Vec<(&'static str, Arc<dyn ObjectStore>)>,
}

impl std::fmt::Debug for AudioStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStore")
            .field("backend", &self.description)
            .finish()
    }
}

impl AudioStore {
    pub fn new(inner: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        AudioStore {
            inner,
            description: description.into(),
            routes: Vec::new(),
        }
    }

    /// Builds the backend named by `storage.url`: `file://DIR`, `s3://BUCKET` or `memory://`.
    /// With `file://`, `storage.voices_dir` and `storage.audio_dir` keep cloned voices and audio
    /// in directories of their own.
    pub fn from_settings(settings: &StorageSettings) -> Result<Self> {
        let url = settings.url.trim();
        let moved = [
            ("voices", "storage.voices_dir", settings.voices_dir.as_str()),
            ("audio", "storage.audio_dir", settings.audio_dir.as_str()),
        ];
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(InfraError::invalid("storage.url file:// needs a directory"));
            }
            let mut store = Self::new(local_dir(dir)?, format!("local directory {dir}"));
            for (prefix, _, dir) in moved.into_iter().filter(|(_, _, dir)| !dir.is_empty()) {
                store.routes.push((prefix, local_dir(dir)?));
                store.description += &format!(", {prefix}/ in {dir}");
            }
            Ok(store)
        } else if let Some((_, key, _)) = moved.iter().find(|(_, _, dir)| !dir.is_empty()) {
            Err(InfraError::invalid(format!(
                "{key} is only for file:// storage, not {url:?}"
            )))
        } else if let Some(bucket) = url.strip_prefix("s3://") {
            let bucket = bucket.trim_end_matches('/');
            if bucket.is_empty() || bucket.contains('/') {
                return Err(InfraError::invalid("storage.url s3:// needs a bucket name"));
            }
            // Retries ride out a blip; past half a minute the write fails, and the job's own
            // retry, with its back-off, takes over rather than one request holding the job.
            let retry = object_store::RetryConfig {
                retry_timeout: std::time::Duration::from_secs(30),
                ..Default::default()
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_retry(retry)
                .with_bucket_name(bucket)
                .with_region(&settings.s3_region)
                .with_allow_http(settings.s3_allow_http);
            if !settings.s3_endpoint.is_empty() {
                builder = builder.with_endpoint(&settings.s3_endpoint);
            }
            if !settings.s3_access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(&settings.s3_access_key_id)
                    .with_secret_access_key(settings.s3_secret_access_key.expose());
            }
            let s3 = builder
                .build()
                .map_err(|e| InfraError::invalid("s3 storage").with_source(e))?;
            Ok(Self::new(Arc::new(s3), format!("bucket {bucket}")))
        } else if url == "memory://" {
            Ok(Self::in_memory())
        } else {
            Err(InfraError::invalid(format!(
                "storage.url {url:?} must start with file://, s3:// or be memory://"
            )))
        }
    }

    pub fn in_memory() -> Self {
        Self::new(Arc::new(InMemory::new()), "memory")
    }

    fn path(key: &str) -> Result<Path> {
        Path::parse(key)
            .map_err(|e| InfraError::invalid(format!("object key {key:?}")).with_source(e))
    }

    /// The store that holds `key` and the object's path in it.
    fn locate(&self, key: &str) -> Result<(&dyn ObjectStore, Path)> {
        let path = Self::path(key)?;
        let mut parts = path.parts();
        let first = parts.next();
        for (prefix, store) in &self.routes {
            if first.as_ref().is_some_and(|part| part.as_ref() == *prefix) {
                return Ok((store.as_ref(), parts.collect()));
            }
        }
        Ok((self.inner.as_ref(), path))
    }

    /// Writes an object whole; readers see either the old object or the new one, never a part.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let (store, path) = self.locate(key)?;
        store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| InfraError::unavailable(format!("store {key}")).with_source(e))
    }

    /// Reads an object; `None` when there is none at `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let (store, path) = self.locate(key)?;
        match store.get(&path).await {
            Ok(result) => result
                .bytes()
                .await
                .map(Some)
                .map_err(|e| InfraError::unavailable(format!("read {key}")).with_source(e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(InfraError::unavailable(format!("read {key}")).with_source(e)),
        }
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        let (store, path) = self.locate(key)?;
        match store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(InfraError::unavailable(format!("head {key}")).with_source(e)),
        }
    }

    /// Deletes an object; deleting a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let (store, path) = self.locate(key)?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(InfraError::unavailable(format!("delete {key}")).with_source(e)),
        }
    }

    /// Deletes every object under `prefix` (all of a cloned voice's files). Every key is tried;
    /// the first failure is returned after the rest were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let mut first_failure = None;
        for key in self.list(prefix).await? {
            if let Err(e) = self.delete(&key).await {
                first_failure.get_or_insert(e);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Keys under a prefix, for tests and housekeeping.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list_dated(prefix)
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// Keys under a prefix with the time each object was last written, for the retention sweep.
    pub async fn list_dated(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>> {
        use futures::TryStreamExt;
        let (store, path) = self.locate(prefix)?;
        // A routed store's paths lack the prefix that routed them there; keys carry it again.
        let routed = Self::path(prefix)?
            .parts()
            .next()
            .filter(|first| self.routes.iter().any(|(p, _)| first.as_ref() == *p))
            .map(|first| first.as_ref().to_string());
        let metas: Vec<_> = store
            .list(Some(&path))
            .try_collect()
            .await
            .map_err(|e| InfraError::unavailable(format!("list {prefix}")).with_source(e))?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let key = match &routed {
                    Some(first) => format!("{first}/{}", m.location),
                    None => m.location.to_string(),
                };
                (key, m.last_modified)
            })
            .collect())
    }

    /// A cheap request that proves the backend answers, for health checks.
    pub async fn check(&self) -> Result<()> {
        self.exists("health/probe").await.map(|_| ())
    }
}

/// A local directory as an object store, created when missing.
fn local_dir(dir: &str) -> Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir)
        .map_err(|e| InfraError::invalid(format!("storage directory {dir}")).with_source(e))?;
    let fs = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| InfraError::invalid(format!("storage directory {dir}")).with_source(e))?;
    Ok(Arc::new(fs))
}
