//! The `voice-clone-tts` command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tts_config::Settings;
use voice_clone_tts::{Application, Mode, telemetry};

#[derive(Parser)]
#[command(version, about = "Self-hosted voice-cloning text-to-speech service")]
struct Cli {
    /// A config file layered over the embedded defaults (environment TTS__* wins over both).
    #[arg(long, global = true, env = "TTS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Gateway and workers in one process; no NATS or Redis needed.
    Standalone {
        /// Engines to run (default: every configured one).
        #[arg(long = "engine")]
        engines: Vec<String>,
        /// Port of the HTTP API (overrides gateway.port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// The HTTP gateway, on NATS JetStream, Redis and object storage.
    Gateway {
        #[arg(long)]
        port: Option<u16>,
    },
    /// A worker for one engine.
    Worker {
        #[arg(long)]
        engine: String,
        /// Port of the worker's /health (overrides workers.<engine>.port).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Fetches ONNX Runtime and the models of every built-in engine into the model cache, then
    /// exits.
    FetchModels,
    /// Prints the SHA-256 of an API key, as `auth.keys[].sha256` takes it. The key is read from
    /// standard input (one line) so that it stays out of the shell's history.
    HashKey,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    let command = match &cli.command {
        Command::Standalone { .. } => "standalone",
        Command::Gateway { .. } => "gateway",
        Command::Worker { .. } => "worker",
        Command::FetchModels => "fetch-models",
        Command::HashKey => "hash-key",
    };
    // Each process logs to its own file, as the origin document lays them out.
    let process = match &cli.command {
        Command::Worker { engine, .. } => format!("worker-{engine}"),
        _ => command.to_string(),
    };
    // Held to the end of `main`, whose return sends the spans and log lines still buffered.
    let _telemetry = telemetry::init(&settings.logging, command, &process)?;
    // Keys of the origin document that mean something else here are said once, in the log of
    // each service; `hash-key` prints only the hash.
    if !matches!(cli.command, Command::HashKey) {
        for note in settings.notes() {
            tracing::info!("{note}");
        }
    }
    let mode = match cli.command {
        Command::Standalone { engines, port } => {
            if let Some(port) = port {
                settings.gateway.port = port;
            }
            Mode::Standalone { engines }
        }
        Command::Gateway { port } => {
            if let Some(port) = port {
                settings.gateway.port = port;
            }
            Mode::Gateway
        }
        Command::Worker { engine, port } => {
            if let Some(port) = port {
                settings.engine(&engine)?;
                if let Some(e) = settings.workers.get_mut(&engine) {
                    e.port = port;
                }
            }
            Mode::Worker { engine }
        }
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            let key = key.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", tts_gateway::auth::hash_key(key));
            return Ok(());
        }
        Command::FetchModels => {
            let prepared = settings.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let cache = &prepared.models.cache_dir;
                tts_worker::models::ensure(cache)?;
                tts_worker::models::ensure_kokoro(cache)?;
                tts_worker::models::ensure_analysis(cache)?;
                // What enrollment computes from the models alone is computed here, once.
                tts_worker::engine::kokoro::stock::prepare(&prepared)?;
                Ok(())
            })
            .await??;
            println!("models ready in {}", settings.models.cache_dir.display());
            return Ok(());
        }
    };
    let app = Application::build(settings, mode).await?;
    app.run_until_stopped(shutdown_signal()).await
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
