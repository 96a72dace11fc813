//! Spans exported to an OpenTelemetry collector. With `logging.otlp_endpoint` set, a gateway
//! process and a worker process send their spans over OTLP/HTTP, and the request's span and the
//! job's span are in the trace that the request brought, the job's a child of the request's.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::watch;
use tts_tests::app::VOICE;
use tts_tests::{
    Deployment, spawn_engines_with, spawn_gateway_process_with_env, spawn_worker_process_with_env,
};

/// A span as the collector received it, ids in hex.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver of spans (protobuf bodies) on a port of its own, which keeps every span
/// it is sent. It runs until the test's runtime ends.
struct Collector {
    url: String,
    spans: watch::Receiver<Vec<Received>>,
}

impl Collector {
    async fn start() -> Self {
        let (tx, spans) = watch::channel(Vec::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(tx);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector {
            url: format!("http://{addr}"),
            spans,
        }
    }

    /// What `pick` makes of the spans received so far, once it makes something; fails with
    /// every span received when `within` runs out first.
    async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(&[Received]) -> Option<T>,
    ) -> Result<T, Vec<Received>> {
        let mut found = None;
        let waited = tokio::time::timeout(
            within,
            self.spans.wait_for(|spans| {
                found = pick(spans);
                found.is_some()
            }),
        )
        .await
        .is_ok_and(|result| result.is_ok());
        match found {
            Some(value) if waited => Ok(value),
            _ => Err(self.spans.borrow().clone()),
        }
    }
}

async fn receive(State(spans): State<watch::Sender<Vec<Received>>>, body: Bytes) -> Response {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = attributes(&resource.attributes)
            .into_iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            received.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: attributes(&span.attributes),
            });
        }
    }
    spans.send_modify(|spans| spans.extend(received));
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
        .into_response()
}

/// Attributes as text, whatever their type.
fn attributes(pairs: &[KeyValue]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_and_its_job_are_exported_as_spans_of_the_requests_trace() {
    let mut collector = Collector::start().await;
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |_| {}).await;
    let otlp = [
        ("TTS__LOGGING__OTLP_ENDPOINT", collector.url.as_str()),
        // The SDK's batch delay (five seconds by default), shortened so the test is quick.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let _worker = spawn_worker_process_with_env(&app.settings, "otel-worker", &otlp);
    let (_gateway, url) = spawn_gateway_process_with_env(&app.settings, &otlp).await;
    tts_tests::wait_until_listed(&app.client, &url, None, VOICE, Duration::from_secs(90)).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let response = app
        .client
        .post(format!("{url}/api/jobs"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&json!({"text": "Export this job.", "voice_id": VOICE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let job = app.wait_for_job(&job_id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "succeeded", "{job}");

    let (request, attempt) = collector
        .wait_for(Duration::from_secs(30), |spans| {
            let in_trace = |service: &str, name: &str, job: Option<&str>| {
                spans
                    .iter()
                    .find(|s| {
                        s.trace_id == trace_id
                            && s.service == service
                            && s.name == name
                            && job.is_none_or(|job| s.attribute("job_id") == Some(job))
                    })
                    .cloned()
            };
            let request = in_trace("voice-clone-tts-gateway", "request", None)?;
            let attempt = in_trace("voice-clone-tts-worker", "job", Some(&job_id))?;
            Some((request, attempt))
        })
        .await
        .unwrap_or_else(|spans| panic!("no request and job spans of the trace: {spans:#?}"));

    // The request continues the client's span, and the job's attempt continues the request.
    assert_eq!(request.parent_span_id, client_span, "{request:?}");
    assert_eq!(request.attribute("path"), Some("/api/jobs"), "{request:?}");
    assert_eq!(request.attribute("trace_id"), Some(trace_id), "{request:?}");
    assert_eq!(attempt.parent_span_id, request.span_id, "{attempt:?}");
    assert_eq!(attempt.attribute("attempt"), Some("1"), "{attempt:?}");
    assert_eq!(
        attempt.attribute("node"),
        Some("otel-worker"),
        "{attempt:?}"
    );
}
