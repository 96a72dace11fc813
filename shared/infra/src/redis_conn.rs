//! The one Redis connection a process shares between its job store, voice store and rate
//! limits, behind a circuit breaker, so that a Redis outage costs callers a fast 503 rather
//! than a connection timeout each.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::circuit::Circuit;
use crate::error::{InfraError, Result};

/// How long connecting to Redis may take. Redis is on the local network: longer means down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one command may take. Generous next to Redis's usual sub-millisecond answers, so
/// that a busy server (or a starved runtime) is not taken for a dead one; only the first call
/// into a hung Redis waits this long, the circuit answers the others.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long calls fail at once after Redis did not answer, before one call tries again.
const COOLDOWN: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct RedisConn {
    conn: ConnectionManager,
    circuit: Arc<Circuit>,
}

impl RedisConn {
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| InfraError::invalid("redis url").with_source(e))?;
        // One connection attempt per reconnect: the circuit, not the connection manager's
        // back-off, decides when to try again, so no caller waits through a series of retries.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(0);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        Ok(RedisConn {
            conn,
            circuit: Arc::new(Circuit::new("redis", COOLDOWN)),
        })
    }

    /// The raw connection, for callers with their own deadline and fallback (the rate limits).
    pub fn manager(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs a command, once more if the first attempt fails on the connection: after a Redis
    /// restart the connection manager reports the broken connection once, then reconnects.
    /// While Redis is known to be down it fails at once.
    pub async fn query<T: redis::FromRedisValue + Send>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.circuit.check()?;
        let mut conn = self.conn.clone();
        let result = match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) if is_connection_error(&e) => {
                cmd.query_async(&mut conn).await.map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        };
        self.circuit.record(&result);
        result
    }

    /// Runs a pipeline atomically (MULTI/EXEC), behind the same circuit.
    pub async fn query_pipeline(&self, pipe: &redis::Pipeline) -> Result<()> {
        self.circuit.check()?;
        let mut conn = self.conn.clone();
        let result = pipe.query_async::<()>(&mut conn).await.map_err(unavailable);
        self.circuit.record(&result);
        result
    }
}

/// A connection that broke (a restarted server), worth one more try on a new one. A timeout is
/// not: trying again would only double the wait.
fn is_connection_error(e: &redis::RedisError) -> bool {
    (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout()
}

/// An unavailable error whose public reason says what kind of failure it was.
fn unavailable(e: redis::RedisError) -> InfraError {
    let reason = if e.is_connection_refusal() {
        "connection refused"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_connection_dropped() || e.is_io_error() {
        "connection lost"
    } else {
        "command failed"
    };
    InfraError::unavailable_because(reason, "redis").with_source(e)
}
