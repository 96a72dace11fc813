//! Servers that speak the HTTP contracts of the upstream engines, started by the tests on free
//! ports: GPT-SoVITS' api_v2 (`POST /tts`) and the Coqui XTTS streaming server
//! (`POST /clone_speaker`, `POST /tts_stream`).
//!
//! They check requests the way the real servers do (api_v2's `check_params` and its reading of
//! the reference clip from its own disk; the XTTS server's pydantic models) and answer with
//! audio in the real servers' formats, so the engines are tested against the exact contract.
//! They do not synthesise speech: the answer is a tone whose length follows the text and speed.
//!
//! Each server keeps its port for its whole life, listening or not: a test can make it refuse
//! connections, as a server that is down does, and accept them again, without another process
//! taking the port in between.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Seconds of audio per character of text at speed 1, for the answers' length.
const SECS_PER_CHAR: f32 = 0.06;

fn tone(seconds: f32, rate: u32) -> Vec<i16> {
    let n = (seconds * rate as f32) as usize;
    (0..n)
        .map(|i| ((i as f32 * 220.0 * std::f32::consts::TAU / rate as f32).sin() * 8000.0) as i16)
        .collect()
}

fn wav_bytes(samples: &[i16], rate: u32) -> Vec<u8> {
    let mut cursor = std::io::Cursor::new(Vec::new());
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::new(&mut cursor, spec).expect("WAV writer");
    for s in samples {
        writer.write_sample(*s).expect("sample written");
    }
    writer.finalize().expect("WAV finished");
    cursor.into_inner()
}

/// A loopback port that refuses connections for as long as this lives: its socket is bound, so
/// nothing else can take the port, but never listens. It is bound with `SO_REUSEPORT`, so that a
/// listener of the test's own can share the port.
pub struct ClosedPort {
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = Self::socket();
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("a free port");
        let addr = socket.local_addr().expect("an address");
        ClosedPort {
            _socket: socket,
            addr,
        }
    }

    fn socket() -> TcpSocket {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A listener on this port, beside the socket that keeps it.
    fn listen(&self) -> TcpListener {
        let socket = Self::socket();
        socket.bind(self.addr).expect("the kept port");
        socket.listen(1024).expect("listening")
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A server on a port of its own that it keeps whether or not it listens; stopped on drop.
struct Serving {
    port: ClosedPort,
    app: axum::Router,
    running: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

impl Serving {
    fn url(&self) -> String {
        self.port.url()
    }

    /// Starts listening, if it is not.
    fn accept(&self) {
        let mut running = self.running.lock().unwrap();
        if running.is_some() {
            return;
        }
        let listener = self.port.listen();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = self.app.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        *running = Some((stop, task));
    }

    /// Stops listening and returns once the listener is closed (connections are refused from
    /// then on); requests in progress finish first.
    async fn refuse(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// A server that refuses connections until [`Serving::accept`].
fn closed(app: axum::Router) -> Serving {
    Serving {
        port: ClosedPort::new(),
        app,
        running: Mutex::new(None),
    }
}

async fn serve(app: axum::Router) -> Serving {
    let serving = closed(app);
    serving.accept();
    serving
}

/// What a server saw, for the tests' assertions.
#[derive(Default)]
pub struct Seen {
    pub requests: Mutex<Vec<Value>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl Seen {
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    fn enter(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The GPT-SoVITS model version a fake api_v2 claims, which decides its languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SovitsVersion {
    V1,
    V2,
}

impl SovitsVersion {
    fn languages(self) -> &'static [&'static str] {
        match self {
            SovitsVersion::V1 => &["auto", "en", "zh", "ja", "all_zh", "all_ja"],
            SovitsVersion::V2 => &[
                "auto", "auto_yue", "en", "zh", "ja", "yue", "ko", "all_zh", "all_ja", "all_yue",
                "all_ko",
            ],
        }
    }

    fn name(self) -> &'static str {
        match self {
            SovitsVersion::V1 => "v1",
            SovitsVersion::V2 => "v2",
        }
    }
}

/// How a fake api_v2 writes the audio of a synthesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A WAV file with its sizes, as api_v2 writes one.
    Wav,
    /// A WAV whose header says "unknown length" (sizes 0xFFFFFFFF), as a pipe or a stream
    /// writes one, followed by the samples.
    UnknownLength,
    /// Bytes that are not audio at all.
    Garbage,
}

struct ApiV2 {
    version: SovitsVersion,
    delay: Duration,
    seen: Arc<Seen>,
    answer: Mutex<Answer>,
}

/// A GPT-SoVITS api_v2 server.
pub struct FakeApiV2 {
    pub seen: Arc<Seen>,
    state: Arc<ApiV2>,
    serving: Serving,
}

impl FakeApiV2 {
    /// Starts one; each synthesis takes `delay`, so that overlapping requests would show.
    pub async fn start(version: SovitsVersion, delay: Duration) -> Self {
        let server = Self::down(version, delay);
        server.accept_connections();
        server
    }

    /// One whose port refuses connections until [`FakeApiV2::accept_connections`].
    pub fn down(version: SovitsVersion, delay: Duration) -> Self {
        let seen = Arc::new(Seen::default());
        let state = Arc::new(ApiV2 {
            version,
            delay,
            seen: seen.clone(),
            answer: Mutex::new(Answer::Wav),
        });
        let app = axum::Router::new()
            .route("/tts", post(api_v2_tts))
            .with_state(state.clone());
        FakeApiV2 {
            seen,
            state,
            serving: closed(app),
        }
    }

    pub fn url(&self) -> String {
        self.serving.url()
    }

    /// Answers later syntheses this way.
    pub fn answer_with(&self, answer: Answer) {
        *self.state.answer.lock().unwrap() = answer;
    }

    /// Listens (again) on the server's port.
    pub fn accept_connections(&self) {
        self.serving.accept();
    }

    /// Stops listening, as a server that went down: connections to its port are refused from
    /// the moment this returns.
    pub async fn refuse_connections(&self) {
        self.serving.refuse().await;
    }
}

/// A 16-bit mono WAV whose RIFF and data sizes say "unknown" (0xFFFFFFFF).
fn unknown_length_wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend(b"RIFF");
    bytes.extend(u32::MAX.to_le_bytes());
    bytes.extend(b"WAVEfmt ");
    bytes.extend(16u32.to_le_bytes());
    bytes.extend(1u16.to_le_bytes());
    bytes.extend(1u16.to_le_bytes());
    bytes.extend(rate.to_le_bytes());
    bytes.extend((rate * 2).to_le_bytes());
    bytes.extend(2u16.to_le_bytes());
    bytes.extend(16u16.to_le_bytes());
    bytes.extend(b"data");
    bytes.extend(u32::MAX.to_le_bytes());
    bytes.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    bytes
}

fn api_v2_error(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "message": message }))).into_response()
}

/// api_v2's `check_params`, then the pipeline's own refusal of a reference outside 3-10 s.
fn check_api_v2(version: SovitsVersion, req: &Value) -> Result<(), String> {
    let text = |key: &str| req.get(key).and_then(Value::as_str).unwrap_or_default();
    let languages = version.languages();
    if text("ref_audio_path").is_empty() {
        return Err("ref_audio_path is required".into());
    }
    if text("text").is_empty() {
        return Err("text is required".into());
    }
    let text_lang = text("text_lang");
    if text_lang.is_empty() {
        return Err("text_lang is required".into());
    }
    if !languages.contains(&text_lang.to_lowercase().as_str()) {
        return Err(format!(
            "text_lang: {text_lang} is not supported in version {}",
            version.name()
        ));
    }
    let prompt_lang = text("prompt_lang");
    if prompt_lang.is_empty() {
        return Err("prompt_lang is required".into());
    }
    if !languages.contains(&prompt_lang.to_lowercase().as_str()) {
        return Err(format!(
            "prompt_lang: {prompt_lang} is not supported in version {}",
            version.name()
        ));
    }
    let media_type = req
        .get("media_type")
        .and_then(Value::as_str)
        .unwrap_or("wav");
    if !["wav", "raw", "ogg", "aac"].contains(&media_type) {
        return Err(format!("media_type: {media_type} is not supported"));
    }
    let split = req
        .get("text_split_method")
        .and_then(Value::as_str)
        .unwrap_or("cut5");
    if !["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"].contains(&split) {
        return Err(format!("text_split_method:{split} is not supported"));
    }
    Ok(())
}

async fn api_v2_tts(State(state): State<Arc<ApiV2>>, Json(req): Json<Value>) -> Response {
    state.seen.enter();
    let response = async {
        if let Err(message) = check_api_v2(state.version, &req) {
            return api_v2_error(message);
        }
        // The server reads the reference from its own disk.
        let path = req["ref_audio_path"].as_str().unwrap_or_default().to_string();
        let clip = match std::fs::read(&path) {
            Ok(bytes) => tts_audio::decode(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(format!("{path}: {e}")),
        };
        let clip = match clip {
            Ok(c) => c,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"message": "tts failed", "Exception": e})),
                )
                    .into_response();
            }
        };
        if !(3.0..=10.0).contains(&clip.duration_seconds()) {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"message": "tts failed", "Exception": "参考音频在3~10秒范围外，请更换！"})),
            )
                .into_response();
        }
        tokio::time::sleep(state.delay).await;
        state.seen.requests.lock().unwrap().push(req.clone());
        let speed = req["speed_factor"].as_f64().unwrap_or(1.0) as f32;
        let chars = req["text"].as_str().unwrap_or_default().chars().count() as f32;
        // v2 models answer at 32 kHz.
        let samples = tone(chars * SECS_PER_CHAR / speed, 32_000);
        let answer = *state.answer.lock().unwrap();
        let wav = match answer {
            Answer::Wav => wav_bytes(&samples, 32_000),
            Answer::UnknownLength => unknown_length_wav(&samples, 32_000),
            Answer::Garbage => b"<html><body>502 Bad Gateway</body></html>".repeat(50),
        };
        ([("content-type", "audio/wav")], wav).into_response()
    }
    .await;
    state.seen.leave();
    response
}

/// The Coqui XTTS streaming server.
pub struct FakeXtts {
    pub seen: Arc<Seen>,
    pub clones: Arc<AtomicUsize>,
    serving: Serving,
}

#[derive(Clone)]
struct Xtts {
    seen: Arc<Seen>,
    clones: Arc<AtomicUsize>,
}

const XTTS_LANGUAGES: [&str; 16] = [
    "en", "de", "fr", "es", "it", "pl", "pt", "tr", "ru", "nl", "cs", "ar", "zh", "ja", "hu", "ko",
];

impl FakeXtts {
    pub async fn start() -> Self {
        let state = Xtts {
            seen: Arc::new(Seen::default()),
            clones: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .route("/clone_speaker", post(xtts_clone))
            .route("/tts_stream", post(xtts_stream))
            .with_state(state.clone());
        FakeXtts {
            seen: state.seen,
            clones: state.clones,
            serving: serve(app).await,
        }
    }

    pub fn url(&self) -> String {
        self.serving.url()
    }
}

/// Latents as the server returns them (32 x 1024 and 512 values), derived from the clip so that
/// different clips give different latents.
pub fn xtts_latents(clip: &tts_audio::Clip) -> Value {
    let level = clip.rms();
    let cond: Vec<Vec<f32>> = (0..32)
        .map(|r| {
            (0..1024)
                .map(|c| level * ((r * 1024 + c) as f32).sin())
                .collect()
        })
        .collect();
    let embedding: Vec<f32> = (0..512).map(|i| level * (i as f32 * 0.1).cos()).collect();
    json!({ "gpt_cond_latent": cond, "speaker_embedding": embedding })
}

async fn xtts_clone(State(state): State<Xtts>, mut form: Multipart) -> Response {
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("wav_file") {
            let bytes = field.bytes().await.unwrap_or_default();
            return match tts_audio::decode(&bytes) {
                Ok(clip) => {
                    state.clones.fetch_add(1, Ordering::SeqCst);
                    Json(xtts_latents(&clip)).into_response()
                }
                // The real server fails inside the model on a file it cannot load.
                Err(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
                }
            };
        }
    }
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"detail": [{"type": "missing", "loc": ["body", "wav_file"], "msg": "Field required"}]})),
    )
        .into_response()
}

/// The request model's checks, as pydantic reports them.
fn check_xtts(req: &Value) -> Result<(), Value> {
    let mut errors = Vec::new();
    let missing =
        |field: &str| json!({"type": "missing", "loc": ["body", field], "msg": "Field required"});
    match req.get("speaker_embedding").and_then(Value::as_array) {
        Some(v) if v.iter().all(Value::is_number) => {}
        Some(_) => errors.push(json!({"type": "float_parsing", "loc": ["body", "speaker_embedding"], "msg": "Input should be a valid number"})),
        None => errors.push(missing("speaker_embedding")),
    }
    match req.get("gpt_cond_latent").and_then(Value::as_array) {
        Some(rows) if rows.iter().all(|r| r.as_array().is_some_and(|r| r.iter().all(Value::is_number))) => {}
        Some(_) => errors.push(json!({"type": "list_type", "loc": ["body", "gpt_cond_latent"], "msg": "Input should be a valid list"})),
        None => errors.push(missing("gpt_cond_latent")),
    }
    if req.get("text").and_then(Value::as_str).is_none() {
        errors.push(missing("text"));
    }
    match req.get("language").and_then(Value::as_str) {
        Some(l) if XTTS_LANGUAGES.contains(&l) => {}
        Some(_) => errors.push(json!({"type": "literal_error", "loc": ["body", "language"], "msg": format!("Input should be {}", XTTS_LANGUAGES.map(|l| format!("'{l}'")).join(", "))})),
        None => errors.push(missing("language")),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(json!({ "detail": errors }))
    }
}

async fn xtts_stream(State(state): State<Xtts>, Json(req): Json<Value>) -> Response {
    if let Err(detail) = check_xtts(&req) {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(detail)).into_response();
    }
    state.seen.enter();
    state.seen.requests.lock().unwrap().push(req.clone());
    state.seen.leave();
    let chars = req["text"].as_str().unwrap_or_default().chars().count() as f32;
    let pcm = tone(chars * SECS_PER_CHAR, 24_000);
    // As the server streams it: a header written before the length is known, then PCM chunks.
    let header = wav_bytes(&[], 24_000);
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(header)];
    for chunk in pcm.chunks(4800) {
        chunks.push(Ok(chunk.iter().flat_map(|s| s.to_le_bytes()).collect()));
    }
    let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
    ([("content-type", "audio/wav")], body).into_response()
}
