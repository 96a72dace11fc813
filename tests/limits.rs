//! The gateway's protection: per-address, per-tenant and global request rates shared by
//! gateways through Redis, with small bursts; strangers counted apart from tenants; a gateway's
//! own limits when Redis is gone; the bound on requests in progress; and caps on open WebSockets.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tts_config::ApiKeySettings;
use tts_gateway::auth::hash_key;
use tts_tests::{Deployment, RedisServer, TestApp, spawn_app_with, spawn_engines_with};

/// A request that every gateway answers without a worker: the job store says "no such job".
async fn poke(app: &TestApp) -> reqwest::Response {
    app.client
        .get(app.url("/api/jobs/00000000-0000-4000-8000-000000000000"))
        .send()
        .await
        .unwrap()
}

/// Checks a rate limit's 429 and returns its `Retry-After`, which the body repeats.
async fn assert_limited(response: reqwest::Response) -> u64 {
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
    retry_after
}

/// As [`poke`], from `client` behind the gateway's trusted proxy, with an API key or none.
async fn poke_as(app: &TestApp, client: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url("/api/jobs/00000000-0000-4000-8000-000000000000"))
        .header("x-forwarded-for", client.to_string());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

fn api_key(tenant: &str, key: &str, rpm: Option<u32>) -> ApiKeySettings {
    ApiKeySettings {
        name: format!("{tenant}-key"),
        tenant: tenant.into(),
        sha256: hash_key(key),
        admin: false,
        rpm,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_quota_is_not_available_at_once() {
    // Two gateways share the limit, so neither one's own limiter sees the whole pace: only the
    // shared one can hold it.
    let prefix = format!("tts-test-{}", uuid::Uuid::new_v4().simple());
    let configure = |p: String| {
        move |s: &mut tts_config::Settings| {
            s.redis.key_prefix = p;
            // One request a second with a burst of six.
            s.gateway.ip_rpm = 60;
            s.gateway.rate_burst_percent = 10;
        }
    };
    let a = spawn_engines_with(Deployment::GatewayOnly, &[], configure(prefix.clone())).await;
    let b = spawn_engines_with(Deployment::GatewayOnly, &[], configure(prefix)).await;
    let (burst, per_second) = (6.0, 1.0);
    // Five requests a second for four seconds, alternating between the gateways.
    let mut pace = tokio::time::interval(Duration::from_millis(200));
    let mut admitted = 0;
    let started = Instant::now();
    for i in 0..20 {
        pace.tick().await;
        let response = poke(if i % 2 == 0 { &a } else { &b }).await;
        match response.status().as_u16() {
            404 => admitted += 1,
            _ => {
                assert_limited(response).await;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        f64::from(admitted) <= burst + elapsed * per_second + 1.0,
        "{admitted} admitted in {elapsed:.1} s"
    );
    assert!(
        f64::from(admitted) > burst,
        "the steady rate flows after the burst: {admitted} admitted in {elapsed:.1} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_says_when_the_next_request_is_admitted() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        // One request every five seconds, one at once.
        s.gateway.ip_rpm = 12;
        s.gateway.rate_burst_percent = 10;
    })
    .await;
    assert_eq!(poke(&app).await.status(), 404);
    let retry_after = assert_limited(poke(&app).await).await;
    assert!((4..=5).contains(&retry_after), "{retry_after}");
    // Well before the announced time the request still waits, and is told the rest...
    tokio::time::sleep(Duration::from_secs(retry_after - 2)).await;
    let rest = assert_limited(poke(&app).await).await;
    assert!(rest <= 2, "{rest} s left of {retry_after}");
    // ...and after waiting that long it is admitted.
    tokio::time::sleep(Duration::from_secs(rest)).await;
    assert_eq!(poke(&app).await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_key_cannot_use_up_the_tenants_quota() {
    const ACME: &str = "acme-key-0123456789";
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "on".into();
        s.auth.keys = vec![api_key("acme", ACME, None)];
        s.gateway.trusted_proxies = vec!["127.0.0.1".into()];
        s.gateway.global_rpm = 4;
        s.gateway.ip_rpm = 3;
        s.gateway.unauthenticated_rpm = 5;
        s.gateway.rate_burst_percent = 100;
    })
    .await;
    // One address without a key: 401 until its own limit, then 429.
    for _ in 0..3 {
        assert_eq!(poke_as(&app, "198.51.100.1", None).await.status(), 401);
    }
    assert_limited(poke_as(&app, "198.51.100.1", None).await).await;
    // Strangers from other addresses, with wrong keys: they share one quota.
    for _ in 0..2 {
        let response = poke_as(&app, "198.51.100.2", Some("not-a-key")).await;
        assert_eq!(response.status(), 401);
    }
    assert_limited(poke_as(&app, "198.51.100.3", None).await).await;
    // A tenant from other addresses still has the whole global quota.
    for i in 1..=4 {
        let client = format!("203.0.113.{i}");
        assert_eq!(poke_as(&app, &client, Some(ACME)).await.status(), 404);
    }
    assert_limited(poke_as(&app, "203.0.113.9", Some(ACME)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_own_quota_leaves_the_others_alone() {
    const ACME: &str = "acme-key-0123456789";
    const GLOBEX: &str = "globex-key-9876543210";
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "on".into();
        s.auth.keys = vec![
            api_key("acme", ACME, Some(3)),
            api_key("globex", GLOBEX, Some(30)),
        ];
        s.gateway.trusted_proxies = vec!["127.0.0.1".into()];
        s.gateway.global_rpm = 100;
        s.gateway.ip_rpm = 100;
        s.gateway.rate_burst_percent = 100;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(poke_as(&app, "203.0.113.1", Some(ACME)).await.status(), 404);
    }
    // Acme's quota is Acme's, whichever address it calls from.
    assert_limited(poke_as(&app, "203.0.113.2", Some(ACME)).await).await;
    for _ in 0..5 {
        assert_eq!(
            poke_as(&app, "203.0.113.1", Some(GLOBEX)).await.status(),
            404
        );
    }
}

/// Opens a WebSocket on `path` as `client` behind the trusted proxy: the socket after its first
/// message, or the refusal of the handshake.
async fn open_socket(
    app: &TestApp,
    path: &str,
    client: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    axum::http::Response<Option<Vec<u8>>>,
> {
    let mut request = app
        .url(path)
        .replacen("http", "ws", 1)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut socket, _)) => {
            let first = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("the first message comes at once");
            assert!(matches!(first, Some(Ok(Message::Text(_)))), "{first:?}");
            Ok(socket)
        }
        Err(tungstenite::Error::Http(response)) => Err(response),
        Err(e) => panic!("the handshake failed: {e}"),
    }
}

/// Checks a refused WebSocket handshake: 429 with `Retry-After` and a JSON error.
fn assert_too_many_websockets(refusal: axum::http::Response<Option<Vec<u8>>>) {
    assert_eq!(refusal.status(), 429);
    let retry_after: u64 = refusal.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = serde_json::from_slice(refusal.body().as_deref().unwrap_or_default())
        .expect("a JSON error");
    assert_eq!(body["error"], "too_many_websockets", "{body}");
    assert_eq!(body["retry_after"], retry_after);
}

/// A job that stays queued: its record alone, written to the deployment's Redis, with no worker
/// to take it. Its WebSocket stays open for as long as the client keeps it.
async fn waiting_job(app: &TestApp) -> String {
    let message = tts_contracts::JobMessage {
        job_id: uuid::Uuid::new_v4(),
        engine: "piper".into(),
        created_at: chrono::Utc::now(),
        tenant: None,
        spec: tts_contracts::JobSpec::Synthesize {
            text: "Waiting.".into(),
            voice_id: tts_tests::app::VOICE.into(),
            language: "en".into(),
            speed: 1.0,
            streamed: false,
        },
    };
    let record = tts_contracts::JobRecord::queued(&message);
    let redis = redis::Client::open(app.settings.redis.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:job:{}", app.settings.redis.key_prefix, message.job_id);
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(serde_json::to_string(&record).unwrap())
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();
    format!("/ws/jobs/{}", message.job_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_are_capped_per_address_and_per_gateway() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.gateway.trusted_proxies = vec!["127.0.0.1".into()];
        s.gateway.max_websockets_per_ip = 2;
        s.gateway.max_websockets = 3;
    })
    .await;
    let (a, b) = ("198.51.100.1", "198.51.100.2");
    let job = waiting_job(&app).await;
    // Both kinds of socket count while they are open.
    let mut first = open_socket(&app, &job, a).await.expect("first accepted");
    let _second = open_socket(&app, "/ws", a).await.expect("second accepted");
    // The address has two open: a third is refused before the upgrade, on either endpoint.
    assert_too_many_websockets(open_socket(&app, "/ws", a).await.unwrap_err());
    assert_too_many_websockets(open_socket(&app, &job, a).await.unwrap_err());
    // Another address has its own two, but the gateway only three in all.
    let _third = open_socket(&app, "/ws", b).await.expect("third accepted");
    assert_too_many_websockets(open_socket(&app, "/ws", b).await.unwrap_err());
    // Closing a socket frees its place once the gateway has seen it close.
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    let deadline = Instant::now() + Duration::from_secs(10);
    let _fourth = loop {
        match open_socket(&app, "/ws", b).await {
            Ok(socket) => break socket,
            Err(refusal) => assert_too_many_websockets(refusal),
        }
        assert!(
            Instant::now() < deadline,
            "the closed socket kept its place"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_the_per_address_limit_through_redis() {
    let prefix = format!("tts-test-{}", uuid::Uuid::new_v4().simple());
    let configure = |p: String| {
        move |s: &mut tts_config::Settings| {
            s.redis.key_prefix = p;
            s.gateway.ip_rpm = 6;
            s.gateway.rate_burst_percent = 100;
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

/// A job submission takes its count against the shared limits in the same Redis script that
/// records its job. Spent through another gateway, the shared quota refuses a submission that
/// this gateway's own limiter would admit: 429, and no record is written. A submission refused
/// for what it asks (422) still counts, as any request does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submission_counts_against_the_shared_limit_with_its_record() {
    const ACME: &str = "acme-key-0123456789";
    const OPS: &str = "ops-key-0123456789";
    let prefix = format!("tts-test-{}", uuid::Uuid::new_v4().simple());
    let configure = |p: String| {
        move |s: &mut tts_config::Settings| {
            s.redis.key_prefix = p;
            s.auth.mode = "on".into();
            // Acme's quota is the one spent here; the test's own calls go as another tenant.
            s.auth.keys = vec![api_key("acme", ACME, Some(4)), api_key("ops", OPS, None)];
            s.gateway.rate_burst_percent = 100;
        }
    };
    let mut a = spawn_engines_with(
        Deployment::GatewayOnly,
        &["piper"],
        configure(prefix.clone()),
    )
    .await;
    a.add_worker("piper", |_| {}).await;
    let voice = tts_tests::app::VOICE;
    let within = Duration::from_secs(60);
    tts_tests::app::wait_until_listed(&a.client, &a.base_url, Some(OPS), voice, within).await;
    let b = spawn_engines_with(Deployment::GatewayOnly, &[], configure(prefix.clone())).await;
    let submit = |speed: f64| {
        a.client
            .post(a.url("/api/jobs"))
            .bearer_auth(ACME)
            .json(&json!({"text": "Hi.", "voice_id": voice, "speed": speed}))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(submit(1.0).await.unwrap().status(), 202);
    }
    assert_eq!(submit(99.0).await.unwrap().status(), 422);
    assert_eq!(poke_as(&b, "203.0.113.1", Some(ACME)).await.status(), 404);
    // The three submissions counted through Redis: the other gateway refuses the fifth request.
    assert_limited(poke_as(&b, "203.0.113.1", Some(ACME)).await).await;
    // This gateway's own limiter has seen three and admits a fourth; the shared count refuses it.
    assert_limited(submit(1.0).await.unwrap()).await;
    let redis = redis::Client::open(a.settings.redis.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let records: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:job:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        records.len(),
        2,
        "only the admitted jobs are recorded: {records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_counts_every_address() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.gateway.global_rpm = 4;
        s.gateway.rate_burst_percent = 100;
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
            s.gateway.rate_burst_percent = 100;
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
        s.gateway.rate_burst_percent = 100;
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
            // Until it gets in: a check of this test's own may hold the permit for a moment.
            loop {
                let status = client
                    .post(&url)
                    .json(&json!({"text": long_text, "voice_id": tts_tests::app::VOICE}))
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status != 429 {
                    return status;
                }
            }
        })
    };
    // A refused request is proof that the slow one holds the one permit: nothing else runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            !slow.is_finished(),
            "the slow request ended before it was seen"
        );
        assert!(Instant::now() < deadline, "no request was ever refused");
        let response = app.client.get(app.url("/api/voices")).send().await.unwrap();
        if response.status() != 200 {
            assert_limited(response).await;
            break;
        }
        // Leave the permit free for the slow request to take.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    // The worker's one slot takes the first job; the others wait in the queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.job(&queued[0]).await["status"] == "queued" {
        assert!(Instant::now() < deadline, "the worker never took the job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
