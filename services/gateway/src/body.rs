//! Request bodies at the edge. A body longer than its route accepts is refused from its
//! `Content-Length` before a byte of it is read, and a body that a handler leaves unread (a
//! refusal, an error) is drained in the background up to a bound: a server that answers and
//! closes while the client is still sending makes the kernel reset the connection, and the
//! client then sees a broken pipe instead of the answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body::{Frame, SizeHint};

use crate::AppState;
use crate::error::AppError;

/// At least this much of an unread body is drained, whatever the route's own limit.
const DRAIN_AT_LEAST: usize = 8 * 1024 * 1024;
/// A client that sends slower than this is not waited for.
const DRAIN_FOR: Duration = Duration::from_secs(10);

/// The largest body a route accepts: uploads of reference clips take a clip and the form
/// around it, everything else is small JSON.
pub fn limit(state: &AppState, method: &Method, path: &str) -> usize {
    if method == Method::POST && path == "/api/voices" {
        state.options.max_upload_bytes + 1024 * 1024
    } else {
        state.options.max_json_bytes
    }
}

/// Middleware: refuses an over-long body by its declared length, and makes every other body
/// drain itself when it is dropped unread.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = limit(&state, request.method(), request.uri().path());
    if let Some(length) = declared_length(request.headers())
        && length > limit as u64
    {
        tracing::info!(length, limit, "request body too large");
        drain(request.into_body(), limit);
        return AppError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body has {length} bytes; this endpoint takes at most {limit}"),
        )
        .into_response();
    }
    next.run(request.map(|body| Body::new(DrainOnDrop::new(body, limit))))
        .await
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads and drops what is left of `body` on a task of its own, up to a bound in bytes and
/// time, so that the answer reaches a client that is still sending.
fn drain(body: Body, limit: usize) {
    if body.is_end_stream() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut left = limit.max(DRAIN_AT_LEAST);
    runtime.spawn(async move {
        let mut chunks = body.into_data_stream();
        let drained = tokio::time::timeout(DRAIN_FOR, async {
            while let Some(Ok(chunk)) = chunks.next().await {
                if chunk.len() >= left {
                    return false;
                }
                left -= chunk.len();
            }
            true
        })
        .await;
        if drained != Ok(true) {
            tracing::info!("stopped draining a request body: too long or too slow");
        }
    });
}

/// A request body that drains what the handler left unread when it is dropped.
struct DrainOnDrop {
    inner: Option<Body>,
    limit: usize,
}

impl DrainOnDrop {
    fn new(inner: Body, limit: usize) -> Self {
        DrainOnDrop {
            inner: Some(inner),
            limit,
        }
    }
}

impl HttpBody for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take() {
            drain(body, self.limit);
        }
    }
}
