//! Logging setup.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` wins over the configured level when set.
pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
