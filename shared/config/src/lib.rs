//! Configuration of voice-clone-tts.
//!
//! Three layers, later ones winning: the repository's `config.yaml` compiled into the binary (so
//! the service runs with no file at all), an optional file given with `--config`, and environment
//! variables named `TTS__<SECTION>__<KEY>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};
use serde::Deserialize;

mod origin;
use origin::OriginKeys;

/// The embedded defaults: the same text as the repository's `config.yaml`.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("../../../config.yaml");

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub gateway: GatewaySettings,
    pub worker: WorkerSettings,
    pub workers: BTreeMap<String, EngineSettings>,
    pub nats: NatsSettings,
    pub redis: RedisSettings,
    pub storage: StorageSettings,
    pub voices: VoiceSettings,
    pub openai: OpenAiSettings,
    pub auth: AuthSettings,
    pub models: ModelSettings,
    pub logging: LoggingSettings,
    /// The origin document's `paths` section, less the keys that have a counterpart here.
    #[serde(default)]
    pub paths: PathSettings,
}

/// What is left of the origin document's `paths` once `paths.voices` and `paths.output` have
/// become `storage.voices_dir` and `storage.audio_dir`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathSettings {
    /// The origin's scratch directory. Accepted so that its config files load; this service
    /// writes no scratch files of its own (see [`Settings::notes`]).
    pub temp: String,
}

/// Who may call the API.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// `auto` (required by `gateway`, off in `standalone`), `on` or `off`.
    pub mode: String,
    /// API keys, stored as SHA-256 hashes. In one environment variable: a JSON list.
    #[serde(default, deserialize_with = "list_or_json")]
    pub keys: Vec<ApiKeySettings>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ApiKeySettings {
    pub name: String,
    /// Jobs, audio and cloned voices belong to the key's tenant.
    pub tenant: String,
    /// Lower-case hex SHA-256 of the key (`voice-clone-tts hash-key` prints it).
    pub sha256: String,
    /// Admin keys also see the worker fleet (`/api/nodes`, `/ws`).
    #[serde(default)]
    pub admin: bool,
    /// Requests a minute for the key's tenant, on top of the global limit; absent: the global
    /// limit alone. Keys of one tenant share the quota, so they must agree on it.
    #[serde(default)]
    pub rpm: Option<u32>,
}

/// A list of tables from YAML, or a JSON list from one environment variable.
fn list_or_json<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString<T> {
        List(Vec<T>),
        String(String),
    }
    match ListOrString::<T>::deserialize(d)? {
        ListOrString::List(items) => Ok(items),
        ListOrString::String(s) if s.trim().is_empty() => Ok(Vec::new()),
        ListOrString::String(s) => serde_json::from_str(&s).map_err(serde::de::Error::custom),
    }
}

/// Voice cloning: uploads on the gateway, enrollment on the workers.
/// How OpenAI's names map onto this service for `/v1/audio/speech`.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenAiSettings {
    /// OpenAI's model names and the engine each stands for. Engine names are models too.
    pub models: BTreeMap<String, String>,
    /// Per engine, OpenAI's voice names and the stock voice of that engine each stands for.
    pub voices: BTreeMap<String, BTreeMap<String, String>>,
    /// Per engine, the stock voice that speaks each language by default (`en`, `zh`): an
    /// OpenAI voice name whose voice was not made for the text's language is spoken by this one.
    #[serde(default)]
    pub language_voices: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VoiceSettings {
    /// Largest accepted reference clip, in bytes.
    pub max_upload_bytes: usize,
    /// Engine that enrols a voice when the upload names none.
    pub default_engine: String,
    /// How long `POST /api/voices` waits for a worker to check the clip's speech before it
    /// answers 202 anyway.
    pub check_wait_secs: u64,
    /// Syntheses the Kokoro style search may spend per voice.
    pub search_evaluations: usize,
    /// Seed of the style search, so that the same clip gives the same voice.
    pub search_seed: u64,
    /// Seconds the Kokoro style search may take per voice; 0 for no limit.
    pub search_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    pub host: String,
    pub port: u16,
    pub public_url: String,
    pub sync_timeout_secs: u64,
    pub max_text_chars: usize,
    pub max_json_bytes: usize,
    pub idempotency_ttl_secs: u64,
    pub global_rpm: u32,
    pub ip_rpm: u32,
    /// Requests a minute from callers without a valid API key, all together; they count against
    /// this and their address only, never against tenants' quotas.
    pub unauthenticated_rpm: u32,
    /// Each rate limit admits this percentage of its requests per minute at once (at least one
    /// request); in any 60 s a limit of N a minute admits at most N plus that burst.
    pub rate_burst_percent: u32,
    pub concurrent_limit: u32,
    /// WebSockets open at once on one gateway, and from one client address.
    pub max_websockets: u32,
    pub max_websockets_per_ip: u32,
    pub dead_threshold: u64,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR ranges.
    #[serde(default, deserialize_with = "list_or_string")]
    pub trusted_proxies: Vec<String>,
    /// A synchronous request is refused with 503 when its engine's queue holds more jobs.
    #[serde(default = "default_queue_depth")]
    pub max_queue_depth: u64,
    /// Longest a plain API request may take (not sync synthesis, uploads or WebSockets).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Origins allowed to call the API from a browser; empty sends no CORS headers, `*` allows
    /// any.
    #[serde(default, deserialize_with = "list_or_string")]
    pub cors_origins: Vec<String>,
    /// An address (`host:port`) that serves `/metrics` alone, without a key; empty serves it
    /// only on the API port, to admin keys.
    #[serde(default)]
    pub metrics_listen: String,
}

fn default_queue_depth() -> u64 {
    1000
}

fn default_request_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub node_id: String,
    pub advertise_host: String,
    pub heartbeat_interval: u64,
    pub max_concurrent: u32,
    pub ack_wait_secs: u64,
    pub max_deliver: i64,
    pub retry_delay_secs: u64,
    pub shutdown_grace_secs: u64,
}

/// One `workers.<name>` section. The worker's port is common to every engine; everything else
/// belongs to the engine, which parses it into its own typed options at start
/// ([`EngineSettings::parse`]) and refuses keys it does not know, so that a misspelt option fails
/// the deployment instead of being ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct EngineSettings {
    /// The port of the worker's health server.
    pub port: u16,
    /// The engine's own keys, as configured.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl EngineSettings {
    /// Parses the engine's keys into its options type, naming the key at fault in errors
    /// (`workers.piper.device: unknown variant ...`).
    pub fn parse<T: serde::de::DeserializeOwned>(&self, engine: &str) -> Result<T, ConfigError> {
        let value = serde_json::Value::Object(self.options.clone());
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let at = if path == "." || path.is_empty() {
                format!("workers.{engine}")
            } else {
                format!("workers.{engine}.{path}")
            };
            ConfigError(format!("{at}: {}", e.inner()))
        })
    }

    /// Sets one of the engine's keys, as a file or variable would.
    pub fn set(&mut self, key: &str, value: impl serde::Serialize) -> &mut Self {
        let value = serde_json::to_value(value).expect("a settings value serialises to JSON");
        self.options.insert(key.to_string(), value);
        self
    }
}

/// Whether `format` is a Python `logging` format string: one or more `%(name)` fields, each
/// followed by a conversion such as `s` or `d`, as in `"%(asctime)s - %(message)s"`.
fn is_python_logging_format(format: &str) -> bool {
    let mut fields = 0;
    let mut rest = format;
    while let Some(start) = rest.find("%(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else {
            return false;
        };
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
        // Flags, width and precision may stand between the field and its conversion letter.
        let conversion = after[end + 1..]
            .trim_start_matches(|c: char| c.is_ascii_digit() || "-+ #.".contains(c))
            .chars()
            .next();
        if !conversion.is_some_and(|c| "sdifrxXeEgGoc".contains(c)) {
            return false;
        }
        fields += 1;
        rest = &after[end + 1..];
    }
    fields > 0
}

fn looks_like_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((addr, bits)) => {
            addr.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
        }
        None => false,
    }
}

/// A list from YAML, or from one environment variable as `a,b` or `["a","b"]`. Engines use it for
/// their lists of upstream servers.
pub fn list_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(items) => items,
        ListOrString::String(s) if s.trim_start().starts_with('[') => {
            serde_json::from_str(&s).map_err(serde::de::Error::custom)?
        }
        ListOrString::String(s) => s
            .split(',')
            .map(|item| item.trim().to_string())
            .filter(|item| !item.is_empty())
            .collect(),
    })
}

/// A configured secret. It deserializes from a plain string, and `Debug` shows it as `***`, so
/// that settings printed or logged never reveal it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

/// A URL as it may be logged: a password in it (`redis://:pw@host`) shown as `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct NatsSettings {
    /// One server's URL, or several separated by commas: the client tries each in turn, at
    /// start-up and on every reconnect, so no single server has to be up.
    pub url: String,
    pub replicas: usize,
    /// How long a starting gateway or worker waits for NATS and JetStream to answer before it
    /// gives up; 0 waits for as long as it takes.
    #[serde(default = "default_startup_wait_secs")]
    pub startup_wait_secs: u64,
    /// Days a dead letter (a job that used up its deliveries) is kept for an admin to requeue.
    #[serde(default = "default_dead_letter_days")]
    pub dead_letter_days: u64,
    /// The user this process connects as (nats/nats-server.conf defines `gateway` and
    /// `worker`); empty connects without credentials.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: Secret,
}

fn default_startup_wait_secs() -> u64 {
    120
}

fn default_dead_letter_days() -> u64 {
    14
}

impl NatsSettings {
    /// The servers `url` names, in the order given.
    pub fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// `None` waits for as long as it takes.
    pub fn startup_wait(&self) -> Option<std::time::Duration> {
        (self.startup_wait_secs > 0).then(|| std::time::Duration::from_secs(self.startup_wait_secs))
    }
}

#[derive(Clone, Deserialize)]
pub struct RedisSettings {
    /// May carry a password (`redis://:pw@host`); `Debug` hides it.
    pub url: String,
    pub key_prefix: String,
    pub job_ttl_secs: u64,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("job_ttl_secs", &self.job_ttl_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub url: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: Secret,
    pub s3_allow_http: bool,
    /// With `file://` storage, the directory that holds cloned voices' objects (`voices/...`)
    /// instead of the storage directory (the origin's `paths.voices`). Empty: the storage
    /// directory.
    #[serde(default)]
    pub voices_dir: String,
    /// The same for audio (`audio/...`), the origin's `paths.output`.
    #[serde(default)]
    pub audio_dir: String,
    /// Seconds a job's audio is kept after it was written; 0 keeps it for ever.
    #[serde(default = "default_audio_retention_secs")]
    pub audio_retention_secs: u64,
    /// Seconds between two sweeps for expired audio.
    #[serde(default = "default_sweep_interval_secs")]
    pub sweep_interval_secs: u64,
}

fn default_audio_retention_secs() -> u64 {
    86_400
}

fn default_sweep_interval_secs() -> u64 {
    600
}

impl StorageSettings {
    /// The directory of `file://` storage, or `None` for other backends.
    pub fn file_dir(&self) -> Option<&str> {
        self.url.trim().strip_prefix("file://")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSettings {
    pub cache_dir: PathBuf,
    pub onnxruntime_path: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoggingSettings {
    pub level: String,
    pub format: String,
    /// Base URL of an OTLP/HTTP collector; empty: spans are not exported.
    pub otlp_endpoint: String,
    /// `service.name` of exported spans; empty: one named after the command.
    pub service_name: String,
    /// Also write log lines to a file per process in `dir`, as the origin document lays them
    /// out: `gateway.log`, `worker-<engine>.log`, `standalone.log`.
    pub files: bool,
    pub dir: PathBuf,
    /// One file every process writes to instead (the origin's `logs/voice-clone.log`); setting
    /// it turns file logging on.
    pub file: String,
    /// A log file is rotated when it reaches this many MiB; this many rotated files are kept
    /// beside it (`gateway.log.1` is the newest).
    pub max_file_mib: u64,
    pub max_files: usize,
}

impl Settings {
    /// Embedded defaults, then `file` when given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given explicitly (tests use this so that they
    /// neither read nor change the real one).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        // Every layer has the origin document's keys rewritten to this service's before the
        // layers are merged, so that an origin key overrides the layers below it like its
        // counterpart does.
        let mut builder = config::Config::builder().add_source(OriginKeys(File::from_str(
            DEFAULT_CONFIG_YAML,
            FileFormat::Yaml,
        )));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(OriginKeys(File::from(path).format(FileFormat::Yaml)));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(key, _)| key.starts_with("TTS__"))
            .collect();
        builder = builder.add_source(OriginKeys(
            Environment::with_prefix("TTS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        ));
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that catch a bad deployment at start-up rather than at the first request.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.nats.servers().is_empty() {
            return fail("nats.url must name at least one server".into());
        }
        for server in self.nats.servers() {
            // A URL without a scheme is a host and port, which is what the client takes too.
            let authority = server.split_once("://").map_or(server, |(_, rest)| rest);
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let bad_port = host_port
                .rsplit_once(':')
                .is_some_and(|(_, port)| !port.ends_with(']') && port.parse::<u16>().is_err());
            if bad_port || host_port.is_empty() || host_port.contains(['/', ';', ' ']) {
                return fail(format!(
                    "nats.url: {server:?} is not a server address (host:port, with an optional \
                     nats:// scheme); several servers are separated by commas \
                     (nats://a:4222,nats://b:4222)"
                ));
            }
        }
        if self.worker.max_concurrent == 0 {
            return fail("worker.max_concurrent must be at least 1".into());
        }
        if self.worker.max_deliver < 1 {
            return fail("worker.max_deliver must be at least 1".into());
        }
        if self.worker.ack_wait_secs < 3 {
            return fail("worker.ack_wait_secs must be at least 3".into());
        }
        if self.worker.heartbeat_interval == 0 {
            return fail("worker.heartbeat_interval must be at least 1".into());
        }
        if self.gateway.global_rpm == 0
            || self.gateway.ip_rpm == 0
            || self.gateway.unauthenticated_rpm == 0
        {
            return fail(
                "gateway.global_rpm, gateway.ip_rpm and gateway.unauthenticated_rpm must be at \
                 least 1"
                    .into(),
            );
        }
        if !(1..=100).contains(&self.gateway.rate_burst_percent) {
            return fail("gateway.rate_burst_percent must be between 1 and 100".into());
        }
        if self.gateway.max_websockets == 0 || self.gateway.max_websockets_per_ip == 0 {
            return fail(
                "gateway.max_websockets and gateway.max_websockets_per_ip must be at least 1"
                    .into(),
            );
        }
        for key in &self.auth.keys {
            if key.rpm == Some(0) {
                return fail(format!(
                    "auth.keys: rpm of key {:?} must be at least 1",
                    key.name
                ));
            }
        }
        if self.gateway.concurrent_limit == 0 {
            return fail("gateway.concurrent_limit must be at least 1".into());
        }
        for proxy in &self.gateway.trusted_proxies {
            if proxy.parse::<std::net::IpAddr>().is_err() && !looks_like_cidr(proxy) {
                return fail(format!(
                    "gateway.trusted_proxies: {proxy:?} is neither an address nor a CIDR range"
                ));
            }
        }
        if self.gateway.max_text_chars == 0 {
            return fail("gateway.max_text_chars must be at least 1".into());
        }
        // Each engine checks its own keys when the service starts (`EngineSettings::parse`).
        for engine in self.workers.keys() {
            if !tts_contracts::subjects::is_valid_engine_name(engine) {
                return fail(format!(
                    "workers.{engine}: engine names are lower-case letters, digits, _ and -"
                ));
            }
        }
        if self.storage.sweep_interval_secs == 0 {
            return fail("storage.sweep_interval_secs must be at least 1".into());
        }
        if self.voices.max_upload_bytes == 0 {
            return fail("voices.max_upload_bytes must be at least 1".into());
        }
        if !matches!(self.auth.mode.as_str(), "auto" | "on" | "off") {
            return fail(format!(
                "auth.mode must be auto, on or off, not {:?}",
                self.auth.mode
            ));
        }
        let format = self.logging.format.as_str();
        if !matches!(format, "text" | "json") && !is_python_logging_format(format) {
            return fail(format!(
                "logging.format must be text, json or a Python logging format such as \
                 \"%(asctime)s - %(levelname)s - %(message)s\" (written as text), not {format:?}"
            ));
        }
        self.validate_storage_dirs()?;
        let endpoint = &self.logging.otlp_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            return fail(
                "logging.otlp_endpoint must be empty or an http:// or https:// URL".into(),
            );
        }
        Ok(())
    }

    /// `storage.voices_dir` and `storage.audio_dir` move objects out of a storage directory,
    /// which only `file://` storage has. The directories must be apart: a listing of one must
    /// not find the objects of another.
    fn validate_storage_dirs(&self) -> Result<(), ConfigError> {
        let storage = &self.storage;
        let moved = [
            ("storage.voices_dir", "paths.voices", &storage.voices_dir),
            ("storage.audio_dir", "paths.output", &storage.audio_dir),
        ];
        let mut dirs = Vec::new();
        if let Some(dir) = storage.file_dir() {
            dirs.push(("the storage.url directory".to_string(), dir));
        }
        for (key, origin, dir) in moved {
            if dir.is_empty() {
                continue;
            }
            if storage.file_dir().is_none() {
                return Err(ConfigError(format!(
                    "{key} ({origin} in the origin document) is {dir:?}, but only file:// \
                     storage keeps objects in directories and storage.url is {:?}; leave it \
                     empty",
                    redact_url(&storage.url)
                )));
            }
            dirs.push((format!("{key} ({origin})"), dir.as_str()));
        }
        let absolute = |dir: &str| std::path::absolute(dir).unwrap_or_else(|_| dir.into());
        for (i, (a, dir_a)) in dirs.iter().enumerate() {
            for (b, dir_b) in &dirs[i + 1..] {
                let (path_a, path_b) = (absolute(dir_a), absolute(dir_b));
                if path_a.starts_with(&path_b) || path_b.starts_with(&path_a) {
                    return Err(ConfigError(format!(
                        "{a} ({dir_a:?}) and {b} ({dir_b:?}) overlap; give each its own directory"
                    )));
                }
            }
        }
        Ok(())
    }

    /// What the service does with keys of the origin document that mean something else here,
    /// or nothing, in sentences for the log at start-up.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if is_python_logging_format(&self.logging.format) {
            notes.push(format!(
                "logging.format {:?} is a Python logging format; log lines are written in the \
                 text format, which has the same fields (time, level, target, message)",
                self.logging.format
            ));
        }
        if !self.paths.temp.is_empty() {
            notes.push(format!(
                "paths.temp ({:?}) is not used: the service writes no scratch files of its own \
                 (GPT-SoVITS reference clips go to workers.gpt_sovits.shared_dir)",
                self.paths.temp
            ));
        }
        notes
    }

    pub fn engine(&self, name: &str) -> Result<&EngineSettings, ConfigError> {
        self.workers.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.workers.keys().map(String::as_str).collect();
            ConfigError(format!(
                "no engine named {name:?} in workers (configured: {})",
                known.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nats_url_names_one_server_or_several() {
        let s = Settings::load_with_env(
            None,
            env(&[("TTS__NATS__URL", "nats://a:4222, nats://b:4223,")]),
        )
        .unwrap();
        assert_eq!(s.nats.servers(), ["nats://a:4222", "nats://b:4223"]);
        assert_eq!(
            s.nats.startup_wait(),
            Some(std::time::Duration::from_secs(120))
        );
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TTS__NATS__URL", "nats://[::1]:4222,localhost"),
                ("TTS__NATS__STARTUP_WAIT_SECS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(s.nats.servers(), ["nats://[::1]:4222", "localhost"]);
        assert_eq!(s.nats.startup_wait(), None);

        for (url, want) in [
            ("nats://a:4222;nats://b:4222", "not a server address"),
            ("nats://a:42x", "not a server address"),
            (" , ", "at least one server"),
        ] {
            let error = Settings::load_with_env(None, env(&[("TTS__NATS__URL", url)]))
                .err()
                .unwrap_or_else(|| panic!("{url} was accepted"));
            assert!(error.to_string().contains(want), "{url}: {error}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TTS__NATS__PASSWORD", "nats-pass-123"),
                ("TTS__STORAGE__S3_SECRET_ACCESS_KEY", "s3-secret-456"),
                ("TTS__REDIS__URL", "redis://app:redis-pass-789@cache:6379/0"),
            ]),
        )
        .unwrap();
        assert_eq!(s.nats.password.expose(), "nats-pass-123");
        assert_eq!(s.storage.s3_secret_access_key.expose(), "s3-secret-456");
        let printed = format!("{s:?} {s:#?}");
        for secret in ["nats-pass-123", "s3-secret-456", "redis-pass-789"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("redis://app:***@cache:6379/0"),
            "{printed}"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:pw@h:1/2"), "redis://:***@h:1/2");
    }

    #[test]
    fn embedded_defaults_follow_the_origin_document() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.gateway.port, 8080);
        assert_eq!(s.gateway.global_rpm, 1000);
        assert_eq!(s.gateway.ip_rpm, 100);
        assert_eq!(s.gateway.concurrent_limit, 50);
        assert_eq!(s.gateway.rate_burst_percent, 10);
        assert_eq!(s.gateway.unauthenticated_rpm, 1000);
        assert_eq!(s.gateway.max_websockets, 1000);
        assert_eq!(s.gateway.max_websockets_per_ip, 20);
        assert_eq!(s.worker.heartbeat_interval, 10);
        assert_eq!(s.gateway.dead_threshold, 30);
        assert_eq!(s.gateway.max_text_chars, 5000);
        assert!(s.workers.contains_key("piper"));
        // The origin's worker ports, and the built-in engines after them.
        let ports: Vec<(&str, u16)> = ["xtts", "openvoice", "gpt_sovits", "piper", "kokoro"]
            .into_iter()
            .map(|engine| (engine, s.workers[engine].port))
            .collect();
        assert_eq!(
            ports,
            [
                ("xtts", 8001),
                ("openvoice", 8002),
                ("gpt_sovits", 8003),
                ("piper", 8004),
                ("kokoro", 8005)
            ]
        );
        assert!(s.notes().is_empty(), "{:?}", s.notes());
    }

    /// The origin document's config.yaml, as it is written there.
    fn origin_config() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/seed-config.yaml")
    }

    /// Writes `yaml` to a file of its own and loads it with `vars`.
    fn load_yaml(name: &str, yaml: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile_dir(name);
        let path = dir.join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let loaded = Settings::load_with_env(Some(&path), env(vars));
        std::fs::remove_dir_all(dir).ok();
        loaded
    }

    #[test]
    fn the_origin_documents_config_file_loads_as_written() {
        let s = Settings::load_with_env(Some(&origin_config()), env(&[])).unwrap();
        assert_eq!(s.gateway.host, "0.0.0.0");
        assert_eq!(s.gateway.port, 8080);
        assert_eq!(s.gateway.global_rpm, 1000);
        assert_eq!(s.gateway.ip_rpm, 100);
        assert_eq!(s.gateway.concurrent_limit, 50);
        assert_eq!(s.worker.heartbeat_interval, 10);
        assert_eq!(s.gateway.dead_threshold, 30);
        assert_eq!(s.workers["xtts"].port, 8001);
        assert_eq!(s.workers["xtts"].options["model_path"], "");
        assert_eq!(s.workers["xtts"].options["device"], "cuda");
        assert_eq!(s.workers["openvoice"].port, 8002);
        assert_eq!(s.workers["openvoice"].options["device"], "cuda");
        assert_eq!(s.workers["gpt_sovits"].port, 8003);
        assert_eq!(
            s.workers["gpt_sovits"].options["urls"],
            serde_json::json!(["http://127.0.0.1:9880"])
        );
        assert!(!s.workers["gpt_sovits"].options.contains_key("api_url"));
        assert_eq!(s.logging.level, "INFO");
        assert_eq!(s.logging.file, "logs/voice-clone.log");
        assert_eq!(s.storage.voices_dir, "voices");
        assert_eq!(s.storage.audio_dir, "output");
        assert_eq!(s.paths.temp, "temp");
        let notes = s.notes().join("\n");
        assert!(notes.contains("logging.format"), "{notes}");
        assert!(notes.contains("paths.temp"), "{notes}");
        // The built-in engines keep their sections beside the origin's.
        assert_eq!(s.workers["piper"].port, 8004);
    }

    #[test]
    fn api_url_is_a_list_of_one_server_in_its_layer() {
        let file = "workers:\n  gpt_sovits:\n    port: 8003\n    api_url: \"http://gs:9880\"\n";
        let urls = |s: &Settings| s.workers["gpt_sovits"].options["urls"].clone();
        let s = load_yaml("api-url", file, &[]).unwrap();
        assert_eq!(urls(&s), serde_json::json!(["http://gs:9880"]));
        // A variable overrides the file's api_url as it would the file's urls, in either spelling.
        let s = load_yaml(
            "api-url-env",
            file,
            &[("TTS__WORKERS__GPT_SOVITS__URLS", "http://a:1,http://b:2")],
        )
        .unwrap();
        assert_eq!(urls(&s), "http://a:1,http://b:2");
        let s = Settings::load_with_env(
            None,
            env(&[("TTS__WORKERS__GPT_SOVITS__API_URL", "http://c:3")]),
        )
        .unwrap();
        assert_eq!(urls(&s), serde_json::json!(["http://c:3"]));
        // Both spellings in one layer must agree.
        let agree = format!("{file}    urls: [\"http://gs:9880\"]\n");
        assert_eq!(
            urls(&load_yaml("api-url-agree", &agree, &[]).unwrap()),
            serde_json::json!(["http://gs:9880"])
        );
        let differ = format!("{file}    urls: [\"http://other:9880\"]\n");
        let err = load_yaml("api-url-differ", &differ, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("workers.gpt_sovits.api_url"), "{err}");
        assert!(err.contains("workers.gpt_sovits.urls"), "{err}");
        let list = "workers:\n  gpt_sovits:\n    port: 1\n    api_url: [\"http://a:1\"]\n";
        let err = load_yaml("api-url-list", list, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workers.gpt_sovits.api_url must be one server URL"),
            "{err}"
        );
    }

    #[test]
    fn the_gateways_heartbeat_interval_is_the_workers() {
        let s = load_yaml("heartbeat", "gateway:\n  heartbeat_interval: 4\n", &[]).unwrap();
        assert_eq!(s.worker.heartbeat_interval, 4);
        let s = load_yaml(
            "heartbeat-env",
            "gateway:\n  heartbeat_interval: 4\n",
            &[("TTS__WORKER__HEARTBEAT_INTERVAL", "6")],
        )
        .unwrap();
        assert_eq!(s.worker.heartbeat_interval, 6);
        let s = Settings::load_with_env(None, env(&[("TTS__GATEWAY__HEARTBEAT_INTERVAL", "7")]))
            .unwrap();
        assert_eq!(s.worker.heartbeat_interval, 7);
        let both = "gateway:\n  heartbeat_interval: 4\nworker:\n  heartbeat_interval: 5\n";
        let err = load_yaml("heartbeat-both", both, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("gateway.heartbeat_interval"), "{err}");
        assert!(err.contains("worker.heartbeat_interval"), "{err}");
        let err = load_yaml(
            "heartbeat-bad",
            "gateway:\n  heartbeat_interval: soon\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("gateway.heartbeat_interval must be whole seconds"),
            "{err}"
        );
        // Zero is refused under the key the service uses, as it would be when spelt that way.
        let err = load_yaml("heartbeat-zero", "gateway:\n  heartbeat_interval: 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("heartbeat_interval must be at least 1"),
            "{err}"
        );
        let s = load_yaml("dead", "gateway:\n  dead_threshold: 45\n", &[]).unwrap();
        assert_eq!(s.gateway.dead_threshold, 45);
    }

    #[test]
    fn a_python_logging_format_is_written_as_text() {
        for format in [
            "%(asctime)s - %(name)s - %(levelname)s - %(message)s",
            "%(levelname)-8s %(process)5d %(message)s",
        ] {
            let s =
                Settings::load_with_env(None, env(&[("TTS__LOGGING__FORMAT", format)])).unwrap();
            assert_eq!(s.logging.format, format);
            assert!(s.notes()[0].contains("text format"), "{:?}", s.notes());
        }
        for format in ["xml", "%(message", "%()s", "%(message)q", "100%"] {
            let err = Settings::load_with_env(None, env(&[("TTS__LOGGING__FORMAT", format)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("logging.format must be"), "{format}: {err}");
        }
        let s = Settings::load_with_env(None, env(&[("TTS__LOGGING__FORMAT", "json")])).unwrap();
        assert!(s.notes().is_empty());
    }

    #[test]
    fn origin_paths_move_voices_and_audio_out_of_the_storage_directory() {
        let paths = "paths:\n  voices: \"voices\"\n  output: \"output\"\n";
        let s = load_yaml("paths", paths, &[]).unwrap();
        assert_eq!(s.storage.file_dir(), Some("data/objects"));
        assert_eq!(s.storage.voices_dir, "voices");
        assert_eq!(s.storage.audio_dir, "output");
        let s = load_yaml("paths-env", paths, &[("TTS__STORAGE__VOICES_DIR", "")]).unwrap();
        assert_eq!(s.storage.voices_dir, "");
        let s =
            Settings::load_with_env(None, env(&[("TTS__PATHS__OUTPUT", "/srv/audio")])).unwrap();
        assert_eq!(s.storage.audio_dir, "/srv/audio");
        // Buckets have no directories: the keys would be ignored there, so they are refused.
        let err = load_yaml("paths-s3", paths, &[("TTS__STORAGE__URL", "s3://b")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.voices_dir (paths.voices"), "{err}");
        for (voices, output) in [("same", "same"), ("v", "v/audio"), ("data/objects/v", "o")] {
            let yaml = format!("paths:\n  voices: {voices:?}\n  output: {output:?}\n");
            let err = load_yaml("paths-overlap", &yaml, &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("overlap"), "{voices} {output}: {err}");
        }
        let both = "paths:\n  voices: a\nstorage:\n  voices_dir: b\n";
        let err = load_yaml("paths-both", both, &[]).unwrap_err().to_string();
        assert!(err.contains("paths.voices and storage.voices_dir"), "{err}");
        // The scratch directory has no counterpart: accepted, and said so at start-up.
        let s = load_yaml("paths-temp", "paths:\n  temp: tmp\n", &[]).unwrap();
        assert_eq!(s.paths.temp, "tmp");
        assert!(s.notes()[0].contains("paths.temp"), "{:?}", s.notes());
        let err = load_yaml("paths-typo", "paths:\n  tmp: x\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tmp"), "{err}");
        assert!(err.contains("paths"), "{err}");
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TTS__GATEWAY__PORT", "9090"),
                ("TTS__WORKERS__PIPER__DEVICE", "cuda"),
                ("TTS__REDIS__URL", "redis://10.0.0.1:6380"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.gateway.port, 9090);
        assert_eq!(s.workers["piper"].options["device"], "cuda");
        assert_eq!(s.redis.url, "redis://10.0.0.1:6380");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Upstream {
        #[serde(deserialize_with = "list_or_string")]
        urls: Vec<String>,
        #[serde(default)]
        timeout_secs: Option<u64>,
    }

    #[test]
    fn spans_are_exported_only_when_an_endpoint_is_configured() {
        let defaults = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(defaults.logging.otlp_endpoint, "");
        assert_eq!(defaults.logging.service_name, "");
        let s = Settings::load_with_env(
            None,
            env(&[
                ("TTS__LOGGING__OTLP_ENDPOINT", "http://collector:4318"),
                ("TTS__LOGGING__SERVICE_NAME", "tts-eu"),
            ]),
        )
        .unwrap();
        assert_eq!(s.logging.otlp_endpoint, "http://collector:4318");
        assert_eq!(s.logging.service_name, "tts-eu");
        let err = Settings::load_with_env(
            None,
            env(&[("TTS__LOGGING__OTLP_ENDPOINT", "collector:4318")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("logging.otlp_endpoint"), "{err}");
    }

    #[test]
    fn engine_keys_parse_into_the_engines_own_type() {
        for value in ["http://a:1, http://b:2", r#"["http://a:1","http://b:2"]"#] {
            let s = Settings::load_with_env(
                None,
                env(&[
                    ("TTS__WORKERS__UP__PORT", "9"),
                    ("TTS__WORKERS__UP__URLS", value),
                    ("TTS__WORKERS__UP__TIMEOUT_SECS", "5"),
                ]),
            )
            .unwrap();
            let up: Upstream = s.workers["up"].parse("up").unwrap();
            assert_eq!(up.urls, ["http://a:1", "http://b:2"], "{value}");
            assert_eq!(up.timeout_secs, Some(5));
        }
        let mut section = EngineSettings {
            port: 1,
            options: Default::default(),
        };
        section.set("urls", ["http://a:1"]).set("timeot_secs", 3);
        let err = section.parse::<Upstream>("up").unwrap_err().to_string();
        assert!(err.contains("workers.up"), "{err}");
        assert!(err.contains("unknown field `timeot_secs`"), "{err}");
        section.options.remove("timeot_secs");
        section.set("timeout_secs", "soon");
        let err = section.parse::<Upstream>("up").unwrap_err().to_string();
        assert!(err.contains("workers.up.timeout_secs"), "{err}");
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tts-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_layer_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile_dir("layers");
        let path = dir.join("c.yaml");
        std::fs::write(&path, "gateway:\n  port: 7000\n  sync_timeout_secs: 5\n").unwrap();
        let s =
            Settings::load_with_env(Some(&path), env(&[("TTS__GATEWAY__PORT", "7001")])).unwrap();
        assert_eq!(s.gateway.port, 7001);
        assert_eq!(s.gateway.sync_timeout_secs, 5);
        assert_eq!(s.gateway.ip_rpm, 100);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_values_are_reported_by_name() {
        let dir = tempfile_dir("engine-name");
        let path = dir.join("c.yaml");
        std::fs::write(&path, "workers:\n  \"Bad Name\":\n    port: 1\n").unwrap();
        let err = Settings::load_with_env(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("engine names"), "{err}");
        std::fs::remove_dir_all(dir).ok();
        for percent in ["0", "101"] {
            let err = Settings::load_with_env(
                None,
                env(&[("TTS__GATEWAY__RATE_BURST_PERCENT", percent)]),
            )
            .unwrap_err();
            assert!(err.to_string().contains("rate_burst_percent"), "{err}");
        }
        let err = Settings::load_with_env(None, env(&[("TTS__GATEWAY__MAX_WEBSOCKETS", "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("max_websockets"), "{err}");
        let err = Settings::load(Some(Path::new("/nonexistent/c.yaml"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
