//! A `nats-server` with JetStream that a test owns: its own port and store directory, killed
//! and cleaned up on drop.
//!
//! The server picks its own port (`-p -1`) and writes the ports it bound to a file
//! (`--ports_file_dir`), which the test reads back: no port is chosen for it that another
//! process could take first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct NatsServer {
    child: Option<Child>,
    /// The client port, once the first start has bound one; a restart binds it again.
    port: Option<u16>,
    store: tempfile::TempDir,
    /// A config file and the environment it reads, for servers with users.
    config: Option<(PathBuf, Vec<(String, String)>)>,
    launches: u32,
}

impl NatsServer {
    pub async fn start() -> Self {
        let mut server = NatsServer::new(None);
        server.launch().await;
        server
    }

    /// A server run with the config file `config` (its port, store and monitoring port are
    /// replaced by the test's own), with `env` set for the variables the file reads.
    pub async fn start_with_config(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut server = NatsServer::new(Some((
            config.to_path_buf(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )));
        server.launch().await;
        server
    }

    fn new(config: Option<(PathBuf, Vec<(String, String)>)>) -> Self {
        NatsServer {
            child: None,
            port: None,
            store: tempfile::tempdir().expect("a temporary store directory"),
            config,
            launches: 0,
        }
    }

    async fn launch(&mut self) {
        self.launches += 1;
        // A directory per launch, so that the only ports file in it is this launch's.
        let ports_dir = self.store.path().join(format!("ports-{}", self.launches));
        std::fs::create_dir(&ports_dir).expect("a directory for the ports file");
        let log_path = self
            .store
            .path()
            .join(format!("nats-server-{}.log", self.launches));
        let log = std::fs::File::create(&log_path).expect("a log file");

        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let mut command = Command::new(&binary);
        // The first start lets the server choose (-1); a restart takes the same port again, as
        // its clients reconnect to the address they know.
        let port = self
            .port
            .map_or_else(|| "-1".to_string(), |p| p.to_string());
        command
            .args(["-a", "127.0.0.1", "-p", &port])
            .arg("--ports_file_dir")
            .arg(&ports_dir);
        match &self.config {
            Some((config, env)) => {
                // The file names its own store directory, which the command line may not
                // repeat: run a copy that names the test's.
                let text = std::fs::read_to_string(config).expect("the config file reads");
                let store = format!("store_dir: {:?}", self.store.path().join("js"));
                let text = replace_setting(&text, "store_dir:", &store);
                let copy = self.store.path().join("nats-server.conf");
                std::fs::write(&copy, text).expect("the config copy is written");
                copy_includes(config, self.store.path());
                // The file's fixed monitoring port would clash between tests: let the server
                // choose that one too.
                command
                    .arg("-c")
                    .arg(copy)
                    .args(["-m", "-1"])
                    .envs(env.iter().cloned());
            }
            None => {
                command.args(["-js", "-sd"]).arg(self.store.path());
            }
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (install nats-server): {e}"));

        // The server writes the ports file once it accepts connections. Polling the directory is
        // a wait for that state, with a check that the server has not exited instead.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let port = loop {
            if let Some(port) = client_port(&ports_dir) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("nats-server exited with {status}:\n{log}");
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("nats-server did not start:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.port = Some(port);
        self.child = Some(child);
    }

    /// The jobs queue on this server, with the settings of a default deployment: a 30 s ack
    /// wait, three deliveries, one replica.
    pub async fn queue(&self) -> tts_infra::JetStreamQueue {
        let client = async_nats::connect(self.url())
            .await
            .expect("connected to NATS");
        let settings = tts_infra::QueueSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: 3,
            replicas: 1,
            dead_letter_max_age: Duration::from_secs(3600),
        };
        tts_infra::JetStreamQueue::connect(client, settings)
            .await
            .expect("the jobs stream")
    }

    pub fn url(&self) -> String {
        format!(
            "nats://127.0.0.1:{}",
            self.port.expect("the server has started")
        )
    }

    /// Kills the server and starts it again on the same port and store, as after a crash.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Kills the server, as a crash would; `restart` brings it back.
    pub fn stop(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The client port from the ports file in `dir` (`{"nats": ["nats://host:port"], ...}`), once
/// the file is there and complete.
fn client_port(dir: &Path) -> Option<u16> {
    port_of(dir, "nats")
}

/// The port of `kind` (`nats`, `cluster`, `monitoring`) from the ports file in `dir`, once the
/// file is there and complete.
pub(crate) fn port_of(dir: &Path, kind: &str) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().find(|e| {
        e.path()
            .extension()
            .is_some_and(|extension| extension == "ports")
    })?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports[kind].get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// Copies the files `config` includes (`include name.conf`, beside it) into `dir`, beside the
/// copy of `config` that is run there.
pub(crate) fn copy_includes(config: &Path, dir: &Path) {
    let text = std::fs::read_to_string(config).expect("the config file reads");
    let beside = config.parent().expect("the config file is in a directory");
    for line in text.lines() {
        if let Some(name) = line.trim().strip_prefix("include ") {
            let name = name.trim().trim_matches('"');
            std::fs::copy(beside.join(name), dir.join(name)).expect("an included file copies");
        }
    }
}

/// `text` with every line that starts (after indentation) with `key` replaced by `line`.
pub(crate) fn replace_setting(text: &str, key: &str, line: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with(key) {
                line.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
