//! The gateway's protection: per-address and global request rates shared by gateways through
//! Redis, a gateway's own limits when Redis is gone, and the bound on requests in progress.

use std::time::Duration;

use serde_json::{Value, json};
use tts_tests::{Deployment, RedisServer, TestApp, spawn_app_with, spawn_engines_with};

/// A request that every gateway answers without a worker: the job store says "no such job".
async fn poke(app: &TestApp) -> reqwest::Response {
    app.client
        .get(app.url("/api/jobs/00000000-0000-4000-8000-000000000000"))
        .send()
        .await
        .unwrap()
}

async fn assert_limited(response: reqwest::Response) {
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limit_exceeded");
    assert_eq!(body["message"], "Too many requests");
    assert_eq!(body["retry_after"], retry_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_the_per_address_limit_through_redis() {
    let prefix = format!("tts-test-{}", uuid::Uuid::new_v4().simple());
    let configure = |p: String| {
        move |s: &mut tts_config::Settings| {
            s.redis.key_prefix = p;
            s.gateway.ip_rpm = 6;
        }
    };
    let a = spawn_engines_with(Deployment::GatewayOnly, &[], configure(prefix.clone())).await;
    let b = spawn_engines_with(Deployment::GatewayOnly, &[], configure(prefix)).await;
    for _ in 0..3 {
        assert_eq!(poke(&a).await.status(), 404);
        assert_eq!(poke(&b).await.status(), 404);
    }
    // Six requests from this address reached the two gateways: the seventh waits, on either.
    assert_limited(poke(&a).await).await;
    assert_limited(poke(&b).await).await;
    // Health is never limited: probes must get through a saturated gateway.
    assert_ne!(
        a.client
            .get(a.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_counts_every_address() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.gateway.global_rpm = 4;
        s.gateway.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    for i in 0..4 {
        let response = app
            .client
            .get(app.url("/api/voices"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let fifth = app
        .client
        .get(app.url("/api/voices"))
        .header("x-forwarded-for", "203.0.113.99")
        .send()
        .await
        .unwrap();
    assert_limited(fifth).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let limited = |proxies: Vec<String>| {
        move |s: &mut tts_config::Settings| {
            s.gateway.ip_rpm = 2;
            s.gateway.trusted_proxies = proxies;
        }
    };
    let behind_proxy = spawn_engines_with(
        Deployment::GatewayOnly,
        &[],
        limited(vec!["127.0.0.0/8".into()]),
    )
    .await;
    let open = spawn_engines_with(Deployment::GatewayOnly, &[], limited(Vec::new())).await;
    let from = |app: &TestApp, client: &str| {
        app.client
            .get(app.url("/api/voices"))
            .header("x-forwarded-for", client.to_string())
            .send()
    };
    // Behind the proxy each client has its own budget.
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        for _ in 0..2 {
            assert_eq!(from(&behind_proxy, client).await.unwrap().status(), 200);
        }
    }
    // Straight from the socket the header is ignored: it is one client.
    assert_eq!(from(&open, "198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(from(&open, "198.51.100.2").await.unwrap().status(), 200);
    assert_limited(from(&open, "198.51.100.3").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_gateway_keeps_its_own_limits() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], move |s| {
        s.redis.url = url;
        s.gateway.ip_rpm = 5;
    })
    .await;
    // A path no handler serves: its answer needs no Redis, so only the limits are measured.
    let unrouted = || app.client.get(app.url("/api/no-such-thing")).send();
    for _ in 0..3 {
        assert_eq!(unrouted().await.unwrap().status(), 404);
    }
    redis.stop();
    // The shared limits are gone, but this gateway's still count: two more, then 429.
    for _ in 0..2 {
        assert_eq!(unrouted().await.unwrap().status(), 404);
    }
    assert_limited(unrouted().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrent_limit_are_refused() {
    let app = spawn_app_with(Deployment::Standalone, |s| {
        s.gateway.concurrent_limit = 1;
    })
    .await;
    let long_text = "The quick brown fox jumps over the lazy dog. ".repeat(12);
    let slow = {
        let client = app.client.clone();
        let url = app.url("/api/synthesize");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"text": long_text, "voice_id": tts_tests::app::VOICE}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_limited(app.client.get(app.url("/api/voices")).send().await.unwrap()).await;
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        app.client
            .get(app.url("/api/voices"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_requests_get_503_when_the_queue_is_full_or_no_worker_is_left() {
    // One slot and no room in the queue: a job waiting behind a running one fills it.
    let app = spawn_app_with(Deployment::Distributed, |s| {
        s.worker.max_concurrent = 1;
        s.gateway.max_queue_depth = 0;
    })
    .await;
    let long_text = "The quick brown fox jumps over the lazy dog. ".repeat(15);
    let mut queued = Vec::new();
    for _ in 0..3 {
        let response = app
            .submit(
                &json!({"text": long_text, "voice_id": tts_tests::app::VOICE}),
                None,
            )
            .await;
        assert_eq!(response.status(), 202, "async jobs are still queued");
        queued.push(
            response.json::<Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let response = app
        .synthesize(&json!({"text": "Hello.", "voice_id": tts_tests::app::VOICE}))
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "queue_full", "{body}");
    assert!(body["retry_after"].as_u64().unwrap() >= 1);
    for job in &queued {
        app.wait_for_job(job, Duration::from_secs(120)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_whose_workers_are_gone_gets_503_not_a_wait() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |_| {}).await;
    let mut worker = tts_tests::spawn_worker_process(&app.settings, "leaving-worker");
    app.wait_for_voice(tts_tests::app::VOICE, 1).await;
    assert!(worker.terminate().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let response = loop {
        let response = app
            .synthesize(&json!({"text": "Anyone there?", "voice_id": tts_tests::app::VOICE}))
            .await;
        if response.status() != 200 {
            break response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never left"
        );
    };
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "engine_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_listed_origins_only() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.gateway.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    let preflight = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/jobs"))
            .header("origin", origin.to_string())
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let open = spawn_engines_with(Deployment::GatewayOnly, &[], |_| {}).await;
    let response = open
        .client
        .get(open.url("/api/voices"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}
