//! Request ids and traces. Every request runs in a span that carries its request id (the
//! client's `X-Request-Id`, or a new one; returned either way) and its trace id (from the
//! client's `traceparent`, or a new trace). A job that a request queues carries the trace to the
//! worker in the queue message's headers, so that one trace id links the request, the job and
//! each attempt at it in the logs, and in an OpenTelemetry exporter when one is configured.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tts_contracts::TraceParent;
use tts_contracts::trace::TRACEPARENT;

/// The header that names a request, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// A client's request id longer than this is replaced by one of the gateway's own.
const MAX_REQUEST_ID: usize = 128;

/// What the middleware learnt of a request, for handlers that queue jobs.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    /// This gateway's span of the request's trace: what a queued job continues.
    pub trace: TraceParent,
}

/// Middleware: names the request, opens its span and answers with its id.
pub async fn context(mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_valid_request_id(id))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        method = %request.method(),
        // Never the query string, which may carry a WebSocket client's access_token.
        path = %request.uri().path(),
    );
    // With an OpenTelemetry exporter the request span is a span of the trace, and a queued job
    // names it as its parent; without one, a span id of our own stands for it.
    let trace = tts_infra::trace::continue_trace(&span, incoming.as_ref())
        .unwrap_or_else(|| incoming.map_or_else(TraceParent::start, |parent| parent.child()));
    span.record("trace_id", trace.trace_id());
    request.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        trace,
    });
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// A request id worth keeping: short, visible ASCII, so that it can go into logs and back into
/// a header as it came.
fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
}
