//! The job state store: the source of truth for a job's status, progress, error and audio key.
//!
//! The gateway creates a record before the job is queued; workers update it. Once a record is
//! terminal (`succeeded` or `failed`) it never changes again, even if a stale delivery of the
//! same job finishes later, so clients never see a finished job go back to `running`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tts_contracts::{JobId, JobRecord};

use crate::error::{InfraError, InfraErrorKind, Result};
use crate::redis_conn::RedisConn;

#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    async fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>>;

    /// Stores `record` unless the stored record is already terminal. Returns whether it was
    /// written.
    async fn put(&self, record: &JobRecord) -> Result<bool>;

    /// Records that `attempt` of the job starts on `worker` ([`JobRecord::start`]) and returns
    /// the stored record: the running one, or a terminal one left as it was (an earlier delivery
    /// finished the job, or it was cancelled); `None` when there is none (it expired while the
    /// job waited). One step, so that a worker starts a job with one round trip to the store.
    async fn start(&self, job_id: &JobId, attempt: u32, worker: &str) -> Result<Option<JobRecord>>;

    /// Stores `record` whatever the stored one says: the one way a terminal record changes, for
    /// an admin who requeues a job the queue gave up on.
    async fn reset(&self, record: &JobRecord) -> Result<()>;

    /// Maps an idempotency key to `job_id`. When the key is already mapped to another job,
    /// nothing changes and that job is returned; a key already mapped to `job_id` itself (a
    /// retried claim whose first attempt landed) counts as claimed now.
    async fn claim_idempotency_key(&self, key: &str, job_id: &JobId) -> Result<Option<JobId>>;

    /// Removes a key claimed for a job that could not be queued, so that the client's retry with
    /// the same key queues it again.
    async fn release_idempotency_key(&self, key: &str, job_id: &JobId) -> Result<()>;

    /// A round trip to the store, for health checks.
    async fn ping(&self) -> Result<()>;
}

/// Job records as JSON strings in Redis, with a TTL.
#[derive(Clone)]
pub struct RedisJobStore {
    conn: RedisConn,
    prefix: String,
    ttl: Duration,
    idempotency_ttl: Duration,
}

/// Writes ARGV[1] at KEYS[1] with expiry ARGV[2] seconds unless the stored record is terminal.
/// A script, so that the check and the write are one atomic step across gateways and workers.
const PUT_UNLESS_TERMINAL: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and (decoded['status'] == 'succeeded' or decoded['status'] == 'failed'
      or decoded['status'] == 'cancelled') then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// What `JobRecord::start` does, to the record at KEYS[1] where it is stored: unless it is
/// terminal, it becomes `running` at attempt ARGV[1] on worker ARGV[2], its progress and error
/// cleared, started at ARGV[3] unless it had started before, updated at ARGV[3], and expiring in
/// ARGV[4] seconds. Returns the record as stored afterwards, or nothing when there is none.
const START_UNLESS_TERMINAL: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then
  return false
end
local ok, record = pcall(cjson.decode, current)
if not ok or record['status'] == 'succeeded' or record['status'] == 'failed'
    or record['status'] == 'cancelled' then
  return current
end
record['status'] = 'running'
record['attempts'] = tonumber(ARGV[1])
record['progress'] = 0
if record['started_at'] == nil or record['started_at'] == cjson.null then
  record['started_at'] = ARGV[3]
end
record['updated_at'] = ARGV[3]
record['error'] = nil
record['worker'] = ARGV[2]
local started = cjson.encode(record)
redis.call('SET', KEYS[1], started, 'EX', ARGV[4])
return started
"#;

/// Deletes KEYS[1] only while it still maps to ARGV[1].
const DELETE_IF_EQUAL: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

impl RedisJobStore {
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        idempotency_ttl: Duration,
    ) -> Result<Self> {
        let conn = RedisConn::connect(url).await?;
        Ok(RedisJobStore {
            conn,
            prefix: prefix.to_string(),
            ttl,
            idempotency_ttl,
        })
    }

    pub(crate) fn job_key(&self, job_id: &JobId) -> String {
        format!("{}:job:{job_id}", self.prefix)
    }

    /// A record as it is stored.
    pub(crate) fn encode(record: &JobRecord) -> Result<String> {
        serde_json::to_string(record).map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))
    }

    /// How long a record is kept, in whole seconds (at least one).
    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    fn idempotency_key(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.prefix)
    }

    async fn run<T: redis::FromRedisValue + Send>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.conn.query(cmd).await
    }

    /// The connection with its circuit breaker, for other stores that share it.
    pub fn redis(&self) -> &RedisConn {
        &self.conn
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn run_script<T: redis::FromRedisValue + Send>(
        &self,
        script: &str,
        keys: &[&str],
        args: &[String],
    ) -> Result<T> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(a);
        }
        self.run(&cmd).await
    }
}

#[async_trait]
impl JobStore for RedisJobStore {
    async fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>> {
        let raw: Option<String> = self
            .run(redis::cmd("GET").arg(self.job_key(job_id)))
            .await?;
        raw.map(|s| {
            serde_json::from_str(&s).map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))
        })
        .transpose()
    }

    async fn put(&self, record: &JobRecord) -> Result<bool> {
        let json = Self::encode(record)?;
        let written: i64 = self
            .run_script(
                PUT_UNLESS_TERMINAL,
                &[&self.job_key(&record.job_id)],
                &[json, self.ttl_secs().to_string()],
            )
            .await?;
        Ok(written == 1)
    }

    async fn start(&self, job_id: &JobId, attempt: u32, worker: &str) -> Result<Option<JobRecord>> {
        let now = serde_json::to_value(chrono::Utc::now())
            .map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))?;
        let now = now.as_str().unwrap_or_default().to_string();
        let stored: Option<String> = self
            .run_script(
                START_UNLESS_TERMINAL,
                &[&self.job_key(job_id)],
                &[
                    attempt.to_string(),
                    worker.to_string(),
                    now,
                    self.ttl_secs().to_string(),
                ],
            )
            .await?;
        stored
            .map(|s| {
                serde_json::from_str(&s).map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e))
            })
            .transpose()
    }

    async fn reset(&self, record: &JobRecord) -> Result<()> {
        let json = Self::encode(record)?;
        let _: () = self
            .run(
                redis::cmd("SET")
                    .arg(self.job_key(&record.job_id))
                    .arg(json)
                    .arg("EX")
                    .arg(self.ttl_secs()),
            )
            .await?;
        Ok(())
    }

    async fn claim_idempotency_key(&self, key: &str, job_id: &JobId) -> Result<Option<JobId>> {
        let redis_key = self.idempotency_key(key);
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(job_id.to_string())
                    .arg("NX")
                    .arg("EX")
                    .arg(self.idempotency_ttl.as_secs().max(1)),
            )
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        let existing: Option<String> = self.run(redis::cmd("GET").arg(&redis_key)).await?;
        match existing {
            // A retried SET NX whose first attempt landed finds its own id: the key is ours.
            Some(s) if s == job_id.to_string() => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| InfraError::wrap(InfraErrorKind::Corrupt, e)),
            // The key expired between the two commands: claim it again.
            None => Box::pin(self.claim_idempotency_key(key, job_id)).await,
        }
    }

    async fn release_idempotency_key(&self, key: &str, job_id: &JobId) -> Result<()> {
        let _: i64 = self
            .run_script(
                DELETE_IF_EQUAL,
                &[&self.idempotency_key(key)],
                &[job_id.to_string()],
            )
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        let _: String = self.run(&redis::cmd("PING")).await?;
        Ok(())
    }
}

/// Job records in process memory, for standalone mode. Records expire like Redis ones.
pub struct MemoryJobStore {
    ttl: Duration,
    idempotency_ttl: Duration,
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    jobs: HashMap<JobId, (JobRecord, Instant)>,
    keys: HashMap<String, (JobId, Instant)>,
}

impl MemoryJobStore {
    pub fn new(ttl: Duration, idempotency_ttl: Duration) -> Self {
        MemoryJobStore {
            ttl,
            idempotency_ttl,
            inner: Mutex::new(MemoryInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding this lock cannot leave the maps half-updated (every update is a
        // single insert), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    async fn get(&self, job_id: &JobId) -> Result<Option<JobRecord>> {
        let inner = self.lock();
        Ok(inner
            .jobs
            .get(job_id)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(r, _)| r.clone()))
    }

    async fn put(&self, record: &JobRecord) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.jobs.len() > 10_000 {
            inner.jobs.retain(|_, (_, expires)| *expires > now);
        }
        if let Some((current, expires)) = inner.jobs.get(&record.job_id)
            && *expires > now
            && current.status.is_terminal()
        {
            return Ok(false);
        }
        inner
            .jobs
            .insert(record.job_id, (record.clone(), now + self.ttl));
        Ok(true)
    }

    async fn start(&self, job_id: &JobId, attempt: u32, worker: &str) -> Result<Option<JobRecord>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some((record, expires)) = inner.jobs.get_mut(job_id).filter(|(_, e)| *e > now) else {
            return Ok(None);
        };
        if record.start(attempt, worker) {
            *expires = now + self.ttl;
        }
        Ok(Some(record.clone()))
    }

    async fn reset(&self, record: &JobRecord) -> Result<()> {
        let expires = Instant::now() + self.ttl;
        self.lock()
            .jobs
            .insert(record.job_id, (record.clone(), expires));
        Ok(())
    }

    async fn claim_idempotency_key(&self, key: &str, job_id: &JobId) -> Result<Option<JobId>> {
        let now = Instant::now();
        let mut inner = self.lock();
        if let Some((existing, expires)) = inner.keys.get(key)
            && *expires > now
            && existing != job_id
        {
            return Ok(Some(*existing));
        }
        inner
            .keys
            .insert(key.to_string(), (*job_id, now + self.idempotency_ttl));
        Ok(None)
    }

    async fn release_idempotency_key(&self, key: &str, job_id: &JobId) -> Result<()> {
        let mut inner = self.lock();
        if inner.keys.get(key).is_some_and(|(id, _)| id == job_id) {
            inner.keys.remove(key);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
