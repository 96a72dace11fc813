//! Connecting to NATS.

use std::time::Duration;

use async_nats::ConnectErrorKind;

/// A connection to NATS, for crates that hold one without speaking NATS themselves.
pub type Client = async_nats::Client;

use crate::error::{InfraError, InfraErrorKind, Result};

/// Connects to the NATS servers `servers` (tried in turn) as `user` (none when empty), naming
/// the connection after the process's role so that the server's monitoring shows who is who.
/// Reconnection, to any of them or to servers the cluster announces, is automatic after the
/// first connect. Wrong credentials and unparsable addresses are `Invalid`: trying again will not
/// help.
pub async fn connect(
    servers: &[&str],
    name: &str,
    user: &str,
    password: &str,
) -> Result<async_nats::Client> {
    let options = if user.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
    };
    let list = servers.join(",");
    options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .map_err(|e| {
            let what = format!("nats at {list}");
            match e.kind() {
                ConnectErrorKind::ServerParse
                | ConnectErrorKind::Authentication
                | ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::Tls => InfraError::invalid(what),
                _ => InfraError::unavailable(what),
            }
            .with_source(e)
        })
}

/// Runs `attempt` until it succeeds, fails for a reason other than an unavailable dependency, or
/// `wait` (`None`: no limit) has passed, waiting a little longer after each failure. A process
/// started beside its NATS servers, or while a cluster elects its JetStream leader, waits for
/// them instead of exiting.
pub async fn retry_startup<T, F, Fut>(
    what: &str,
    wait: Option<Duration>,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut pause = Duration::from_millis(250);
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(what, failures, "ready after waiting");
                }
                return Ok(value);
            }
            Err(e) if e.kind() != InfraErrorKind::Unavailable => return Err(e),
            Err(e) => {
                failures += 1;
                let now = tokio::time::Instant::now();
                if deadline.is_some_and(|d| now + pause > d) {
                    return Err(e);
                }
                // The first failure is routine while a deployment starts; later ones say why.
                if failures == 1 {
                    tracing::info!(what, error = %e, "not ready yet; waiting for it");
                } else {
                    tracing::warn!(what, failures, error = %e, "still not ready; waiting");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Fails at once while the client is not connected. A disconnected client buffers requests
/// until it reconnects, so without this a caller waits out the request's whole timeout while
/// NATS is down; with it the gateway answers 503 at once, and recovers with the connection.
pub(crate) fn ensure_connected(client: &async_nats::Client) -> Result<()> {
    if client.connection_state() == async_nats::connection::State::Connected {
        Ok(())
    } else {
        Err(InfraError::unavailable_because(
            "not connected",
            "nats: not connected",
        ))
    }
}
