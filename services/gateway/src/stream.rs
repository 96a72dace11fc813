//! Following a job's audio as the worker makes it, for streaming responses.
//!
//! Workers publish each piece of a synthesis (`AudioChunk`) on `tts.audio.<job_id>`, at most
//! once. The follower forwards pieces while they arrive in order from one attempt. When one is
//! missing, or another attempt starts, it stops trusting the live pieces and waits for the stored
//! audio, which is the truth: it sends what the client lacks from there if the stored audio was
//! made by the attempt it streamed, and ends with an error otherwise, so a client never gets
//! silently spliced audio.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tts_contracts::{AudioChunk, JobEvent, JobId, JobRecord, JobStatus, subjects};
use tts_infra::{AudioStore, BusMessage, JobStore};

use crate::AppState;
use crate::error::AppError;

/// How often the follower re-reads the job record, in case an event was missed.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// What a follower yields, in order: the sample rate once, then samples.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Rate(u32),
    Samples(Vec<i16>),
}

/// The subscriptions a stream needs, made before the job is queued so that nothing it publishes
/// goes unseen.
pub struct Subscriptions {
    pub chunks: BoxStream<'static, BusMessage>,
    pub events: BoxStream<'static, BusMessage>,
}

impl Subscriptions {
    pub async fn open(state: &AppState, job_id: &JobId) -> Result<Self, AppError> {
        let bus = &state.deps.bus;
        Ok(Subscriptions {
            chunks: bus.subscribe(subjects::job_audio(job_id)).await?,
            events: bus.subscribe(subjects::job_events(job_id)).await?,
        })
    }
}

/// Queues a job whose audio will be streamed: subscribed first, so that no piece of the audio
/// goes unseen, and subscribed again to the job an idempotency key names when it is not this one.
pub async fn submit(
    state: &AppState,
    job: tts_contracts::JobMessage,
    format: tts_contracts::AudioFormat,
    key: Option<&str>,
    trace: &tts_contracts::TraceParent,
    count: Option<&crate::limits::DeferredCount>,
) -> Result<(crate::submit::Submitted, Subscriptions), AppError> {
    let mut job = job;
    if let tts_contracts::JobSpec::Synthesize { streamed, .. } = &mut job.spec {
        *streamed = true;
    }
    let mut subscriptions = Subscriptions::open(state, &job.job_id).await?;
    let submitted = crate::submit::submit(
        state,
        job,
        Some(format),
        key,
        crate::submit::Backpressure::Apply,
        trace,
        count,
    )
    .await?;
    if submitted.replayed {
        subscriptions = Subscriptions::open(state, &submitted.job_id).await?;
    }
    Ok((submitted, subscriptions))
}

/// Why a stream ended early. The job itself goes on or has ended; its id reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamError {
    /// The job failed; its record says why.
    Failed { error: String, message: String },
    /// The stream cannot be completed without splicing two attempts' audio.
    Broken(String),
    /// `sync_timeout` ran out; the job goes on.
    Timeout,
    /// The store could not be read.
    Unavailable(String),
}

impl StreamError {
    /// The code and message a client is shown.
    pub fn describe(&self, job_id: &JobId) -> (String, String) {
        match self {
            StreamError::Failed { error, message } => (error.clone(), message.clone()),
            StreamError::Broken(why) => (
                "stream_broken".into(),
                format!("{why}; the whole audio is at /api/jobs/{job_id}/audio once the job ends"),
            ),
            StreamError::Timeout => (
                "timeout".into(),
                format!("the job did not finish in time; it goes on: poll /api/jobs/{job_id}"),
            ),
            StreamError::Unavailable(_) => (
                "service_unavailable".into(),
                "a backing service is unavailable; try again shortly".into(),
            ),
        }
    }
}

/// Follows `job_id`'s audio until the job ends, yielding its rate and then its samples in order.
pub fn follow(
    store: Arc<dyn JobStore>,
    audio: AudioStore,
    job_id: JobId,
    subscriptions: Subscriptions,
    deadline: Instant,
) -> BoxStream<'static, Result<Piece, StreamError>> {
    let follower = Follower {
        store,
        audio,
        job_id,
        subscriptions,
        deadline,
        attempt: None,
        rate: None,
        sent: 0,
        live: true,
        events_open: true,
        chunks_open: true,
        pending: std::collections::VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(follower, |mut f| async move {
        let item = f.next().await?;
        Some((item, f))
    })
    .boxed()
}

struct Follower {
    store: Arc<dyn JobStore>,
    audio: AudioStore,
    job_id: JobId,
    subscriptions: Subscriptions,
    deadline: Instant,
    /// The attempt whose pieces have been forwarded.
    attempt: Option<u32>,
    rate: Option<u32>,
    /// Samples forwarded so far.
    sent: u64,
    /// Whether live pieces are still trusted.
    live: bool,
    events_open: bool,
    chunks_open: bool,
    pending: std::collections::VecDeque<Piece>,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<Piece, StreamError>> {
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.tick().await;
        loop {
            if let Some(piece) = self.pending.pop_front() {
                return Some(Ok(piece));
            }
            if self.done {
                return None;
            }
            // Pieces first: the worker publishes them before the record that ends the job, and
            // one that is already here must count before the end is acted on.
            let look = tokio::select! {
                biased;
                chunk = self.subscriptions.chunks.next(), if self.chunks_open => {
                    match chunk {
                        Some(message) => self.take(&message.payload),
                        None => self.chunks_open = false,
                    }
                    false
                }
                event = self.subscriptions.events.next(), if self.events_open => match event {
                    Some(m) => serde_json::from_slice::<JobEvent>(&m.payload)
                        .is_ok_and(|e| e.status.is_terminal()),
                    None => {
                        self.events_open = false;
                        false
                    }
                },
                _ = poll.tick() => true,
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.done = true;
                    return Some(Err(StreamError::Timeout));
                }
            };
            if look {
                match self.store.get(&self.job_id).await {
                    Ok(Some(record)) if record.status.is_terminal() => {
                        self.done = true;
                        if let Err(e) = self.finish(record).await {
                            return Some(Err(e));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.done = true;
                        return Some(Err(StreamError::Unavailable(e.to_string())));
                    }
                }
            }
        }
    }

    /// Takes one live piece: forwarded when it continues the stream, otherwise the stream turns
    /// to the stored audio.
    fn take(&mut self, payload: &[u8]) {
        if !self.live {
            return;
        }
        let chunk = match AudioChunk::decode(payload) {
            Ok(chunk) if chunk.job_id == self.job_id => chunk,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(job_id = %self.job_id, error = %e, "unreadable audio chunk");
                self.live = false;
                return;
            }
        };
        match self.attempt {
            None if chunk.first_sample == 0 => self.attempt = Some(chunk.attempt),
            // Joined mid-attempt (a replayed request): the stored audio will have it all.
            None => {
                self.live = false;
                return;
            }
            Some(a) if a != chunk.attempt => {
                tracing::info!(job_id = %self.job_id, from = a, to = chunk.attempt, "the job was retried mid-stream");
                self.live = false;
                return;
            }
            Some(_) => {}
        }
        if chunk.end_sample() <= self.sent {
            return;
        }
        if chunk.first_sample != self.sent {
            tracing::info!(job_id = %self.job_id, expected = self.sent, got = chunk.first_sample, "an audio chunk was missed");
            self.live = false;
            return;
        }
        if self.rate.is_none() {
            self.rate = Some(chunk.sample_rate);
            self.pending.push_back(Piece::Rate(chunk.sample_rate));
        }
        self.sent = chunk.end_sample();
        tracing::debug!(job_id = %self.job_id, seq = chunk.seq, samples = chunk.samples.len(), "audio chunk forwarded");
        self.pending.push_back(Piece::Samples(chunk.samples));
    }

    /// The job ended: completes the stream from the stored audio, or says why it cannot.
    async fn finish(&mut self, record: JobRecord) -> Result<(), StreamError> {
        if record.status != JobStatus::Succeeded {
            let failure = record.failure();
            return Err(StreamError::Failed {
                error: failure.error,
                message: failure.message,
            });
        }
        if self.sent > 0 && self.attempt.is_some_and(|a| a != record.attempts) {
            return Err(StreamError::Broken(
                "the job was retried on another worker mid-stream".into(),
            ));
        }
        let key = record
            .audio_key
            .ok_or_else(|| StreamError::Unavailable("no audio key".into()))?;
        let wav = match self.audio.get(&key).await {
            Ok(Some(wav)) => wav,
            Ok(None) => return Err(StreamError::Unavailable("stored audio missing".into())),
            Err(e) => return Err(StreamError::Unavailable(e.to_string())),
        };
        let (rate, samples) =
            read_wav(&wav).map_err(|e| StreamError::Unavailable(format!("stored audio: {e}")))?;
        match self.rate {
            None => self.pending.push_back(Piece::Rate(rate)),
            Some(r) if r != rate => {
                return Err(StreamError::Broken(
                    "the stored audio has another sample rate".into(),
                ));
            }
            Some(_) => {}
        }
        let sent = self.sent as usize;
        if sent > samples.len() {
            return Err(StreamError::Broken(
                "the stored audio is shorter than what was streamed".into(),
            ));
        }
        if sent < samples.len() {
            tracing::debug!(job_id = %self.job_id, from = sent, to = samples.len(), "stream completed from the stored audio");
            self.pending
                .push_back(Piece::Samples(samples[sent..].to_vec()));
        }
        self.sent = samples.len() as u64;
        Ok(())
    }
}

/// The rate and 16-bit samples of a stored WAV.
fn read_wav(bytes: &[u8]) -> Result<(u32, Vec<i16>), hound::Error> {
    let mut reader = hound::WavReader::new(std::io::Cursor::new(bytes))?;
    let rate = reader.spec().sample_rate;
    let samples = reader.samples::<i16>().collect::<Result<Vec<_>, _>>()?;
    Ok((rate, samples))
}

/// How a streamed answer is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The encoded audio itself, chunked.
    Audio,
    /// OpenAI's server-sent events: `speech.audio.delta` with base64 audio, then
    /// `speech.audio.done`.
    Sse,
}

/// Answers with `job_id`'s audio in `format` as it is made. The answer starts once the first
/// audio (or the job's end) is known, so that a job that fails before speaking still gets a
/// plain error status; after that, an error ends an audio body abruptly (the client sees a
/// truncated transfer, never spliced audio) or sends an `error` event.
pub async fn respond(
    state: &AppState,
    job_id: JobId,
    subscriptions: Subscriptions,
    format: tts_contracts::AudioFormat,
    framing: Framing,
) -> Result<axum::response::Response, AppError> {
    use axum::response::IntoResponse;

    let deadline = Instant::now() + state.options.sync_timeout;
    let mut pieces = follow(
        state.deps.store.clone(),
        state.deps.audio.clone(),
        job_id,
        subscriptions,
        deadline,
    );
    let rate = match pieces.next().await {
        Some(Ok(Piece::Rate(rate))) => rate,
        Some(Ok(Piece::Samples(_))) | None => {
            return Err(AppError::internal(format!(
                "the audio stream of job {job_id} began without a sample rate"
            )));
        }
        Some(Err(e)) => return Err(early_error(job_id, e)),
    };
    let encoder = tts_audio::encode::encoder(format, rate)
        .map_err(|e| AppError::internal_from("audio encoder", e))?;
    let body = encoded(pieces, encoder, job_id, framing);
    let content_type = match framing {
        Framing::Audio => format.content_type(),
        Framing::Sse => "text/event-stream",
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

/// An error before any audio, as the plain error response it can still be.
fn early_error(job_id: JobId, error: StreamError) -> AppError {
    match error {
        StreamError::Failed { error, message } => AppError::JobFailed {
            job_id,
            error,
            message,
        },
        StreamError::Timeout => AppError::Timeout(job_id),
        StreamError::Unavailable(why) | StreamError::Broken(why) => {
            AppError::internal(format!("audio stream of job {job_id}: {why}"))
        }
    }
}

type Chunk = Result<bytes::Bytes, std::io::Error>;

/// Samples the encoder takes at a time: a piece is a sentence or more of audio, and a
/// compressed format's first bytes should leave once a fraction of it is encoded, not all of it.
const ENCODE_SLICE: usize = 2048;

/// Cuts the samples of long pieces into [`ENCODE_SLICE`]s; everything else passes as it is.
fn sliced(
    pieces: BoxStream<'static, Result<Piece, StreamError>>,
) -> BoxStream<'static, Result<Piece, StreamError>> {
    pieces
        .flat_map(|item| {
            let items: Vec<Result<Piece, StreamError>> = match item {
                Ok(Piece::Samples(samples)) if samples.len() > ENCODE_SLICE => samples
                    .chunks(ENCODE_SLICE)
                    .map(|slice| Ok(Piece::Samples(slice.to_vec())))
                    .collect(),
                other => vec![other],
            };
            futures::stream::iter(items)
        })
        .boxed()
}

/// The pieces through the encoder, framed.
fn encoded(
    pieces: BoxStream<'static, Result<Piece, StreamError>>,
    encoder: Box<dyn tts_audio::encode::Encoder + Send>,
    job_id: JobId,
    framing: Framing,
) -> BoxStream<'static, Chunk> {
    struct Encoding {
        pieces: BoxStream<'static, Result<Piece, StreamError>>,
        encoder: Option<Box<dyn tts_audio::encode::Encoder + Send>>,
    }
    let frame = move |audio: Vec<u8>| -> bytes::Bytes {
        match framing {
            Framing::Audio => audio.into(),
            Framing::Sse => sse_event(&serde_json::json!({
                "type": "speech.audio.delta",
                "audio": base64_of(&audio),
            })),
        }
    };
    let fail = move |code: String, message: String| -> Chunk {
        match framing {
            Framing::Audio => Err(std::io::Error::other(format!("{code}: {message}"))),
            Framing::Sse => Ok(sse_event(&serde_json::json!({
                "type": "error",
                "error": {"code": code, "message": message},
            }))),
        }
    };
    futures::stream::unfold(
        Encoding {
            pieces: sliced(pieces),
            encoder: Some(encoder),
        },
        move |mut state| async move {
            loop {
                let encoder = state.encoder.as_mut()?;
                match state.pieces.next().await {
                    Some(Ok(Piece::Samples(samples))) => {
                        let floats: Vec<f32> = samples
                            .iter()
                            .map(|s| *s as f32 / i16::MAX as f32)
                            .collect();
                        match encoder.push(&floats) {
                            Ok(audio) if audio.is_empty() => continue,
                            Ok(audio) => return Some((Ok(frame(audio)), state)),
                            Err(e) => {
                                state.encoder = None;
                                return Some((
                                    fail("encoding_failed".into(), e.to_string()),
                                    state,
                                ));
                            }
                        }
                    }
                    Some(Ok(Piece::Rate(_))) => continue,
                    Some(Err(e)) => {
                        state.encoder = None;
                        let (code, message) = e.describe(&job_id);
                        tracing::warn!(%job_id, %code, %message, "audio stream ended early");
                        return Some((fail(code, message), state));
                    }
                    None => {
                        let encoder = state.encoder.take()?;
                        let mut tail = match encoder.finish() {
                            Ok(audio) if audio.is_empty() => bytes::Bytes::new(),
                            Ok(audio) => frame(audio),
                            Err(e) => {
                                return Some((
                                    fail("encoding_failed".into(), e.to_string()),
                                    state,
                                ));
                            }
                        };
                        if framing == Framing::Sse {
                            let done = sse_event(&serde_json::json!({
                                "type": "speech.audio.done",
                                "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                            }));
                            tail = [tail, done].concat().into();
                        }
                        return Some((Ok(tail), state));
                    }
                }
            }
        },
    )
    .boxed()
}

fn sse_event(event: &serde_json::Value) -> bytes::Bytes {
    format!("data: {event}\n\n").into()
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use tts_contracts::{JobAudio, JobMessage, JobSpec};
    use tts_infra::MemoryJobStore;

    use super::*;

    const RATE: u32 = 22050;

    #[tokio::test]
    async fn long_pieces_reach_the_encoder_in_slices_in_order() {
        let pieces = futures::stream::iter(vec![
            Ok(Piece::Rate(RATE)),
            Ok(Piece::Samples((0..5000).map(|i| i as i16).collect())),
            Ok(Piece::Samples(vec![7; 10])),
        ])
        .boxed();
        let out: Vec<Piece> = sliced(pieces).map(Result::unwrap).collect().await;
        let lengths: Vec<usize> = out
            .iter()
            .map(|p| match p {
                Piece::Samples(s) => s.len(),
                Piece::Rate(_) => 0,
            })
            .collect();
        assert_eq!(lengths, [0, 2048, 2048, 904, 10]);
        let samples: Vec<i16> = out
            .into_iter()
            .filter_map(|p| match p {
                Piece::Samples(s) => Some(s),
                Piece::Rate(_) => None,
            })
            .flatten()
            .take(5000)
            .collect();
        assert_eq!(samples, (0..5000).map(|i| i as i16).collect::<Vec<_>>());
    }

    /// A job whose record and stored audio the test controls, and the streams it feeds.
    struct Fixture {
        store: Arc<MemoryJobStore>,
        audio: AudioStore,
        record: JobRecord,
        chunks: futures::channel::mpsc::UnboundedSender<BusMessage>,
        events: futures::channel::mpsc::UnboundedSender<BusMessage>,
        follower: Option<BoxStream<'static, Result<Piece, StreamError>>>,
    }

    async fn fixture() -> Fixture {
        let store = Arc::new(MemoryJobStore::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let job = JobMessage {
            job_id: uuid::Uuid::new_v4(),
            engine: "piper".into(),
            created_at: chrono::Utc::now(),
            tenant: None,
            spec: JobSpec::Synthesize {
                text: "Hello.".into(),
                voice_id: "v".into(),
                language: "en".into(),
                speed: 1.0,
                streamed: false,
            },
        };
        let record = JobRecord::queued(&job);
        store.put(&record).await.unwrap();
        let (chunks, chunk_rx) = futures::channel::mpsc::unbounded();
        let (events, event_rx) = futures::channel::mpsc::unbounded();
        let audio = AudioStore::in_memory();
        let follower = follow(
            store.clone(),
            audio.clone(),
            job.job_id,
            Subscriptions {
                chunks: chunk_rx.boxed(),
                events: event_rx.boxed(),
            },
            Instant::now() + Duration::from_secs(30),
        );
        Fixture {
            store,
            audio,
            record,
            chunks,
            events,
            follower: Some(follower),
        }
    }

    /// The whole audio of attempt `attempt`: a ramp, different per attempt.
    fn audio_of(attempt: u32) -> Vec<i16> {
        (0..300).map(|i| (i * attempt as i32) as i16).collect()
    }

    impl Fixture {
        fn chunk(&self, attempt: u32, seq: u64, range: std::ops::Range<usize>) {
            let chunk = AudioChunk {
                job_id: self.record.job_id,
                attempt,
                seq,
                sample_rate: RATE,
                first_sample: range.start as u64,
                samples: audio_of(attempt)[range].to_vec(),
            };
            let message = BusMessage {
                subject: subjects::job_audio(&self.record.job_id),
                payload: chunk.encode().into(),
            };
            self.chunks.unbounded_send(message).unwrap();
        }

        /// Stores attempt `attempt`'s audio and marks the job succeeded by it.
        async fn succeed(&mut self, attempt: u32) {
            let key = tts_contracts::audio_key(&self.record.job_id);
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: RATE,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut wav = std::io::Cursor::new(Vec::new());
            let mut writer = hound::WavWriter::new(&mut wav, spec).unwrap();
            for s in audio_of(attempt) {
                writer.write_sample(s).unwrap();
            }
            writer.finalize().unwrap();
            self.audio.put(&key, wav.into_inner().into()).await.unwrap();
            assert!(self.record.start(attempt, "node"));
            assert!(self.record.succeed(Some(JobAudio {
                key,
                duration_seconds: 300.0 / RATE as f32,
                sample_rate: RATE,
            })));
            self.store.put(&self.record).await.unwrap();
            self.announce();
        }

        fn announce(&self) {
            let event = self.record.to_event();
            let message = BusMessage {
                subject: subjects::job_events(&self.record.job_id),
                payload: serde_json::to_vec(&event).unwrap().into(),
            };
            self.events.unbounded_send(message).unwrap();
        }

        /// Everything the follower yields until it ends.
        async fn collect(&mut self) -> (Vec<i16>, Option<StreamError>) {
            let mut samples = Vec::new();
            let mut follower = self.follower.take().unwrap();
            while let Some(item) = follower.next().await {
                match item {
                    Ok(Piece::Rate(rate)) => assert_eq!(rate, RATE),
                    Ok(Piece::Samples(s)) => samples.extend(s),
                    Err(e) => return (samples, Some(e)),
                }
            }
            (samples, None)
        }
    }

    #[tokio::test]
    async fn pieces_in_order_are_the_stored_audio() {
        let mut f = fixture().await;
        f.chunk(1, 0, 0..100);
        f.chunk(1, 1, 100..300);
        f.succeed(1).await;
        assert_eq!(f.collect().await, (audio_of(1), None));
    }

    #[tokio::test]
    async fn a_missed_piece_is_made_up_from_the_stored_audio() {
        let mut f = fixture().await;
        f.chunk(1, 0, 0..100);
        f.chunk(1, 2, 200..300);
        f.succeed(1).await;
        assert_eq!(f.collect().await, (audio_of(1), None));
    }

    #[tokio::test]
    async fn a_missed_tail_is_made_up_from_the_stored_audio() {
        let mut f = fixture().await;
        f.chunk(1, 0, 0..100);
        f.succeed(1).await;
        assert_eq!(f.collect().await, (audio_of(1), None));
    }

    #[tokio::test]
    async fn no_pieces_at_all_still_give_the_whole_audio() {
        let mut f = fixture().await;
        f.succeed(1).await;
        assert_eq!(f.collect().await, (audio_of(1), None));
    }

    #[tokio::test]
    async fn a_retry_mid_stream_ends_it_with_an_error_never_splices() {
        let mut f = fixture().await;
        f.chunk(1, 0, 0..100);
        f.chunk(2, 0, 0..100);
        f.chunk(2, 1, 100..300);
        f.succeed(2).await;
        let (samples, error) = f.collect().await;
        assert_eq!(samples, audio_of(1)[..100]);
        assert!(matches!(error, Some(StreamError::Broken(_))), "{error:?}");
    }

    #[tokio::test]
    async fn a_failed_job_ends_the_stream_with_its_failure() {
        let mut f = fixture().await;
        f.chunk(1, 0, 0..100);
        assert!(f.record.start(1, "node"));
        assert!(f.record.fail("engine_error", "the model failed"));
        f.store.put(&f.record).await.unwrap();
        f.announce();
        let (samples, error) = f.collect().await;
        assert_eq!(samples, audio_of(1)[..100]);
        assert_eq!(
            error,
            Some(StreamError::Failed {
                error: "engine_error".into(),
                message: "the model failed".into()
            })
        );
    }
}
