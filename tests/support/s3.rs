//! An S3-compatible server a test owns (`s3s-fs`, which checks SigV4 signatures like a real
//! one), on a port of its own choosing with a temporary directory; killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tts_config::StorageSettings;

use crate::process::{Lines, strip_ansi};

pub const BUCKET: &str = "voice-clone-tts";
const ACCESS_KEY: &str = "test-access-key";
const SECRET_KEY: &str = "test-secret-key";

pub struct S3Server {
    child: Option<Child>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("S3S_FS_BIN") {
        return path.into();
    }
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin/s3s-fs");
    if cargo_bin.exists() {
        cargo_bin
    } else {
        "s3s-fs".into()
    }
}

impl S3Server {
    /// Starts the server on a port it picks itself (`--port 0`), read back from the line in which
    /// it says where it is running.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the buckets");
        // s3s-fs serves each sub-directory as a bucket.
        std::fs::create_dir(dir.path().join(BUCKET)).expect("the bucket directory");
        let (child, addr) = launch(dir.path(), 0).await;
        S3Server {
            child: Some(child),
            addr,
            _dir: dir,
        }
    }

    /// Kills the server, as a crash or an outage would; `restart` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory, so that its objects and its
    /// clients' address are as before.
    pub async fn restart(&mut self) {
        self.stop();
        let (child, addr) = launch(self._dir.path(), self.addr.port()).await;
        assert_eq!(addr, self.addr, "s3s-fs came back elsewhere");
        self.child = Some(child);
    }

    /// Storage settings pointing at this server's bucket.
    pub fn settings(&self) -> StorageSettings {
        StorageSettings {
            url: format!("s3://{BUCKET}"),
            s3_endpoint: format!("http://{}", self.addr),
            s3_region: "us-east-1".into(),
            s3_access_key_id: ACCESS_KEY.into(),
            s3_secret_access_key: SECRET_KEY.into(),
            s3_allow_http: true,
            voices_dir: String::new(),
            audio_dir: String::new(),
            audio_retention_secs: 86_400,
            sweep_interval_secs: 600,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs s3s-fs on `dir` and `port` (0: one it picks) and returns it with the address it says it
/// runs at.
async fn launch(dir: &std::path::Path, port: u16) -> (Child, SocketAddr) {
    let binary = binary();
    let mut child = Command::new(&binary)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(dir)
        // The line with the address is logged at info.
        .env("RUST_LOG", "s3s_fs=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (scripts/test installs it: cargo install s3s-fs \
                 --version 0.14.1 --features binary --locked): {e}",
                binary.display()
            )
        });
    let mut log = Lines::follow(child.stdout.take().expect("stdout is piped"));
    let running = log
        .wait_for(Duration::from_secs(10), |line| {
            let line = strip_ansi(line);
            let (_, rest) = line.split_once("server is running at http://")?;
            rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
        })
        .await;
    match running {
        Ok(addr) => (child, addr),
        Err(printed) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("s3s-fs did not start: {printed}");
        }
    }
}
