//! Rate limits shared by every gateway: a GCRA (generic cell rate algorithm) per key in Redis,
//! checked and updated by one script so that concurrent gateways never both take the last
//! request of a window. Time comes from the Redis server, so gateways' clocks need not agree.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::error::{InfraError, Result};
use crate::jobs::RedisJobStore;

/// KEYS[1]: the bucket. ARGV[1]: milliseconds between requests at the steady rate; ARGV[2]: the
/// burst (requests allowed at once). Returns {1, 0} when allowed, {0, ms to wait} when not.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return {1, 0}
";

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the limit; the next request is allowed after this long.
    Limited(Duration),
}

#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: ConnectionManager,
    prefix: String,
    /// A limiter that cannot answer quickly is treated as unreachable.
    deadline: Duration,
}

impl RedisRateLimiter {
    /// Shares the job store's connection.
    pub fn new(jobs: &RedisJobStore) -> Self {
        RedisRateLimiter {
            conn: jobs.connection(),
            prefix: jobs.prefix().to_string(),
            deadline: Duration::from_millis(250),
        }
    }

    /// Takes one request from `bucket`, which allows `per_minute` requests a minute with bursts
    /// of as many.
    pub async fn check(&self, bucket: &str, per_minute: u32) -> Result<Verdict> {
        let per_minute = per_minute.max(1);
        let interval_ms = (60_000 / per_minute as u64).max(1);
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GCRA)
            .arg(1)
            .arg(format!("{}:rate:{bucket}", self.prefix))
            .arg(interval_ms)
            .arg(per_minute);
        let mut conn = self.conn.clone();
        let answer: (i64, i64) = tokio::time::timeout(self.deadline, cmd.query_async(&mut conn))
            .await
            .map_err(|_| InfraError::unavailable("redis: rate limit check timed out"))?
            .map_err(|e| InfraError::unavailable(format!("redis: {e}")))?;
        Ok(match answer {
            (1, _) => Verdict::Allowed,
            (_, wait_ms) => Verdict::Limited(Duration::from_millis(wait_ms.max(1) as u64)),
        })
    }
}
