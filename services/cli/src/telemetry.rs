//! Logging setup, and span export to an OpenTelemetry collector when `logging.otlp_endpoint` is
//! set.

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

/// What [`init`] installed. Dropping it (when `main` returns) sends the spans still buffered
/// and stops the exporter's thread.
#[must_use = "dropping it stops the span exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
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

/// Installs the global subscriber: log lines in `logging.format` and, when `logging.otlp_endpoint`
/// is set, an OpenTelemetry layer that exports spans in batches. `RUST_LOG` wins over the
/// configured level when set. `command` names the service when `logging.service_name` does not.
pub fn init(logging: &LoggingSettings, command: &str) -> anyhow::Result<Telemetry> {
    let provider = provider(logging, command)?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logging.level));
    let format = if logging.format == "json" {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
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
        .with(format)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
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
        }
    }

    #[test]
    fn no_exporter_is_built_without_an_endpoint() {
        assert!(provider(&logging(""), "gateway").unwrap().is_none());
        assert!(!init(&logging(""), "gateway").unwrap().exporting());
    }

    #[test]
    fn an_endpoint_builds_an_exporter_that_shuts_down() {
        // Nothing listens there; a provider with no spans sends nothing.
        let telemetry = Telemetry {
            provider: provider(&logging("http://127.0.0.1:9"), "gateway").unwrap(),
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
