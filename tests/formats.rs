//! Audio formats end to end, in both deployments: synthesis and stored jobs answered in WAV,
//! PCM, MP3, Opus and FLAC, each checked by ffmpeg's decoders, and formats that are not on offer
//! refused with JSON before any job is made.

use std::time::Duration;

use serde_json::{Value, json};
use tts_tests::TestApp;
use tts_tests::app::VOICE;

tts_tests::in_both_deployments!(
    formats_not_on_offer_are_refused_and_make_no_job,
    jobs_and_synthesis_answer_in_the_requested_format,
);

const ON_OFFER: &str = "formats on offer: wav, pcm, mp3, opus, flac";

async fn assert_unsupported_format(response: reqwest::Response) {
    assert_eq!(response.status(), 422);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_format", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains(ON_OFFER),
        "{body}"
    );
}

async fn formats_not_on_offer_are_refused_and_make_no_job(app: TestApp) {
    for format in ["aac", "ogg", "", "MP4"] {
        let body = json!({"text": "Hello there.", "voice_id": VOICE, "format": format});
        assert_unsupported_format(app.synthesize(&body).await).await;
        assert_unsupported_format(app.submit(&body, None).await).await;
    }
    // The query is checked before the job is looked up: a bad format is a 422 even for a job
    // that does not exist.
    let missing = uuid::Uuid::new_v4();
    for query in ["format=bogus", "format=aac"] {
        let response = app
            .client
            .get(app.url(&format!("/api/jobs/{missing}/audio?{query}")))
            .send()
            .await
            .unwrap();
        assert_unsupported_format(response).await;
    }
    // None of those made a job.
    app.assert_no_job_made().await;
}

async fn jobs_and_synthesis_answer_in_the_requested_format(app: TestApp) {
    let text = "Formats are checked by another decoder. This is the second sentence.";
    let accepted: Value = app
        .submit(
            &json!({"text": text, "voice_id": VOICE, "format": "opus"}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_string();
    let job = app.wait_for_job(&job_id, Duration::from_secs(120)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["format"], "opus", "{job}");
    let seconds = job["duration_seconds"].as_f64().unwrap() as f32;
    assert!(seconds > 1.0, "{job}");

    // Without a query the job's own format; with one, any format on offer.
    let stored = app.audio(&job_id).await;
    check(stored, "opus", &job_id, seconds).await;
    for format in ["wav", "pcm", "mp3", "opus", "flac"] {
        let response = app
            .client
            .get(app.url(&format!("/api/jobs/{job_id}/audio?format={format}")))
            .send()
            .await
            .unwrap();
        check(response, format, &job_id, seconds).await;
    }
    let bogus = app
        .client
        .get(app.url(&format!("/api/jobs/{job_id}/audio?format=bogus")))
        .send()
        .await
        .unwrap();
    assert_unsupported_format(bogus).await;

    for format in ["mp3", "flac", "pcm"] {
        let response = app
            .synthesize(&json!({"text": "A short answer.", "voice_id": VOICE, "format": format}))
            .await;
        assert_eq!(response.status(), 200, "{format}");
        let job_id = response.headers()["x-job-id"].to_str().unwrap().to_string();
        let job = app.job(&job_id).await;
        assert_eq!(job["format"], format, "{job}");
        let seconds = job["duration_seconds"].as_f64().unwrap() as f32;
        check(response, format, &job_id, seconds).await;
    }
}

/// Checks an audio response: its headers, then what ffmpeg decodes from its body.
async fn check(response: reqwest::Response, format: &str, job_id: &str, seconds: f32) {
    assert_eq!(response.status(), 200, "{format}");
    let (content_type, extension) = match format {
        "wav" => ("audio/wav", "wav"),
        "pcm" => ("audio/pcm", "pcm"),
        "mp3" => ("audio/mpeg", "mp3"),
        "opus" => ("audio/ogg", "ogg"),
        "flac" => ("audio/flac", "flac"),
        other => panic!("no expectations for {other}"),
    };
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], content_type, "{format}");
    assert_eq!(
        headers["content-disposition"],
        format!("inline; filename=\"{job_id}.{extension}\""),
    );
    let bytes = response.bytes().await.unwrap();
    let decoded = tts_tests::ffmpeg::decode(&bytes, format == "pcm");
    let (codec, rate) = match format {
        "pcm" | "wav" => ("pcm_s16le", None),
        "mp3" => ("mp3", None),
        "opus" => ("opus", Some(48_000)),
        _ => ("flac", None),
    };
    assert_eq!(decoded.codec, codec, "{format}");
    assert_eq!(decoded.channels, 1, "{format}");
    if format == "pcm" {
        assert_eq!(
            decoded.rate, 24_000,
            "pcm is 24 kHz whatever the engine's rate"
        );
    }
    if let Some(rate) = rate {
        assert_eq!(decoded.rate, rate, "{format}");
    }
    // MP3 carries LAME's delay and padding, up to about a tenth of a second more.
    let tolerance = if format == "mp3" { 0.12 } else { 0.01 };
    let decoded_seconds = decoded.samples as f32 / decoded.rate as f32;
    assert!(
        (decoded_seconds - seconds).abs() <= tolerance,
        "{format}: decoded {decoded_seconds} s, the job made {seconds} s"
    );
    assert!(decoded.rms > 0.005, "{format}: silent ({})", decoded.rms);
}
