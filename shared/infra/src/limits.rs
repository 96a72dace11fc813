//! Rate limits shared by every gateway: a GCRA (generic cell rate algorithm) per bucket in Redis,
//! checked and updated by one script so that concurrent gateways never both take the last
//! request of a window. Time comes from the Redis server, so gateways' clocks need not agree.
//!
//! A bucket allows `per_minute` requests a minute at a steady pace and `burst` at once, so in any
//! 60 s it admits at most `per_minute + burst`. A request is checked against several buckets at
//! once (its address, its tenant, everyone) and counts in all of them or in none: a request one
//! bucket refuses must not use up another's quota.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::error::{InfraError, Result};
use crate::jobs::RedisJobStore;

/// KEYS: the buckets. ARGV: for each bucket in turn, the microseconds between requests at the
/// steady rate and the burst (requests allowed at once). Returns {1, 0} when every bucket allows
/// the request, which then counts in each; otherwise {0, microseconds until all of them would}
/// and nothing counts.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local next_tat = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = interval * (tonumber(ARGV[2 * i]) - 1)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if allow_at - now > wait then wait = allow_at - now end
  next_tat[i] = tat + interval
end
if wait > 0 then
  return {0, wait}
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, next_tat[i], 'PX', math.ceil((next_tat[i] - now) / 1000) + 1000)
end
return {1, 0}
";

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
    conn: ConnectionManager,
    prefix: String,
    /// A limiter that cannot answer quickly is treated as unreachable.
    deadline: Duration,
}

impl RedisRateLimiter {
    /// Shares the job store's connection.
    pub fn new(jobs: &RedisJobStore) -> Self {
        RedisRateLimiter {
            conn: jobs.redis().manager(),
            prefix: jobs.prefix().to_string(),
            deadline: Duration::from_millis(250),
        }
    }

    /// Takes one request from every bucket in `buckets`, or from none of them when one is over
    /// its limit.
    pub async fn check(&self, buckets: &[RateBucket]) -> Result<Verdict> {
        if buckets.is_empty() {
            return Ok(Verdict::Allowed);
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(GCRA).arg(buckets.len());
        for bucket in buckets {
            cmd.arg(format!("{}:rate:{}", self.prefix, bucket.name));
        }
        for bucket in buckets {
            let interval_us = (60_000_000 / u64::from(bucket.per_minute.max(1))).max(1);
            cmd.arg(interval_us).arg(bucket.burst.max(1));
        }
        let mut conn = self.conn.clone();
        let answer: (i64, i64) = tokio::time::timeout(self.deadline, cmd.query_async(&mut conn))
            .await
            .map_err(|_| InfraError::unavailable("redis: rate limit check timed out"))?
            .map_err(|e| InfraError::unavailable("redis").with_source(e))?;
        Ok(match answer {
            (1, _) => Verdict::Allowed,
            (_, wait_us) => Verdict::Limited(Duration::from_micros(wait_us.max(1) as u64)),
        })
    }
}
