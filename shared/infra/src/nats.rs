//! Connecting to NATS.

use std::time::Duration;

use crate::error::{InfraError, Result};

/// Connects to the NATS server at `url`, naming the connection after the process's role so that
/// the server's monitoring shows who is who. Reconnection is automatic after the first connect.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| InfraError::unavailable(format!("nats at {url}: {e}")))
}
