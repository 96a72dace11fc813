//! A three-server NATS JetStream cluster that a test owns, run with the shipped
//! nats/nats-cluster.conf: each server on client, route and monitoring ports it picks itself (read
//! back from its ports file) with a store directory of its own, killed and restarted by name.
//!
//! A JetStream cluster will not start without a route to solicit, and the first server cannot
//! know the others' route ports before they exist: it is given a route to a port nothing listens
//! on, which it keeps retrying, and the others route to it; the cluster then meshes by gossip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::nats::{copy_includes, port_of, replace_setting};

struct Node {
    name: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Client, route and monitoring ports, once the first start has bound them.
    ports: Option<(u16, u16, u16)>,
    launches: u32,
}

pub struct NatsCluster {
    nodes: Vec<Node>,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl NatsCluster {
    /// Three servers named n1, n2 and n3, running `config` with `env` for the variables it reads.
    pub async fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut cluster = NatsCluster {
            nodes: (1..=3)
                .map(|i| Node {
                    name: format!("n{i}"),
                    child: None,
                    dir: tempfile::tempdir().expect("a directory for the server"),
                    ports: None,
                    launches: 0,
                })
                .collect(),
            config: config.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 0..3 {
            cluster.launch(i).await;
        }
        cluster
    }

    /// Every server's client URL, comma-separated, as `nats.url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.ports.expect("started").0))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The monitoring URL of server `name`.
    pub fn monitoring(&self, name: &str) -> String {
        let node = self.node(name);
        format!("http://127.0.0.1:{}", node.ports.expect("started").2)
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no server {name}"))
    }

    /// SIGKILLs server `name`, as a crash would.
    pub fn kill(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no server {name}"));
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts server `name` again on its ports and store.
    pub async fn restart(&mut self, name: &str) {
        self.kill(name);
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a server");
        self.launch(i).await;
    }

    async fn launch(&mut self, i: usize) {
        // Routes to the servers that have route ports already; the first server of a new cluster
        // gets one to a port that nothing listens on (see the module's comment).
        let mut routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(_, n)| n.ports.map(|p| format!("nats://127.0.0.1:{}", p.1)))
            .collect();
        if routes.is_empty() {
            routes.push("nats://127.0.0.1:1".into());
        }
        let node = &mut self.nodes[i];
        node.launches += 1;
        let ports_dir = node.dir.path().join(format!("ports-{}", node.launches));
        std::fs::create_dir(&ports_dir).expect("a directory for the ports file");
        let log_path = node.dir.path().join(format!("log-{}", node.launches));
        let log = std::fs::File::create(&log_path).expect("a log file");
        let text = std::fs::read_to_string(&self.config).expect("the config file reads");
        let store = format!("  store_dir: {:?}", node.dir.path().join("js"));
        let copy = node.dir.path().join("nats-cluster.conf");
        std::fs::write(&copy, replace_setting(&text, "store_dir:", &store)).expect("a copy");
        copy_includes(&self.config, node.dir.path());
        let (client, route, monitor) = node.ports.map_or(
            ("-1".to_string(), "-1".to_string(), "-1".to_string()),
            |p| (p.0.to_string(), p.1.to_string(), p.2.to_string()),
        );
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let mut child = Command::new(&binary)
            .arg("-c")
            .arg(&copy)
            .args(["-a", "127.0.0.1", "-p", &client, "-m", &monitor])
            .args(["-n", &node.name, "--cluster_name", "tts"])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{route}"))
            .arg("--routes")
            .arg(routes.join(","))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .envs(self.env.iter().cloned())
            .env("TTS_NATS_SERVER_NAME", &node.name)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let ports = loop {
            if let (Some(c), Some(r), Some(m)) = (
                port_of(&ports_dir, "nats"),
                port_of(&ports_dir, "cluster"),
                port_of(&ports_dir, "monitoring"),
            ) {
                break (c, r, m);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("nats-server {} exited with {status}:\n{log}", node.name);
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("nats-server {} did not start:\n{log}", node.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        node.ports = Some(ports);
        node.child = Some(child);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
