//! Prometheus metrics: one recorder per process, which the gateway and the workers record into
//! with the `metrics` crate's macros and serve as text on `/metrics`. In standalone mode, where
//! the gateway and the workers share a process, one scrape shows them all.
//!
//! The names are here, in one place, so that dashboards have one list to read.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// HTTP requests answered by the gateway, by `route` (the matched path template, or `unmatched`),
/// `method` and `status`.
pub const HTTP_REQUESTS: &str = "tts_http_requests_total";
/// Seconds from a request's arrival to its answer's headers, by `route`.
pub const HTTP_DURATION: &str = "tts_http_request_duration_seconds";
/// Requests refused with a JSON error, by its `code` (`rate_limit_exceeded`, `queue_full`,
/// `too_many_concurrent_requests`, ...) and `status`.
pub const HTTP_REFUSALS: &str = "tts_http_refusals_total";
/// Jobs queued by the gateway, by `engine` and `kind` (`synthesize`, `enroll`).
pub const JOBS_SUBMITTED: &str = "tts_jobs_submitted_total";
/// Job attempts a worker finished, by `engine`, `kind` and `outcome` (`succeeded`, `failed`,
/// `retried`).
pub const JOBS_FINISHED: &str = "tts_jobs_finished_total";
/// Deliveries of a job after its first, by `engine`.
pub const JOB_REDELIVERIES: &str = "tts_job_redeliveries_total";
/// Seconds a job waited in the queue before a worker started it, by `engine`.
pub const JOB_QUEUE_WAIT: &str = "tts_job_queue_wait_seconds";
/// Seconds the engine spent on a job attempt, by `engine` and `kind`.
pub const JOB_ENGINE_TIME: &str = "tts_job_engine_seconds";
/// Seconds from a job's creation to its end, by `engine` and `outcome`.
pub const JOB_TOTAL_TIME: &str = "tts_job_total_seconds";
/// Jobs a worker is running now, by `engine`.
pub const WORKER_IN_FLIGHT: &str = "tts_worker_jobs_in_flight";
/// Jobs waiting in an engine's queue (not yet delivered to a worker), by `engine`; the gateway
/// asks JetStream at each scrape.
pub const QUEUE_DEPTH: &str = "tts_queue_depth";
/// Live workers as the gateway's registry knows them, by `engine`.
pub const WORKERS_LIVE: &str = "tts_workers_live";
/// Jobs the live workers of an engine report running in their heartbeats, by `engine`.
pub const WORKERS_LOAD: &str = "tts_workers_load";
/// Jobs the live workers of an engine can run at once, by `engine`.
pub const WORKERS_CAPACITY: &str = "tts_workers_capacity";

/// Histogram buckets in seconds: from a few milliseconds (a queue wait on an idle fleet) to
/// minutes (an enrollment).
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process's recorder, installed on first use. A process that already has another
/// recorder (a test harness, say) keeps it; this handle then renders an empty page.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        handle
    })
}

/// The text a scrape gets, in Prometheus's exposition format.
pub fn render() -> String {
    handle().render()
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
