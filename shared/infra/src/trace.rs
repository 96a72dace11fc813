//! A trace's OpenTelemetry side. [`TraceParent`] is what crosses HTTP and the queue; this makes
//! a span of ours part of the same trace for an OpenTelemetry exporter, when the process has one
//! (`logging.otlp_endpoint`), and does nothing when it has none.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tts_contracts::TraceParent;

/// Makes `parent`, a span of another process (the client's, or the gateway's for a job), the
/// OpenTelemetry parent of `span`, which must not have been entered yet. Returns `span`'s own
/// place in the trace, for what it sends on, when an exporter records spans; `None` without one,
/// when `span` has no OpenTelemetry identity.
pub fn continue_trace(span: &tracing::Span, parent: Option<&TraceParent>) -> Option<TraceParent> {
    if let Some(remote) = parent.and_then(remote_span) {
        // Without an OpenTelemetry layer there is no parent to set, which is no error: the
        // trace id is in the span's fields for the logs either way.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    if !own.is_valid() {
        return None;
    }
    TraceParent::parse(&format!(
        "00-{}-{}-{:02x}",
        own.trace_id(),
        own.span_id(),
        own.trace_flags().to_u8()
    ))
}

fn remote_span(parent: &TraceParent) -> Option<SpanContext> {
    let flags = if parent.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(
        TraceId::from_hex(parent.trace_id()).ok()?,
        SpanId::from_hex(parent.parent_id()).ok()?,
        flags,
        true,
        TraceState::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_an_exporter_a_span_has_no_place_in_the_trace() {
        let span = tracing::info_span!("request");
        assert_eq!(
            continue_trace(&span, TraceParent::parse(PARENT).as_ref()),
            None
        );
    }

    #[test]
    fn with_an_exporter_a_span_continues_the_remote_parents_trace() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let parent = TraceParent::parse(PARENT).unwrap();
            let span = tracing::info_span!("request");
            let own = continue_trace(&span, Some(&parent)).expect("an OpenTelemetry span");
            assert_eq!(own.trace_id(), parent.trace_id());
            assert_ne!(own.parent_id(), parent.parent_id());
            assert!(own.sampled());

            // A span with no parent starts a trace of its own.
            let root = continue_trace(&tracing::info_span!("request"), None).unwrap();
            assert_ne!(root.trace_id(), parent.trace_id());
        });
    }
}
