//! Side by side with Piper's own HTTP server: `cargo bench -p tts-tests --bench piper_server`.
//!
//! Starts Piper's server (piper-tts 1.8.0 from PyPI, installed by `scripts/piper-peer` into
//! `.cache/piper-venv`) on the same `en_US-joe-medium` voice file this service uses, and this
//! service in each mode, then times sync synthesis of one sentence and of a five-sentence
//! paragraph from the client, alternating the two servers request by request (and which goes
//! first) so that drift on the machine hits both alike. Prints each median with its ratio;
//! docs/PERFORMANCE.md records the table. Measure on a quiet machine.

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

/// Seconds for one sync request to this service, body read.
async fn ours(app: &TestApp, text: &str) -> f64 {
    let start = Instant::now();
    let response = app
        .synthesize(&json!({"text": text, "voice_id": VOICE}))
        .await;
    assert_eq!(response.status(), 200);
    let audio = response.bytes().await.unwrap();
    assert!(audio.len() > 44);
    start.elapsed().as_secs_f64()
}

/// Seconds for one request to Piper's server, body read.
async fn theirs(client: &reqwest::Client, peer: &Peer, text: &str) -> f64 {
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
    start.elapsed().as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let client = reqwest::Client::new();
    let peer = start_peer();
    wait_for_peer(&client, &peer).await;
    println!("| text | mode | this service p50 (s) | Piper's server p50 (s) | ratio |");
    println!("| --- | --- | --- | --- | --- |");
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
            let (a, b) = (median(a), median(b));
            println!("| {name} | {mode} | {a:.3} | {b:.3} | {:.2} |", a / b);
        }
    }
}
