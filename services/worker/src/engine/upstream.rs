//! Driving an engine that runs in another server over HTTP (GPT-SoVITS api_v2, the XTTS
//! streaming server): the servers to use, one request in flight per server, and what their
//! answers mean for the job.
//!
//! Such servers run one synthesis at a time, so each configured URL has a lock held for the
//! length of a request; requests go to the URLs in turn and wait for one to be free. A server
//! that refuses a request with a 4xx has judged the input, so the job fails with the server's
//! message; a server that cannot be reached, times out or fails with a 5xx may do better on
//! another attempt, so the job goes back to the queue.

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};

use super::{EngineError, EngineErrorKind, EngineHealth};

/// How long `/health` waits for an upstream server to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub struct Upstreams {
    engine: &'static str,
    urls: Vec<String>,
    locks: Vec<Mutex<()>>,
    next: AtomicUsize,
    /// Always `Some` until dropped; see the `Drop` impl.
    client: Option<Client>,
}

impl Drop for Upstreams {
    /// The blocking client owns a small runtime that refuses to be dropped on an async runtime's
    /// thread, which is where a worker lets go of its engine at shutdown; so it is dropped on a
    /// thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new()
                .name("upstream-client-drop".into())
                .spawn(move || drop(client));
        }
    }
}

impl Upstreams {
    /// `urls` must not be empty; `timeout` bounds one request.
    pub fn new(
        engine: &'static str,
        urls: &[String],
        timeout: Duration,
    ) -> Result<Self, EngineError> {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(EngineError::internal(format!(
                "workers.{engine}.urls lists no server"
            )));
        }
        for url in &urls {
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                EngineError::internal(format!("workers.{engine}.urls: {url:?} is not a URL: {e}"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(EngineError::internal(format!(
                    "workers.{engine}.urls: {url:?} is not an http(s) URL"
                )));
            }
        }
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| EngineError::internal(format!("HTTP client: {e}")))?;
        Ok(Upstreams {
            engine,
            locks: urls.iter().map(|_| Mutex::new(())).collect(),
            urls,
            next: AtomicUsize::new(0),
            client: Some(client),
        })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Runs `call` against one server, holding that server's lock: the next free server in turn,
    /// or, when all are busy, the next in turn once it is free.
    pub fn with_server<T>(&self, call: impl FnOnce(&Client, &str) -> T) -> T {
        let client = self.client.as_ref().expect("the client lives until drop");
        let n = self.urls.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            let k = (start + i) % n;
            let guard: Option<MutexGuard<'_, ()>> = match self.locks[k].try_lock() {
                Ok(g) => Some(g),
                // A panic while holding the lock leaves nothing half-done that matters here.
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(_guard) = guard {
                return call(client, &self.urls[k]);
            }
        }
        let _guard = self.locks[start].lock().unwrap_or_else(|p| p.into_inner());
        call(client, &self.urls[start])
    }

    /// POSTs to `path` on the next server (see [`Upstreams::with_server`]) and returns the body
    /// of a successful answer; `request` adds the body to the request.
    pub fn post(
        &self,
        path: &str,
        request: impl FnOnce(RequestBuilder) -> Result<RequestBuilder, EngineError>,
    ) -> Result<bytes::Bytes, EngineError> {
        self.with_server(|client, url| {
            let response = request(client.post(format!("{url}{path}")))?
                .send()
                .map_err(|e| self.transport_error(url, e))?;
            if !response.status().is_success() {
                return Err(self.status_error(url, response));
            }
            response.bytes().map_err(|e| self.transport_error(url, e))
        })
    }

    /// Health: ready when at least one server accepts a connection.
    pub fn health(&self) -> EngineHealth {
        let states: Vec<String> = self
            .urls
            .iter()
            .map(|url| {
                let up = reachable(url);
                format!("{url} {}", if up { "reachable" } else { "unreachable" })
            })
            .collect();
        EngineHealth {
            ready: states.iter().any(|s| s.ends_with(" reachable")),
            device: "upstream".into(),
            detail: format!("{} servers: {}", self.engine, states.join(", ")),
        }
    }

    /// What a failed request means for the job.
    pub fn transport_error(&self, url: &str, e: reqwest::Error) -> EngineError {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not be reached"
        } else {
            "failed"
        };
        EngineError::new(
            EngineErrorKind::Transient,
            "upstream_unavailable",
            format!("{} server {url} {what}: {e}", self.engine),
        )
    }

    /// Turns a non-success answer into the job's error: 4xx fails the job with the server's own
    /// message, anything else is retried.
    pub fn status_error(&self, url: &str, response: Response) -> EngineError {
        let status = response.status();
        let body = response.text().unwrap_or_default();
        let message = server_message(&body);
        if status.is_client_error() {
            EngineError::invalid(
                "upstream_rejected",
                format!(
                    "{} server refused the request ({status}): {message}",
                    self.engine
                ),
            )
        } else {
            EngineError::new(
                EngineErrorKind::Transient,
                "upstream_error",
                format!("{} server {url} answered {status}: {message}", self.engine),
            )
        }
    }
}

/// The human part of an error body: api_v2's `message` (and `Exception`), FastAPI's `detail`,
/// or the text itself.
fn server_message(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.chars().take(500).collect();
    };
    let mut parts = Vec::new();
    for key in ["message", "Exception", "detail"] {
        match json.get(key) {
            Some(serde_json::Value::String(s)) => parts.push(s.clone()),
            Some(serde_json::Value::Null) | None => {}
            Some(other) => parts.push(other.to_string()),
        }
    }
    if parts.is_empty() {
        json.to_string()
    } else {
        parts.join(": ")
    }
}

fn reachable(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return false;
    };
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| std::net::TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_the_servers_words() {
        assert_eq!(
            server_message(r#"{"message":"tts failed","Exception":"ref too long"}"#),
            "tts failed: ref too long"
        );
        assert_eq!(
            server_message(r#"{"message":"text is required"}"#),
            "text is required"
        );
        assert!(server_message(r#"{"detail":[{"loc":["body","language"]}]}"#).contains("language"));
        assert_eq!(
            server_message("Internal Server Error"),
            "Internal Server Error"
        );
    }

    #[test]
    fn urls_are_checked_at_load() {
        let t = Duration::from_secs(1);
        assert!(Upstreams::new("x", &[], t).is_err());
        assert!(Upstreams::new("x", &["ftp://a".into()], t).is_err());
        assert!(Upstreams::new("x", &["not a url".into()], t).is_err());
        let ok = Upstreams::new("x", &["http://127.0.0.1:9880/".into()], t).unwrap();
        assert_eq!(ok.urls(), ["http://127.0.0.1:9880"]);
    }

    #[test]
    fn requests_go_to_free_servers_in_turn() {
        let t = Duration::from_secs(1);
        let pool = Upstreams::new("x", &["http://a:1".into(), "http://b:1".into()], t).unwrap();
        let first = pool.with_server(|_, url| url.to_string());
        let second = pool.with_server(|_, url| url.to_string());
        assert_ne!(first, second);
        // While one server is busy, the other takes the request.
        let inner = pool.with_server(|_, outer| {
            let outer = outer.to_string();
            (outer.clone(), pool.with_server(|_, url| url.to_string()))
        });
        assert_ne!(inner.0, inner.1);
    }
}
