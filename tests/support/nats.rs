//! A `nats-server` with JetStream that a test owns: its own port and store directory, killed
//! and cleaned up on drop.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// A config file and the environment it reads, for servers with users.
    config: Option<(std::path::PathBuf, Vec<(String, String)>)>,
}

impl NatsServer {
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("a temporary store directory");
        let port = super::free_port();
        let mut server = NatsServer {
            child: None,
            port,
            store,
            config: None,
        };
        server.launch();
        server
    }

    /// A server run with the config file `config` (its port, store and monitoring port are
    /// replaced by the test's own), with `env` set for the variables the file reads.
    pub fn start_with_config(config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let store = tempfile::tempdir().expect("a temporary store directory");
        let mut server = NatsServer {
            child: None,
            port: super::free_port(),
            store,
            config: Some((
                config.to_path_buf(),
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let mut command = Command::new(&binary);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        match &self.config {
            Some((config, env)) => {
                // The file names its own store directory, which the command line may not
                // repeat: run a copy that names the test's.
                let text = std::fs::read_to_string(config).expect("the config file reads");
                let store = format!("store_dir: {:?}", self.store.path().join("js"));
                let text = replace_setting(&text, "store_dir:", &store);
                let copy = self.store.path().join("nats-server.conf");
                std::fs::write(&copy, text).expect("the config copy is written");
                command
                    .arg("-c")
                    .arg(copy)
                    .args(["-m", &super::free_port().to_string()])
                    .envs(env.iter().cloned());
            }
            None => {
                command.args(["-js", "-sd"]).arg(self.store.path());
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (install nats-server): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port and store, as after a crash.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
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

/// `text` with every line that starts (after indentation) with `key` replaced by `line`.
fn replace_setting(text: &str, key: &str, line: &str) -> String {
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
