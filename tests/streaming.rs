//! Streaming through the queue: a distributed worker publishes a synthesis job's audio on
//! `tts.audio.<job_id>` as the engine makes it, and what it publishes is, sample for sample, the
//! audio it stores.

use std::io::Cursor;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tts_contracts::chunk::AudioChunk;
use tts_contracts::subjects;
use tts_tests::app::VOICE;
use tts_tests::{Deployment, spawn_app};

/// Four sentences, so that the audio comes in four pieces.
const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog. It was a sunny day, and \
                         the birds were singing in the trees. Nobody expected the storm that \
                         came in the afternoon! Would the fox find shelter before the rain?";

#[tokio::test]
async fn a_jobs_audio_is_published_in_order_and_equals_the_stored_wav() {
    let app = spawn_app(Deployment::Distributed).await;
    let nats = app
        .nats
        .as_ref()
        .expect("a distributed deployment has NATS");
    let client = async_nats::connect(nats.url())
        .await
        .expect("NATS connects");
    // The job's id is known only once it is queued, so the test listens to every job's audio
    // from before it submits.
    let mut audio = client
        .subscribe(subjects::job_audio(&"*"))
        .await
        .expect("subscribed");
    client
        .flush()
        .await
        .expect("the subscription is registered");

    let submitted = Instant::now();
    let response = app
        .submit(&json!({"text": PARAGRAPH, "voice_id": VOICE}), None)
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let job_id: uuid::Uuid = accepted["job_id"].as_str().unwrap().parse().unwrap();

    let job = app
        .wait_for_job(&job_id.to_string(), Duration::from_secs(120))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let wav = app.audio(&job_id.to_string()).await;
    assert_eq!(wav.status(), 200);
    let mut reader = hound::WavReader::new(Cursor::new(wav.bytes().await.unwrap())).unwrap();
    let rate = reader.spec().sample_rate;
    let stored: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();

    // The chunks went out before the record said succeeded, but may still be on their way to
    // this subscriber: it reads until they add up to the stored audio.
    let mut chunks: Vec<AudioChunk> = Vec::new();
    let mut first_chunk_after = None;
    let collect = async {
        while chunks.iter().map(|c| c.samples.len()).sum::<usize>() < stored.len() {
            let message = audio.next().await.expect("the subscription stays open");
            let chunk = AudioChunk::decode(&message.payload).expect("a chunk");
            if chunk.job_id == job_id {
                first_chunk_after.get_or_insert(submitted.elapsed());
                assert_eq!(message.subject.as_str(), subjects::job_audio(&job_id));
                chunks.push(chunk);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("the chunks add up to the stored audio");
    eprintln!(
        "{} chunks; the first arrived {:?} after the submit",
        chunks.len(),
        first_chunk_after.unwrap()
    );

    // One chunk a sentence, numbered from 0 and laid end to end, all from the first attempt.
    assert_eq!(chunks.len(), 4, "one chunk per sentence");
    let mut next_sample = 0;
    for (seq, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.seq, seq as u64);
        assert_eq!(chunk.attempt, 1);
        assert_eq!(chunk.sample_rate, rate);
        assert_eq!(chunk.first_sample, next_sample);
        assert!(!chunk.samples.is_empty());
        next_sample = chunk.end_sample();
    }
    let streamed: Vec<i16> = chunks.iter().flat_map(|c| c.samples.clone()).collect();
    assert_eq!(streamed.len(), stored.len());
    assert!(
        streamed == stored,
        "the streamed samples differ from the stored ones"
    );
}
