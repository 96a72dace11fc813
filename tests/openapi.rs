//! The OpenAPI document: generated from the code, served at `/openapi.json` with its page at
//! `/docs` (assets from the binary), covering every route the router serves; and a schema-driven
//! run that sends every operation generated and malformed input and finds no server error.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use tts_config::ApiKeySettings;
use tts_gateway::auth::hash_key;
use tts_tests::{
    Deployment, TestApp, spawn_app, spawn_engines_with, spawn_standalone, workspace_root,
};

/// Every operation the router serves, as `METHOD path`. The router registers each API handler
/// with its documented path in one call, and the document adds the console's files and its own
/// pages from the lists the router serves them from; an operation missing here is one this list
/// has not caught up with.
const OPERATIONS: [&str; 25] = [
    "DELETE /api/jobs/{id}",
    "DELETE /api/voices/{id}",
    "GET /api/admin/dead-letters",
    "POST /api/admin/dead-letters/{job_id}/requeue",
    "GET /",
    "GET /console/console.css",
    "GET /console/console.js",
    "GET /console/icon.svg",
    "GET /docs/",
    "GET /openapi.json",
    "GET /api/jobs/{id}",
    "GET /api/jobs/{id}/audio",
    "GET /api/nodes",
    "GET /api/voices",
    "GET /api/voices/{id}",
    "GET /health",
    "GET /metrics",
    "GET /v1/audio/voices",
    "GET /v1/models",
    "GET /ws",
    "GET /ws/jobs/{id}",
    "POST /api/jobs",
    "POST /api/synthesize",
    "POST /api/voices",
    "POST /v1/audio/speech",
];

fn operations(document: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                found.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_document_covers_every_route_the_router_serves() {
    let app = spawn_app(Deployment::Standalone).await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.unwrap();
    assert!(
        served["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        served["openapi"]
    );
    // What is served is what the code generates.
    let generated = serde_json::to_value(tts_gateway::routes::openapi()).unwrap();
    assert_eq!(served, generated);
    let expected: BTreeSet<String> = OPERATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(operations(&served), expected);

    // Each documented operation reaches its handler: nothing answers with the router's own
    // "no such endpoint" or "method not allowed".
    let unknown = uuid::Uuid::new_v4().to_string();
    for operation in &expected {
        let (method, path) = operation.split_once(' ').unwrap();
        let url = app.url(&path.replace("{id}", &unknown));
        let request = match method {
            "GET" => app.client.get(&url),
            "POST" => app.client.post(&url),
            "DELETE" => app.client.delete(&url),
            other => panic!("no request for {other}"),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let fallback = (status == 404 && body.contains("\"not_found\""))
            || (status == 405 && body.contains("method_not_allowed"));
        assert!(!fallback, "{operation} is not served: {status} {body}");
    }

    // Every error answer of each operation is documented with the error body, and each
    // operation has a summary and a tag.
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(operation["summary"].is_string(), "{method} {path}: summary");
            assert!(operation["tags"].is_array(), "{method} {path}: tag");
            let responses = operation["responses"].as_object().unwrap();
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    if path == "/health" {
                        continue;
                    }
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert!(
                        schema.as_str().is_some_and(
                            |s| s.ends_with("/ApiError") || s.ends_with("/OpenAiError")
                        ),
                        "{method} {path} {status}: {response}"
                    );
                }
            }
        }
    }
}

const KEY: &str = "docs-test-key-0123456789";

#[tokio::test]
async fn the_docs_page_works_offline_and_without_a_key() {
    let app = spawn_engines_with(Deployment::GatewayOnly, &[], |s| {
        s.auth.mode = "on".into();
        s.auth.keys = vec![ApiKeySettings {
            name: "docs".into(),
            tenant: "docs".into(),
            sha256: hash_key(KEY),
            admin: false,
            rpm: None,
        }];
    })
    .await;
    // The API itself still wants a key.
    let refused = app.client.get(app.url("/api/voices")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let document = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(document.status(), 200);

    // The page and every asset it loads come from the gateway itself.
    let page = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    let assets = local_assets(&html);
    assert!(
        assets.iter().any(|a| a.ends_with(".js")),
        "the page loads scripts: {html}"
    );
    for asset in &assets {
        assert!(
            !asset.starts_with("http://")
                && !asset.starts_with("https://")
                && !asset.starts_with("//"),
            "{asset} would need the network"
        );
        let url = app.url(&format!("/docs/{}", asset.trim_start_matches("./")));
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert!(!response.bytes().await.unwrap().is_empty(), "{url}");
    }
    // The page's initialiser points at the served document.
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
}

/// The `src` and `href` values of the page's script and link tags.
fn local_assets(html: &str) -> Vec<String> {
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            if let Some(end) = rest.find('"') {
                assets.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    assets
}

/// Schemathesis (installed by scripts/test into `.cache/schemathesis-venv`) generates requests
/// from the served document, valid and malformed, for every operation, and checks that none is
/// answered with a server error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_and_malformed_requests_never_get_a_server_error() {
    // Both built-in engines, so that every operation has what it needs: a deployment without
    // the cloning engine answers uploads with 503 engine_unavailable, as it should.
    let app: TestApp = spawn_standalone(&["piper", "kokoro"]).await;
    let root = workspace_root();
    let schemathesis = root.join(".cache/schemathesis-venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: scripts/test installs it",
        schemathesis.display()
    );
    let report = tempfile::tempdir().unwrap();
    let document = app.url("/openapi.json");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            .args(["run", &document])
            .args(["--checks", "not_a_server_error"])
            .args(["--mode", "all"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", "20"])
            .args(["--seed", "20261130"])
            .args(["--workers", "2"])
            .args(["--request-timeout", "120"])
            .args(["--generation-database", "none"])
            .arg("--no-color")
            .arg("--report-dir")
            .arg(report.path())
            // Its own cache of failures goes in the working directory: a temporary one, so that
            // nothing is written into the repository.
            .current_dir(report.path())
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation was exercised but the document itself, which schemathesis reads rather
    // than tests.
    let tested = format!("Tested: {}", OPERATIONS.len() - 1);
    assert!(
        stdout.contains(&tested),
        "not every operation was tested:\n{stdout}"
    );
}
