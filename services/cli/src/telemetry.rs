//! Logging setup: the console, a rotated log file when `logging.files` or `logging.file` asks
//! for one, and span export to an OpenTelemetry collector when `logging.otlp_endpoint` is set.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use tts_config::LoggingSettings;

/// The OTLP/HTTP path of spans, under a collector's base URL.
const TRACES_PATH: &str = "/v1/traces";

/// How long one export may take: a collector that does not answer must not hold up the
/// process's exit for long.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Targets whose spans are never exported: the exporter's own HTTP client runs in them, and its
/// spans would be exported in turn, for ever.
const EXPORTER_TARGETS: &[&str] = &["opentelemetry", "reqwest", "hyper", "h2", "tower"];

/// What [`init`] installed. Dropping it (when `main` returns) sends the spans still buffered,
/// stops the exporter's thread and writes the log lines still queued for the file.
#[must_use = "dropping it stops the span exporter and the log file's writer"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    file: Option<(PathBuf, tracing_appender::non_blocking::WorkerGuard)>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// The log file written beside the console, if any.
    pub fn log_file(&self) -> Option<&std::path::Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not send the last spans to the OpenTelemetry collector: {e}");
        }
    }
}

/// Installs the global subscriber: log lines in `logging.format` on the console and, when asked,
/// in a rotated file (see [`log_file`]), and, when `logging.otlp_endpoint` is set, an
/// OpenTelemetry layer that exports spans in batches. `RUST_LOG` wins over the configured level
/// when set. `command` names the service when `logging.service_name` does not; `process` names
/// its log file (`gateway`, `worker-piper`).
pub fn init(logging: &LoggingSettings, command: &str, process: &str) -> anyhow::Result<Telemetry> {
    let provider = provider(logging, command)?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logging.level));
    let json = logging.format == "json";
    let console = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let (file_layer, file) = match log_file(logging, process) {
        Some(path) => {
            let (writer, guard) = tracing_appender::non_blocking(rotating_file(logging, &path)?);
            // A file gets no colour codes, whatever the console does.
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer);
            let layer = if json {
                layer.json().boxed()
            } else {
                layer.boxed()
            };
            (Some(layer), Some((path, guard)))
        }
        None => (None, None),
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("voice-clone-tts"))
            .with_filter(filter_fn(|metadata| {
                !EXPORTER_TARGETS
                    .iter()
                    .any(|target| metadata.target().starts_with(target))
            }))
    });
    // A subscriber installed earlier (by a test, say) stays; the exporter then has no spans.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(file_layer)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider, file })
}

/// The file a process logs to: `logging.file` when set, else `<logging.dir>/<process>.log` when
/// `logging.files` is on, else none.
pub fn log_file(logging: &LoggingSettings, process: &str) -> Option<PathBuf> {
    if !logging.file.is_empty() {
        return Some(PathBuf::from(&logging.file));
    }
    logging
        .files
        .then(|| logging.dir.join(format!("{process}.log")))
}

/// The log file, appended to, rotated at `logging.max_file_mib` with `logging.max_files` old
/// files kept (`.1` the newest).
fn rotating_file(
    logging: &LoggingSettings,
    path: &std::path::Path,
) -> anyhow::Result<file_rotate::FileRotate<file_rotate::suffix::AppendCount>> {
    // Created here so that a directory that cannot be made is an error with its path, not a
    // panic inside the rotation crate.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("the log directory {}", dir.display()))?;
    }
    anyhow::ensure!(
        logging.max_file_mib > 0,
        "logging.max_file_mib must be at least 1"
    );
    Ok(file_rotate::FileRotate::new(
        path,
        file_rotate::suffix::AppendCount::new(logging.max_files),
        file_rotate::ContentLimit::BytesSurpassed(logging.max_file_mib as usize * 1024 * 1024),
        file_rotate::compression::Compression::None,
        None,
    ))
}

/// The span exporter's provider, or `None` (no exporter, no thread, no connection) when
/// `logging.otlp_endpoint` is empty.
pub fn provider(
    logging: &LoggingSettings,
    command: &str,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    if logging.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let endpoint = traces_url(&logging.otlp_endpoint);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(&endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("the OTLP exporter to {endpoint}"))?;
    let service = if logging.service_name.is_empty() {
        format!("voice-clone-tts-{command}")
    } else {
        logging.service_name.clone()
    };
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    ))
}

/// The collector's URL for spans: its base URL with the OTLP path added, as the OpenTelemetry
/// SDKs do with a base endpoint; a URL that already names the path is taken as it is.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with(TRACES_PATH) {
        endpoint.to_string()
    } else {
        format!("{endpoint}{TRACES_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logging(otlp_endpoint: &str) -> LoggingSettings {
        LoggingSettings {
            level: "info".into(),
            format: "text".into(),
            otlp_endpoint: otlp_endpoint.into(),
            service_name: String::new(),
            files: false,
            dir: "logs".into(),
            file: String::new(),
            max_file_mib: 50,
            max_files: 5,
        }
    }

    #[test]
    fn no_exporter_is_built_without_an_endpoint() {
        assert!(provider(&logging(""), "gateway").unwrap().is_none());
        assert!(
            !init(&logging(""), "gateway", "gateway")
                .unwrap()
                .exporting()
        );
    }

    /// The origin document writes its level in capitals (`INFO`).
    #[test]
    fn level_names_are_read_in_any_case() {
        use tracing_subscriber::filter::LevelFilter;
        for level in ["INFO", "info", "Info"] {
            assert_eq!(
                EnvFilter::new(level).max_level_hint(),
                Some(LevelFilter::INFO),
                "{level}"
            );
        }
    }

    #[test]
    fn log_files_are_named_after_the_process_or_given_whole() {
        let mut settings = logging("");
        assert_eq!(log_file(&settings, "gateway"), None);
        settings.files = true;
        assert_eq!(
            log_file(&settings, "worker-piper"),
            Some(PathBuf::from("logs/worker-piper.log"))
        );
        settings.file = "logs/voice-clone.log".into();
        assert_eq!(
            log_file(&settings, "gateway"),
            Some(PathBuf::from("logs/voice-clone.log"))
        );
    }

    #[test]
    fn a_full_log_file_is_rotated_and_old_ones_are_pruned() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut settings = logging("");
        settings.max_file_mib = 1;
        settings.max_files = 2;
        let path = dir.path().join("gateway.log");
        let mut file = rotating_file(&settings, &path).unwrap();
        let line = vec![b'x'; 64 * 1024];
        for _ in 0..(16 * 4 + 3) {
            file.write_all(&line).unwrap();
        }
        file.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["gateway.log", "gateway.log.1", "gateway.log.2"]);
    }

    #[test]
    fn an_endpoint_builds_an_exporter_that_shuts_down() {
        // Nothing listens there; a provider with no spans sends nothing.
        let telemetry = Telemetry {
            provider: provider(&logging("http://127.0.0.1:9"), "gateway").unwrap(),
            file: None,
        };
        assert!(telemetry.exporting());
        drop(telemetry);
    }

    #[test]
    fn spans_go_to_the_collectors_traces_path() {
        for endpoint in [
            "http://collector:4318",
            "http://collector:4318/",
            "http://collector:4318/v1/traces",
        ] {
            assert_eq!(
                traces_url(endpoint),
                "http://collector:4318/v1/traces",
                "{endpoint}"
            );
        }
    }
}
