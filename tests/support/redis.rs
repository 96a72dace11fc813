//! A `redis-server` that a test owns, for tests that stop it: its own port, no persistence,
//! killed on drop. Other tests share the machine's Redis under their own key prefix.
//!
//! redis-server cannot pick a port itself (`--port 0` turns TCP off), so the test offers it one
//! that was free a moment ago; should another process take it first, the server says so and
//! exits, and the test offers another. Readiness is the server's own "Ready to accept
//! connections" line, never a successful connect, which could reach someone else's server.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{Lines, block_on};

/// How many ports to offer before giving up.
const TRIES: usize = 10;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
}

impl RedisServer {
    /// As [`RedisServer::start_async`], for synchronous callers and multi-threaded runtimes.
    pub fn start() -> Self {
        block_on(Self::start_async())
    }

    pub async fn start_async() -> Self {
        Self::start_on(std::iter::repeat_with(candidate_port)).await
    }

    /// Offers `ports` in turn until the server binds one.
    async fn start_on(ports: impl IntoIterator<Item = u16>) -> Self {
        for port in ports.into_iter().take(TRIES) {
            match launch(port).await {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                    };
                }
                Err(printed) if printed.contains("Address already in use") => {}
                Err(printed) => panic!("redis-server did not start: {printed}"),
            }
        }
        panic!("redis-server found no free port in {TRIES} tries");
    }

    /// Starts the server again on its port after [`RedisServer::stop`], empty, as a Redis
    /// without persistence comes back, so that clients reconnect to the address they know.
    pub async fn restart(&mut self) {
        self.stop();
        match launch(self.port).await {
            Ok(child) => self.child = Some(child),
            Err(printed) => panic!("redis-server did not restart: {printed}"),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server, as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts redis-server on `port` and waits until it is ready; what it printed when it is not.
async fn launch(port: u16) -> Result<Child, String> {
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server (install redis-server): {e}"));
    let mut log = Lines::follow(child.stdout.take().expect("stdout is piped"));
    let ready = log
        .wait_for(Duration::from_secs(10), |line| {
            line.contains("Ready to accept connections").then_some(())
        })
        .await;
    match ready {
        Ok(()) => Ok(child),
        Err(printed) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(printed)
        }
    }
}

/// A port nothing listened on a moment ago. Only a candidate: another process may bind it
/// before redis-server does, which `start_async` notices and answers with another.
fn candidate_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_someone_else_holds_is_passed_over() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let taken = holder.local_addr().expect("its address").port();
        let server = RedisServer::start_on(
            std::iter::once(taken).chain(std::iter::repeat_with(candidate_port)),
        )
        .await;
        assert_ne!(server.port, taken);
        let client = redis::Client::open(server.url()).expect("a client");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("the server answers on the port it bound");
        let pong: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .expect("PING");
        assert_eq!(pong, "PONG");
    }
}
