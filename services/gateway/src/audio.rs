//! Audio on the way out: the requested format, checked, and the stored WAV converted to it.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tts_audio::encode;
use tts_contracts::{AudioFormat, JobId};

use crate::error::AppError;

/// The format a client named, or `422 unsupported_format` listing the formats on offer: for a
/// name that is no format at all and for one this build cannot encode (AAC) alike.
pub fn parse_format(name: &str) -> Result<AudioFormat, AppError> {
    match AudioFormat::parse(name) {
        Some(format) if encode::is_offered(format) => Ok(format),
        _ => Err(AppError::unprocessable(
            "unsupported_format",
            format!(
                "format {name:?} is not available; formats on offer: {}",
                encode::offered_names()
            ),
        )),
    }
}

/// The response for a job's stored WAV in `format`, with its content type and a file name.
/// WAV goes out as stored; other formats are decoded and encoded on a blocking thread, since
/// encoding a long clip takes long enough to hold up other requests on this runtime.
pub async fn respond(job_id: JobId, wav: Bytes, format: AudioFormat) -> Result<Response, AppError> {
    let body = if format == AudioFormat::Wav {
        wav
    } else {
        tokio::task::spawn_blocking(move || convert(&wav, format))
            .await
            .map_err(|e| AppError::internal_from("the encoding task failed", e))??
            .into()
    };
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    let disposition = format!("inline; filename=\"{job_id}.{}\"", format.extension());
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).expect("a uuid and an extension are a valid header"),
    );
    Ok(response)
}

/// Decodes stored 16-bit WAV and encodes it as `format`.
fn convert(wav: &[u8], format: AudioFormat) -> Result<Vec<u8>, AppError> {
    let reader = hound::WavReader::new(wav)
        .map_err(|e| AppError::internal_from("the stored audio is not readable WAV", e))?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    let samples: Vec<i32> = reader
        .into_samples::<i32>()
        .collect::<Result<_, _>>()
        .map_err(|e| AppError::internal_from("the stored audio is not readable WAV", e))?;
    let scale = (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
    // Workers store mono; a stored file with more channels is mixed down rather than refused.
    let mono: Vec<f32> = samples
        .chunks(channels)
        .map(|frame| frame.iter().map(|s| *s as f32 / scale).sum::<f32>() / channels as f32)
        .collect();
    encode::encode(&mono, spec.sample_rate, format)
        .map_err(|e| AppError::internal_from(format!("encoding the audio as {format}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_unavailable_formats_name_the_formats_on_offer() {
        assert_eq!(parse_format("MP3").unwrap(), AudioFormat::Mp3);
        for name in ["aac", "ogg", "", "bogus"] {
            let AppError::Client {
                status,
                code,
                message,
            } = parse_format(name).unwrap_err()
            else {
                panic!("{name}: not a client error");
            };
            assert_eq!(status, 422);
            assert_eq!(code, "unsupported_format");
            assert!(
                message.ends_with("formats on offer: wav, pcm, mp3, opus, flac"),
                "{message}"
            );
        }
    }

    #[test]
    fn stored_wav_converts_to_every_offered_format() {
        let rate = 24_000;
        let tone: Vec<f32> = (0..rate).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
        let wav = encode::encode(&tone, rate, AudioFormat::Wav).unwrap();
        for format in encode::OFFERED {
            let bytes = convert(&wav, format).unwrap();
            match format {
                AudioFormat::Pcm => assert_eq!(bytes.len(), rate as usize * 2),
                AudioFormat::Flac => assert_eq!(&bytes[..4], b"fLaC"),
                AudioFormat::Opus => assert_eq!(&bytes[..4], b"OggS"),
                AudioFormat::Wav => assert_eq!(&bytes[..4], b"RIFF"),
                _ => assert!(bytes.len() > 1000, "{format}"),
            }
        }
    }
}
