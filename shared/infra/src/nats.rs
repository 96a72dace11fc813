//! Connecting to NATS.

use std::time::Duration;

use crate::error::{InfraError, Result};

/// Connects to the NATS server at `url` as `user` (none when empty), naming the connection after
/// the process's role so that the server's monitoring shows who is who. Reconnection is
/// automatic after the first connect.
pub async fn connect(
    url: &str,
    name: &str,
    user: &str,
    password: &str,
) -> Result<async_nats::Client> {
    let options = if user.is_empty() {
        async_nats::ConnectOptions::new()
    } else {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
    };
    options
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| InfraError::unavailable(format!("nats at {url}")).with_source(e))
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
