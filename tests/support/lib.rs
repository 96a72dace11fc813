//! Test support: real servers on ports they pick themselves, the service in both modes, and
//! typed requests.
//!
//! Every distributed test gets its own `nats-server` (own port, own JetStream directory, killed
//! on drop) and its own Redis key prefix on the machine's Redis, so tests never see each
//! other's jobs.

pub mod app;
pub mod asr;
pub mod browser;
pub mod clips;
pub mod cluster;
pub mod engines;
pub mod faults;
pub mod ffmpeg;
pub mod nats;
pub mod onnx;
pub mod process;
pub mod redis;
pub mod s3;
pub mod upstream;
pub mod wav;

pub use app::{
    Deployment, KOKORO_VOICE, TestApp, WorkerProcess, spawn_app, spawn_app_with,
    spawn_engines_with, spawn_gateway, spawn_gateway_process, spawn_gateway_process_with_env,
    spawn_standalone, spawn_with_engines, spawn_worker_process, spawn_worker_process_with_env,
    test_settings, wait_until_listed,
};
pub use nats::NatsServer;
pub use redis::RedisServer;
pub use s3::S3Server;

use std::path::PathBuf;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The Redis the tests use: `TTS_TEST_REDIS_URL`, or the machine's default one.
pub fn redis_url() -> String {
    std::env::var("TTS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Generates one test per deployment, standalone and distributed, for each scenario: an async
/// function that takes the [`TestApp`] it runs against.
#[macro_export]
macro_rules! in_both_deployments {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$scenario($crate::spawn_app($crate::Deployment::Standalone).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn distributed() {
                super::$scenario($crate::spawn_app($crate::Deployment::Distributed).await).await;
            }
        }
    )*};
}
