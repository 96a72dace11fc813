//! Rate limits shared by every gateway: a GCRA (generic cell rate algorithm) per bucket in Redis,
//! checked and updated by one script so that concurrent gateways never both take the last
//! request of a window. Time comes from the Redis server, so gateways' clocks need not agree.
//!
//! A bucket allows `per_minute` requests a minute at a steady pace and `burst` at once, so in any
//! 60 s it admits at most `per_minute + burst`. A request is checked against several buckets at
//! once (its address, its tenant, everyone) and counts in all of them or in none: a request one
//! bucket refuses must not use up another's quota.

use std::time::Duration;

use tts_contracts::JobRecord;

use crate::error::{InfraError, Result};
use crate::jobs::RedisJobStore;

/// The GCRA over the first `$buckets` of KEYS, then `$then` once every bucket has counted the
/// request. ARGV: for each bucket in turn, the microseconds between requests at the steady rate
/// and the burst (requests allowed at once). Returns {1, 0} when every bucket allows the request,
/// which then counts in each; otherwise {0, microseconds until all of them would}, and nothing
/// counts or is written. A macro, so that both scripts are literals that share one text.
macro_rules! gcra {
    ($buckets:literal, $then:literal) => {
        concat!(
            "
local buckets = ",
            $buckets,
            "
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local next_tat = {}
for i = 1, buckets do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = interval * (tonumber(ARGV[2 * i]) - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if allow_at - now > wait then wait = allow_at - now end
  next_tat[i] = tat + interval
end
if wait > 0 then
  return {0, wait}
end
for i = 1, buckets do
  redis.call('SET', KEYS[i], next_tat[i], 'PX', math.ceil((next_tat[i] - now) / 1000) + 1000)
end
",
            $then,
            "
return {1, 0}
"
        )
    };
}

/// KEYS: the buckets. See [`gcra`].
const GCRA: &str = gcra!("#KEYS", "");

/// KEYS: the buckets, then a new job's record key. ARGV: the buckets' pairs, then the record and
/// its expiry in seconds. The record is written only when the request is allowed, and only
/// where none is stored (a new job has none; a retried call finds its own).
const GCRA_THEN_RECORD: &str = gcra!(
    "#KEYS - 1",
    "redis.call('SET', KEYS[#KEYS], ARGV[#ARGV - 1], 'EX', ARGV[#ARGV], 'NX')"
);

/// One quota a request counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateBucket {
    /// The bucket's name under the key prefix, such as `ip:203.0.113.7` or `global`.
    pub name: String,
    /// Requests a minute at the steady rate.
    pub per_minute: u32,
    /// Requests admitted at once above the steady rate.
    pub burst: u32,
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; the next request is allowed after this long.
    Limited(Duration),
}

#[derive(Clone)]
pub struct RedisRateLimiter {
    /// The job store whose connection and key prefix the limits share, and where a job
    /// submission's record goes when its count and its record are written together.
    jobs: RedisJobStore,
    /// A limiter that cannot answer quickly is treated as unreachable.
    deadline: Duration,
}

impl RedisRateLimiter {
    /// Shares the job store's connection.
    pub fn new(jobs: &RedisJobStore) -> Self {
        RedisRateLimiter {
            jobs: jobs.clone(),
            deadline: Duration::from_millis(250),
        }
    }

    /// Takes one request from every bucket in `buckets`, or from none of them when one is over
    /// its limit.
    pub async fn check(&self, buckets: &[RateBucket]) -> Result<Verdict> {
        if buckets.is_empty() {
            return Ok(Verdict::Allowed);
        }
        let cmd = self.command(GCRA, buckets, None);
        // The raw connection, without the store's circuit: a limiter that does not answer is
        // passed over, not retried.
        let mut conn = self.jobs.redis().manager();
        let answer: (i64, i64) = tokio::time::timeout(self.deadline, cmd.query_async(&mut conn))
            .await
            .map_err(|_| InfraError::unavailable("redis: rate limit check timed out"))?
            .map_err(|e| InfraError::unavailable("redis").with_source(e))?;
        Ok(verdict(answer))
    }

    /// As [`check`](Self::check), and when every bucket allows the request, records the new job
    /// `record` in the same step: a job submission costs one round trip to Redis, not two. The
    /// record is a write like any other of the job store (its circuit, its retry, its error):
    /// when Redis does not answer, the job is not submitted, so there is no limit to fall back
    /// on here.
    pub async fn check_and_record(
        &self,
        buckets: &[RateBucket],
        record: &JobRecord,
    ) -> Result<Verdict> {
        let json = RedisJobStore::encode(record)?;
        let key = self.jobs.job_key(&record.job_id);
        let cmd = self.command(
            GCRA_THEN_RECORD,
            buckets,
            Some((&key, json, self.jobs.ttl_secs())),
        );
        let answer: (i64, i64) = self.jobs.redis().query(&cmd).await?;
        Ok(verdict(answer))
    }

    /// An EVAL of `script` over `buckets`, with the record's key and arguments after theirs.
    fn command(
        &self,
        script: &str,
        buckets: &[RateBucket],
        record: Option<(&str, String, u64)>,
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script)
            .arg(buckets.len() + usize::from(record.is_some()));
        for bucket in buckets {
            cmd.arg(format!("{}:rate:{}", self.jobs.prefix(), bucket.name));
        }
        if let Some((key, _, _)) = &record {
            cmd.arg(*key);
        }
        for bucket in buckets {
            let interval_us = (60_000_000 / u64::from(bucket.per_minute.max(1))).max(1);
            cmd.arg(interval_us).arg(bucket.burst.max(1));
        }
        if let Some((_, json, ttl)) = record {
            cmd.arg(json).arg(ttl);
        }
        cmd
    }
}

fn verdict(answer: (i64, i64)) -> Verdict {
    match answer {
        (1, _) => Verdict::Allowed,
        (_, wait_us) => Verdict::Limited(Duration::from_micros(wait_us.max(1) as u64)),
    }
}
