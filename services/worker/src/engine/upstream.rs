//! Driving an engine that runs in another server over HTTP (GPT-SoVITS api_v2, the XTTS
//! streaming server): the servers to use, one request in flight per server, and what their
//! answers mean for the job.
//!
//! Such servers run one synthesis at a time, so each configured URL has a lock held for the
//! length of a request; requests go to the URLs in turn and wait for one to be free. A server
//! that cannot be reached is passed over for [`DOWN_FOR`] while another one is up (or until a
//! check finds it reachable again), and a request that could not connect to one server goes to
//! the next within the same attempt: a dead server is always "free", so without this it would
//! take every request the live one is too busy for. A server that refuses a request with a 4xx
//! has judged the input, so the job fails with the server's message; a server that cannot be
//! reached, times out or fails with a 5xx may do better on another attempt, so the job goes back
//! to the queue. Audio that does not decode fails the job: the same text would bring the same
//! answer.

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};

use super::{Audio, EngineError, EngineErrorKind, EngineHealth};

/// How long a check waits for an upstream server to accept a connection.
/// Seconds an upstream request may take, unless an engine's `timeout_secs` says otherwise.
pub fn default_timeout_secs() -> u64 {
    120
}

const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a server that could not be reached is passed over while another one is up. Workers
/// check their servers every few seconds, which ends it sooner when the server is back.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

struct Server {
    url: String,
    /// Held for the length of a request: the server runs one at a time.
    busy: Mutex<()>,
    /// Until when the server is passed over, after it could not be reached.
    down_until: Mutex<Option<Instant>>,
}

impl Server {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| until > now)
    }

    fn mark(&self, reachable: bool) {
        let mut until = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        *until = (!reachable).then(|| Instant::now() + DOWN_FOR);
    }

    fn try_take(&self) -> Option<MutexGuard<'_, ()>> {
        match self.busy.try_lock() {
            Ok(g) => Some(g),
            // A panic while holding the lock leaves nothing half-done that matters here.
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn take(&self) -> MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Upstreams {
    engine: &'static str,
    servers: Vec<Server>,
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
                    .with_source(e)
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
            .map_err(|e| EngineError::internal(format!("HTTP client: {e}")).with_source(e))?;
        Ok(Upstreams {
            engine,
            servers: urls
                .into_iter()
                .map(|url| Server {
                    url,
                    busy: Mutex::new(()),
                    down_until: Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
            client: Some(client),
        })
    }

    pub fn urls(&self) -> Vec<&str> {
        self.servers.iter().map(|s| s.url.as_str()).collect()
    }

    /// Takes a server for one request, passing over those in `tried`: the next free one in turn
    /// among those that are not down, or, when all of them are busy, the next of them in turn
    /// once it is free. When every server is down, the first request tries them anyway (one may
    /// be back), and a request that has already tried one gets `None`.
    fn take(&self, tried: &[usize]) -> Option<(usize, MutexGuard<'_, ()>)> {
        let n = self.servers.len();
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let in_turn = (0..n)
            .map(|i| (start + i) % n)
            .filter(|k| !tried.contains(k));
        let up: Vec<usize> = in_turn
            .clone()
            .filter(|&k| !self.servers[k].is_down(now))
            .collect();
        let pool = if !up.is_empty() {
            up
        } else if tried.is_empty() {
            in_turn.collect()
        } else {
            return None;
        };
        for &k in &pool {
            if let Some(guard) = self.servers[k].try_take() {
                return Some((k, guard));
            }
        }
        let k = *pool.first()?;
        Some((k, self.servers[k].take()))
    }

    /// Runs `call` against one server, holding that server's lock (see [`Upstreams::take`]).
    pub fn with_server<T>(&self, call: impl FnOnce(&Client, &str) -> T) -> T {
        let client = self.client.as_ref().expect("the client lives until drop");
        let (k, _guard) = self
            .take(&[])
            .expect("a first request always gets a server");
        call(client, &self.servers[k].url)
    }

    /// POSTs to `path` and returns the body of a successful answer; `request` adds the body to
    /// the request (once per server tried). A server that cannot be reached is marked down and
    /// the request goes to the next one that is up, so that one dead server costs the job
    /// nothing while another answers.
    pub fn post(
        &self,
        path: &str,
        request: impl Fn(RequestBuilder) -> Result<RequestBuilder, EngineError>,
    ) -> Result<bytes::Bytes, EngineError> {
        let client = self.client.as_ref().expect("the client lives until drop");
        let mut tried = Vec::new();
        let mut unreachable = None;
        while let Some((k, _guard)) = self.take(&tried) {
            let server = &self.servers[k];
            let url = server.url.as_str();
            let sent = request(client.post(format!("{url}{path}")))?.send();
            let response = match sent {
                Ok(response) => response,
                Err(e) if e.is_connect() => {
                    tracing::warn!(engine = self.engine, %url, error = %e, "upstream server unreachable; trying another");
                    server.mark(false);
                    tried.push(k);
                    unreachable = Some(self.transport_error(url, e));
                    continue;
                }
                Err(e) => return Err(self.transport_error(url, e)),
            };
            server.mark(true);
            if !response.status().is_success() {
                return Err(self.status_error(url, response));
            }
            return response.bytes().map_err(|e| self.transport_error(url, e));
        }
        Err(unreachable.unwrap_or_else(|| {
            EngineError::new(
                EngineErrorKind::Transient,
                "upstream_unavailable",
                format!("no {} server could be reached", self.engine),
            )
        }))
    }

    /// Checks which servers accept a connection now, marks them up or down accordingly, and
    /// says whether any does. Blocks for up to [`PROBE_TIMEOUT`] per server.
    pub fn check(&self) -> bool {
        let mut any = false;
        for server in &self.servers {
            let up = reachable(&server.url);
            server.mark(up);
            any |= up;
        }
        any
    }

    /// Health: ready when at least one server accepts a connection.
    pub fn health(&self) -> EngineHealth {
        let states: Vec<String> = self
            .servers
            .iter()
            .map(|server| {
                let up = reachable(&server.url);
                server.mark(up);
                format!(
                    "{} {}",
                    server.url,
                    if up { "reachable" } else { "unreachable" }
                )
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
        .with_source(e)
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

    /// The audio of a server's answer. A WAV whose header gives no usable length (written
    /// before the length was known, as a piped or streamed WAV is) is read to the end of the
    /// body; other audio is decoded as a whole. Audio that does not decode, or holds no
    /// samples, fails the job at once: the server would answer the same text the same way.
    pub fn audio(&self, bytes: &[u8]) -> Result<Audio, EngineError> {
        let audio = match read_wav(bytes) {
            Ok(Some(audio)) => Ok(audio),
            Ok(None) => tts_audio::decode(bytes)
                .map(|clip| Audio {
                    samples: clip.samples,
                    sample_rate: clip.sample_rate,
                })
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let bad = |why: String| {
            EngineError::new(
                EngineErrorKind::Unusable,
                "upstream_bad_audio",
                format!(
                    "{} server answered audio that cannot be used: {why}",
                    self.engine
                ),
            )
        };
        let audio = audio.map_err(bad)?;
        if audio.samples.is_empty() {
            return Err(bad("it holds no samples".into()));
        }
        Ok(audio)
    }
}

/// Reads a RIFF/WAVE body of 16-bit PCM or 32-bit float samples, trusting a chunk size only
/// where it fits the body: a data size of 0 or 0xFFFFFFFF, or one that runs past the end, means
/// "to the end". `Ok(None)` when the bytes are WAV in an encoding this does not read (left to
/// the general decoder); `Err` when they are not audio it can make sense of.
pub fn read_wav(bytes: &[u8]) -> Result<Option<Audio>, String> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        if bytes.starts_with(b"RIFF") {
            return Err("the answer is not a WAV file".into());
        }
        // Not WAV at all: another container, or not audio, which the general decoder judges.
        return Ok(None);
    }
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let mut pos = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(pos + 4) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if body + 16 > bytes.len() {
                return Err("the WAV format chunk is cut short".into());
            }
            let mut encoding = u16_at(body);
            // WAVE_FORMAT_EXTENSIBLE names the encoding in the first two bytes of its GUID.
            if encoding == 0xFFFE && size >= 40 && body + 26 <= bytes.len() {
                encoding = u16_at(body + 24);
            }
            format = Some((
                encoding,
                u16_at(body + 2),
                u32_at(body + 4),
                u16_at(body + 14),
            ));
        } else if id == b"data" {
            let (encoding, channels, rate, bits) =
                format.ok_or("the WAV file has no format chunk before its data")?;
            if channels == 0 || rate == 0 {
                return Err(format!(
                    "the WAV header says {channels} channels at {rate} Hz"
                ));
            }
            let width = match (encoding, bits) {
                (1, 16) => 2,
                (3, 32) => 4,
                _ => return Ok(None),
            };
            let end = if size == 0 || size == u32::MAX as usize || body + size > bytes.len() {
                bytes.len()
            } else {
                body + size
            };
            let channels = channels as usize;
            let samples = bytes[body..end]
                .chunks_exact(width * channels)
                .map(|frame| {
                    let sum: f32 = frame
                        .chunks_exact(width)
                        .map(|s| match width {
                            2 => i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0,
                            _ => f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                        })
                        .sum();
                    sum / channels as f32
                })
                .collect();
            return Ok(Some(Audio {
                samples,
                sample_rate: rate,
            }));
        }
        if size == u32::MAX as usize {
            break;
        }
        pos = body + size + (size & 1);
    }
    Err("the WAV file has no data chunk".into())
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

    #[test]
    fn a_server_that_is_down_is_passed_over_while_another_is_up() {
        let t = Duration::from_secs(1);
        let pool = Upstreams::new("x", &["http://a:1".into(), "http://b:1".into()], t).unwrap();
        pool.servers[1].mark(false);
        for _ in 0..4 {
            assert_eq!(pool.with_server(|_, url| url.to_string()), "http://a:1");
        }
        // Even while the live one is busy: the request waits for it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let guard = pool.servers[0].take();
            scope.spawn(|| tx.send(pool.with_server(|_, url| url.to_string())).unwrap());
            drop(guard);
        });
        assert_eq!(rx.recv().unwrap(), "http://a:1");
        // A request that found one server unreachable gets none when the rest are down too.
        pool.servers[0].mark(false);
        assert!(pool.take(&[]).is_some(), "the first try takes any");
        assert!(pool.take(&[0]).is_none());
        pool.servers[1].mark(true);
        assert_eq!(pool.take(&[0]).map(|(k, _)| k), Some(1));
    }

    fn wav_header(data_size: u32, riff_size: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(b"RIFF");
        bytes.extend(riff_size.to_le_bytes());
        bytes.extend(b"WAVEfmt ");
        bytes.extend(16u32.to_le_bytes());
        bytes.extend(1u16.to_le_bytes());
        bytes.extend(1u16.to_le_bytes());
        bytes.extend(24_000u32.to_le_bytes());
        bytes.extend(48_000u32.to_le_bytes());
        bytes.extend(2u16.to_le_bytes());
        bytes.extend(16u16.to_le_bytes());
        bytes.extend(b"data");
        bytes.extend(data_size.to_le_bytes());
        bytes
    }

    #[test]
    fn a_wav_with_unknown_sizes_is_read_to_its_end() {
        let pool = Upstreams::new("x", &["http://a:1".into()], Duration::from_secs(1)).unwrap();
        // As a streaming server writes it (sizes 0) and as a pipe does (sizes 0xFFFFFFFF).
        for (data, riff) in [(0, 36), (u32::MAX, u32::MAX)] {
            let mut bytes = wav_header(data, riff);
            for v in [0i16, 16384, -16384, 32767] {
                bytes.extend(v.to_le_bytes());
            }
            let audio = pool.audio(&bytes).unwrap();
            assert_eq!(audio.sample_rate, 24_000);
            assert_eq!(audio.samples, vec![0.0, 0.5, -0.5, 32767.0 / 32768.0]);
        }
        // A size that fits is honoured: what follows the data chunk is not audio.
        let mut bytes = wav_header(4, 44);
        bytes.extend(16384i16.to_le_bytes());
        bytes.extend((-16384i16).to_le_bytes());
        bytes.extend(b"LIST\x04\0\0\0abcd");
        assert_eq!(pool.audio(&bytes).unwrap().samples, vec![0.5, -0.5]);
    }

    #[test]
    fn audio_that_does_not_decode_fails_the_job_at_once() {
        let pool = Upstreams::new("x", &["http://a:1".into()], Duration::from_secs(1)).unwrap();
        for bytes in [
            &b"not audio at all, just some text"[..],
            b"RIFF\0\0\0\0WAVX",
            &wav_header(0, 36),
        ] {
            let e = pool.audio(bytes).unwrap_err();
            assert_eq!(e.code(), "upstream_bad_audio", "{e}");
            assert_eq!(e.kind(), EngineErrorKind::Unusable);
        }
    }
}
