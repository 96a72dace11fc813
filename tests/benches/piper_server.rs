//! Side by side with Piper's own HTTP server: `cargo bench -p tts-tests --bench piper_server`.
//!
//! Starts Piper's server (piper-tts 1.8.0 from PyPI, installed by `scripts/piper-peer` into
//! `.cache/piper-venv`) on the same `en_US-joe-medium` voice file this service uses, and this
//! service in each mode, then times sync synthesis of one sentence and of a five-sentence
//! paragraph from the client, alternating the two servers request by request (and which goes
//! first) so that drift on the machine hits both alike. Prints each median with its ratio, and
//! where the time goes on each side: the server's own synthesis time (this service's job from
//! started to finished, as its record tells; Piper's `synthesize_seconds`, as its `/info` tells)
//! and the rest of the request around it. docs/PERFORMANCE.md records the table. Measure on a
//! quiet machine.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, TestApp, spawn_app, workspace_root};

/// 22 words, two clauses.
const SENTENCE: &str = "The committee reviewed the proposal carefully, and after a long discussion \
    it agreed to fund the new public city library next spring.";

/// Five sentences, 70 words.
const PARAGRAPH: &str = "Voice synthesis turns written words into speech that people can \
    listen to. Each sentence is first converted into phonemes, the small units of sound a \
    language is made of. A neural network then renders those phonemes as audio at twenty-two \
    kilohertz. The result is stored and sent back to the client that asked for it. Good \
    systems do all of this in well under a second.";

const RUNS: usize = 15;

/// Piper's server, stopped on drop.
struct Peer {
    child: Child,
    url: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peer() -> Peer {
    let root = workspace_root();
    let status = Command::new(root.join("scripts/piper-peer"))
        .status()
        .expect("scripts/piper-peer runs");
    assert!(status.success(), "scripts/piper-peer failed");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let model = root.join(format!(".cache/voice-clone-tts/piper/{VOICE}.onnx"));
    let child = Command::new(root.join(".cache/piper-venv/bin/python"))
        .args(["-m", "piper.http_server", "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .arg("-m")
        .arg(&model)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("Piper's server starts");
    Peer {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn wait_for_peer(client: &reqwest::Client, peer: &Peer) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{}/voices", peer.url)).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("Piper's server did not answer at {}", peer.url);
}

/// One request as the client saw it: seconds in all, body read, and seconds the server spent
/// synthesising, as it reports them (asked after the clock stopped).
struct Timed {
    total: f64,
    synthesis: f64,
}

/// One sync request to this service; the synthesis time is its job's, started to finished.
async fn ours(app: &TestApp, text: &str) -> Timed {
    let start = Instant::now();
    let response = app
        .synthesize(&json!({"text": text, "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 200);
    let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
    let audio = response.bytes().await.unwrap();
    assert!(audio.len() > 44);
    let total = start.elapsed().as_secs_f64();
    let job = app.job(&job_id).await;
    let at =
        |field: &str| chrono::DateTime::parse_from_rfc3339(job[field].as_str().unwrap()).unwrap();
    let synthesis = (at("finished_at") - at("started_at")).as_seconds_f64();
    Timed { total, synthesis }
}

/// One request to Piper's server; the synthesis time is the one its `/info` reports for the
/// last request.
async fn theirs(client: &reqwest::Client, peer: &Peer, text: &str) -> Timed {
    let start = Instant::now();
    let response = client
        .post(format!("{}/synthesize", peer.url))
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let audio = response.bytes().await.unwrap();
    assert!(audio.len() > 44);
    let total = start.elapsed().as_secs_f64();
    let info: serde_json::Value = client
        .get(format!("{}/info", peer.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let synthesis = info["last"]["synthesize_seconds"].as_f64().unwrap();
    Timed { total, synthesis }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Medians of a side's runs: in all, synthesising, and around the synthesis (each run's total
/// less its synthesis time).
fn medians(runs: &[Timed]) -> (f64, f64, f64) {
    (
        median(runs.iter().map(|r| r.total).collect()),
        median(runs.iter().map(|r| r.synthesis).collect()),
        median(runs.iter().map(|r| r.total - r.synthesis).collect()),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let client = reqwest::Client::new();
    let peer = start_peer();
    wait_for_peer(&client, &peer).await;
    println!(
        "| text | mode | this service p50 (s) | Piper's server p50 (s) | ratio | \
         synthesis p50, ours / Piper's (s) | around it p50, ours / Piper's (ms) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (mode, deployment) in [
        ("standalone", Deployment::Standalone),
        ("distributed", Deployment::Distributed),
    ] {
        if only.as_deref().is_some_and(|o| o != mode) {
            continue;
        }
        let app = spawn_app(deployment).await;
        for (name, text) in [("sentence", SENTENCE), ("paragraph", PARAGRAPH)] {
            // Warm-up: both load and touch their models.
            for _ in 0..2 {
                ours(&app, text).await;
                theirs(&client, &peer, text).await;
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for run in 0..RUNS {
                if run % 2 == 0 {
                    a.push(ours(&app, text).await);
                    b.push(theirs(&client, &peer, text).await);
                } else {
                    b.push(theirs(&client, &peer, text).await);
                    a.push(ours(&app, text).await);
                }
            }
            let ((a, a_synthesis, a_around), (b, b_synthesis, b_around)) =
                (medians(&a), medians(&b));
            println!(
                "| {name} | {mode} | {a:.3} | {b:.3} | {:.2} | {a_synthesis:.3} / \
                 {b_synthesis:.3} | {:.1} / {:.1} |",
                a / b,
                a_around * 1e3,
                b_around * 1e3
            );
        }
    }
}
