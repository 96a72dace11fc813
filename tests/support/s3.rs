//! An S3-compatible server a test owns (`s3s-fs`, which checks SigV4 signatures like a real
//! one), on a free port with a temporary directory; killed on drop.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tts_config::StorageSettings;

pub const BUCKET: &str = "voice-clone-tts";
const ACCESS_KEY: &str = "test-access-key";
const SECRET_KEY: &str = "test-secret-key";

pub struct S3Server {
    child: Child,
    port: u16,
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
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory for the buckets");
        // s3s-fs serves each sub-directory as a bucket.
        std::fs::create_dir(dir.path().join(BUCKET)).expect("the bucket directory");
        let port = super::free_port();
        let binary = binary();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (scripts/test installs it: cargo install s3s-fs \
                     --version 0.14.1 --features binary --locked): {e}",
                    binary.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            child,
            port,
            _dir: dir,
        }
    }

    /// Storage settings pointing at this server's bucket.
    pub fn settings(&self) -> StorageSettings {
        StorageSettings {
            url: format!("s3://{BUCKET}"),
            s3_endpoint: format!("http://127.0.0.1:{}", self.port),
            s3_region: "us-east-1".into(),
            s3_access_key_id: ACCESS_KEY.into(),
            s3_secret_access_key: SECRET_KEY.into(),
            s3_allow_http: true,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
