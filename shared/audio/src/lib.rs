//! Decoding uploaded reference clips.
//!
//! A clip is judged by its content, never by its file name: the container is probed from the
//! bytes (WAV or MP3), decoded whole, and mixed down to mono. Anything that does not decode to
//! the end (random bytes, a truncated file) is refused with a reason a client can act on.
//! This crate does not use ONNX Runtime, so the gateway can check uploads itself.

pub mod encode;
pub mod resample;

use std::io::Cursor;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// A decoded clip: mono samples in [-1, 1] at the clip's own rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    /// The container the bytes turned out to be: `wav` or `mp3`.
    pub format: &'static str,
}

impl Clip {
    pub fn duration_seconds(&self) -> f32 {
        self.samples.len() as f32 / self.sample_rate.max(1) as f32
    }

    /// Root-mean-square level, 0 for digital silence.
    pub fn rms(&self) -> f32 {
        let energy: f64 = self.samples.iter().map(|s| (*s as f64).powi(2)).sum();
        (energy / self.samples.len().max(1) as f64).sqrt() as f32
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes are not audio in a supported container.
    #[error("the file is not WAV or MP3 audio")]
    NotAudio,
    /// The container is known but its audio cannot be decoded (an unsupported codec inside).
    #[error("the audio cannot be decoded: {0}")]
    Unsupported(String),
    /// The audio stops before the container says it ends, or is corrupt part-way.
    #[error("the audio is truncated or corrupt: {0}")]
    Corrupt(String),
    /// Decoded, but there is no sound in it at all.
    #[error("the file holds no audio samples")]
    Empty,
    /// Longer than the caller accepts; decoding stopped there.
    #[error("the audio is longer than {0} s")]
    TooLong(u32),
}

/// The longest clip [`decode`] accepts. A reference needs at most 30 s of speech; ten minutes
/// leaves room for pauses while bounding the memory a small, highly compressed file can claim.
pub const MAX_CLIP_SECONDS: u32 = 600;

/// The highest sample rate accepted, far above anything recorded for speech or produced by a
/// TTS model; it bounds the resampler's buffers, and the encoders take nothing higher.
pub const MAX_SAMPLE_RATE: u32 = 384_000;

/// The most channels a WAV file may have: the speaker positions WAVE names. symphonia's WAV
/// reader multiplies the count by the sample size in 16 bits, which overflows (a panic where
/// overflow checks are on) for counts in the thousands, before it refuses them itself.
const MAX_CHANNELS: u16 = 18;

/// The speaker positions a WAVE_FORMAT_EXTENSIBLE channel mask may name: one bit each for the
/// 18 that WAVE defines. symphonia refuses a mask with any other bit, but only after padding a
/// mask with too few bits for the channel count, which shifts past 32 bits (a panic where
/// overflow checks are on) when bit 31 is set.
const NAMED_SPEAKERS: u32 = (1 << MAX_CHANNELS) - 1;

/// The format tag of a `fmt ` chunk that carries a channel mask.
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Refuses what symphonia's WAV reader cannot parse without overflowing. The reader is found by
/// a scan for its marker anywhere in the first bytes (after an ID3 tag, for one), so every
/// RIFF/WAVE header in the bytes is checked, not only one at the start.
fn check_wav_headers(bytes: &[u8]) -> Result<(), DecodeError> {
    let riffs = bytes
        .windows(12)
        .enumerate()
        .filter(|(_, w)| &w[0..4] == b"RIFF" && &w[8..12] == b"WAVE");
    for (at, _) in riffs {
        let Some(fmt) = fmt_chunk(&bytes[at..]) else {
            continue;
        };
        let field = |from: usize| {
            fmt.get(from..from + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        let channels = field(2).unwrap_or(0);
        if channels > MAX_CHANNELS {
            return Err(DecodeError::Unsupported(format!(
                "{channels} channels (at most {MAX_CHANNELS})"
            )));
        }
        if field(0) == Some(WAVE_FORMAT_EXTENSIBLE)
            && let Some(mask) = fmt.get(20..24)
            && u32::from_le_bytes([mask[0], mask[1], mask[2], mask[3]]) & !NAMED_SPEAKERS != 0
        {
            return Err(DecodeError::Unsupported(
                "a channel mask naming speakers WAVE does not have".into(),
            ));
        }
    }
    Ok(())
}

/// The body of the `fmt ` chunk of the RIFF/WAVE file `bytes` starts with, as far as the bytes
/// hold it.
fn fmt_chunk(bytes: &[u8]) -> Option<&[u8]> {
    let mut at = 12usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body = at + 8;
        if &header[0..4] == b"fmt " {
            return Some(&bytes[body..body.saturating_add(size).min(bytes.len())]);
        }
        // Chunks are padded to an even size.
        at = body.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// Decodes WAV or MP3 bytes to mono, up to [`MAX_CLIP_SECONDS`].
pub fn decode(bytes: &[u8]) -> Result<Clip, DecodeError> {
    decode_at_most(bytes, MAX_CLIP_SECONDS)
}

/// Decodes WAV or MP3 bytes to mono, refusing clips over `max_seconds`.
///
/// The bytes are an upload, so anyone's. symphonia's readers do arithmetic on the headers'
/// numbers that overflows for some hostile ones: a panic where overflow checks are on (tests,
/// fuzzing), a wrapped number in release builds, which they go on to refuse. The known cases
/// are refused before symphonia sees them, with a clear reason; any other panic in decoding is
/// caught here and the file refused as corrupt, so that an upload can never take down the
/// request or the worker that decodes it.
pub fn decode_at_most(bytes: &[u8], max_seconds: u32) -> Result<Clip, DecodeError> {
    check_wav_headers(bytes)?;
    std::panic::catch_unwind(|| decode_unguarded(bytes, max_seconds)).unwrap_or_else(|_| {
        Err(DecodeError::Corrupt(
            "the decoder could not make sense of the file's headers".into(),
        ))
    })
}

fn decode_unguarded(bytes: &[u8], max_seconds: u32) -> Result<Clip, DecodeError> {
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|_| DecodeError::NotAudio)?;
    let container = match format.format_info().short_name {
        "wave" | "wav" | "riff" => "wav",
        "mp3" | "mpa" => "mp3",
        other => {
            return Err(DecodeError::Unsupported(format!(
                "{other} files are not accepted"
            )));
        }
    };
    let track = format
        .default_track(TrackType::Audio)
        .ok_or(DecodeError::NotAudio)?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(DecodeError::NotAudio)?
        .clone();
    let expected_frames = track.num_frames;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| DecodeError::Unsupported(e.to_string()))?;

    let mut samples = Vec::new();
    let mut interleaved: Vec<f32> = Vec::new();
    let mut sample_rate = params.sample_rate.unwrap_or(0);
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // The reader hit the end of the bytes inside a packet.
            Err(SymphoniaError::IoError(e)) => return Err(DecodeError::Corrupt(e.to_string())),
            Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buffer = match decoder.decode(&packet) {
            Ok(buffer) => buffer,
            Err(SymphoniaError::DecodeError(e)) => {
                return Err(DecodeError::Corrupt(e.to_string()));
            }
            Err(e) => return Err(DecodeError::Corrupt(e.to_string())),
        };
        let channels = buffer.spec().channels().count().max(1);
        sample_rate = buffer.spec().rate();
        // A WAV header may state any rate; audio at one no resampler or encoder here takes
        // would be accepted now only to fail in the worker.
        if sample_rate > MAX_SAMPLE_RATE {
            return Err(DecodeError::Unsupported(format!(
                "a sample rate of {sample_rate} Hz is over {MAX_SAMPLE_RATE} Hz"
            )));
        }
        buffer.copy_to_vec_interleaved(&mut interleaved);
        for frame in interleaved.chunks(channels) {
            let sample = frame.iter().sum::<f32>() / channels as f32;
            // Integer PCM and MP3 decode into [-1, 1], but a float WAV holds whatever its writer
            // put there: NaN would poison every level and model downstream, and values past
            // full scale are clipped as any 16-bit copy of them would be.
            if !sample.is_finite() {
                return Err(DecodeError::Corrupt(
                    "the audio holds samples that are not numbers".into(),
                ));
            }
            samples.push(sample.clamp(-1.0, 1.0));
        }
        if samples.len() as u64 > max_seconds as u64 * sample_rate.max(1) as u64 {
            return Err(DecodeError::TooLong(max_seconds));
        }
    }
    // A WAV header states its length; fewer frames than stated means the upload was cut off.
    if container == "wav"
        && let Some(expected) = expected_frames
        && (samples.len() as u64) < expected
    {
        return Err(DecodeError::Corrupt(format!(
            "the header promises {expected} frames, the file holds {}",
            samples.len()
        )));
    }
    if samples.is_empty() || sample_rate == 0 {
        return Err(DecodeError::Empty);
    }
    Ok(Clip {
        samples,
        sample_rate,
        format: container,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_over_the_limit_are_refused_while_decoding() {
        let bytes = wav(16_000 * 3, 1, 16_000);
        assert_eq!(decode_at_most(&bytes, 2), Err(DecodeError::TooLong(2)));
        assert!(decode_at_most(&bytes, 4).is_ok());
    }

    /// A 16-bit WAV file of `frames` frames of a tone, with `channels` channels.
    fn wav(frames: usize, channels: u16, rate: u32) -> Vec<u8> {
        let data_len = frames * channels as usize * 2;
        let mut out = Vec::new();
        out.extend(b"RIFF");
        out.extend(((36 + data_len) as u32).to_le_bytes());
        out.extend(b"WAVEfmt ");
        out.extend(16u32.to_le_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(channels.to_le_bytes());
        out.extend(rate.to_le_bytes());
        out.extend((rate * channels as u32 * 2).to_le_bytes());
        out.extend((channels * 2).to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend(b"data");
        out.extend((data_len as u32).to_le_bytes());
        for i in 0..frames {
            let v = ((i as f32 * 0.05).sin() * 10_000.0) as i16;
            for _ in 0..channels {
                out.extend(v.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn stereo_wav_is_mixed_to_mono() {
        let clip = decode(&wav(8000, 2, 8000)).unwrap();
        assert_eq!(clip.format, "wav");
        assert_eq!(clip.sample_rate, 8000);
        assert_eq!(clip.samples.len(), 8000);
        assert!((clip.duration_seconds() - 1.0).abs() < 1e-3);
        assert!(clip.rms() > 0.1);
    }

    #[test]
    fn random_bytes_are_not_audio() {
        let bytes: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(decode(&bytes), Err(DecodeError::NotAudio));
        assert_eq!(decode(b""), Err(DecodeError::NotAudio));
    }

    #[test]
    fn a_truncated_wav_is_refused() {
        let mut bytes = wav(16000, 1, 16000);
        bytes.truncate(bytes.len() / 2);
        assert!(
            matches!(decode(&bytes), Err(DecodeError::Corrupt(_))),
            "{:?}",
            decode(&bytes).map(|c| c.samples.len())
        );
    }

    /// A 32-bit float WAV file holding `samples`, mono at 8 kHz.
    fn float_wav(samples: &[f32]) -> Vec<u8> {
        let data_len = samples.len() * 4;
        let mut out = Vec::new();
        out.extend(b"RIFF");
        out.extend(((36 + data_len) as u32).to_le_bytes());
        out.extend(b"WAVEfmt ");
        out.extend(16u32.to_le_bytes());
        out.extend(3u16.to_le_bytes());
        out.extend(1u16.to_le_bytes());
        out.extend(8000u32.to_le_bytes());
        out.extend((8000u32 * 4).to_le_bytes());
        out.extend(4u16.to_le_bytes());
        out.extend(32u16.to_le_bytes());
        out.extend(b"data");
        out.extend((data_len as u32).to_le_bytes());
        for s in samples {
            out.extend(s.to_le_bytes());
        }
        out
    }

    #[test]
    fn float_samples_past_full_scale_are_clipped() {
        // Found by the audio_decode fuzz target: a float WAV's samples reached the caller as
        // they were, -6e23 among them.
        let clip = decode(&float_wav(&[0.5, 3.0, -6.0e23, -0.25])).unwrap();
        assert_eq!(clip.samples, vec![0.5, 1.0, -1.0, -0.25]);
    }

    #[test]
    fn float_samples_that_are_not_numbers_are_refused() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(
                matches!(
                    decode(&float_wav(&[0.1, bad, 0.1])),
                    Err(DecodeError::Corrupt(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn sample_rates_no_encoder_takes_are_refused() {
        // Found by the audio_decode fuzz target: a WAV header stating 352 MHz decoded, and the
        // clip could then not be encoded or resampled.
        let bytes = wav(100, 1, 352_329_536);
        assert!(
            matches!(decode(&bytes), Err(DecodeError::Unsupported(_))),
            "{:?}",
            decode(&bytes).map(|c| c.sample_rate)
        );
        assert_eq!(
            decode(&wav(100, 1, MAX_SAMPLE_RATE)).unwrap().sample_rate,
            MAX_SAMPLE_RATE
        );
    }

    #[test]
    fn a_wav_stating_thousands_of_channels_is_refused() {
        // Found by the audio_decode fuzz target: 65 534 channels of 32-bit samples overflowed
        // a multiplication in the WAV reader, a panic in builds with overflow checks.
        let mut bytes = wav(10, 1, 8000);
        bytes[22..24].copy_from_slice(&65_534u16.to_le_bytes());
        bytes[34..36].copy_from_slice(&32u16.to_le_bytes());
        assert!(
            matches!(decode(&bytes), Err(DecodeError::Unsupported(_))),
            "{:?}",
            decode(&bytes).map(|c| c.sample_rate)
        );
        assert_eq!(decode(&wav(10, 2, 8000)).unwrap().samples.len(), 10);
    }

    /// A WAVE_FORMAT_EXTENSIBLE version of `wav`'s file with the channel mask `mask`.
    fn extensible_wav(frames: usize, channels: u16, mask: u32) -> Vec<u8> {
        let plain = wav(frames, channels, 8000);
        let mut out = Vec::new();
        out.extend(b"RIFF");
        out.extend(((plain.len() - 8 + 24) as u32).to_le_bytes());
        out.extend(b"WAVEfmt ");
        out.extend(40u32.to_le_bytes());
        out.extend(WAVE_FORMAT_EXTENSIBLE.to_le_bytes());
        // Channels, rate, byte rate, block align and bits as the plain file states them.
        out.extend(&plain[22..36]);
        out.extend(22u16.to_le_bytes());
        out.extend(16u16.to_le_bytes());
        out.extend(mask.to_le_bytes());
        // KSDATAFORMAT_SUBTYPE_PCM.
        out.extend([
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38,
            0x9b, 0x71,
        ]);
        out.extend(&plain[36..]);
        out
    }

    #[test]
    fn a_channel_mask_naming_unknown_speakers_is_refused_wherever_the_wav_starts() {
        // Found by the audio_decode fuzz target: an ID3 tag, then an extensible WAV whose mask
        // had bit 31 set and fewer bits than channels; padding the mask shifted past 32 bits in
        // the WAV reader, a panic in builds with overflow checks.
        assert_eq!(
            decode(&extensible_wav(10, 2, 0b11)).unwrap().samples.len(),
            10
        );
        let odd = extensible_wav(10, 2, 1 << 31);
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
        tagged.extend(&odd);
        for bytes in [odd, tagged] {
            assert!(
                matches!(decode(&bytes), Err(DecodeError::Unsupported(_))),
                "{:?}",
                decode(&bytes).map(|c| c.sample_rate)
            );
        }
        // More channels than WAVE names speakers, after a tag too.
        let mut many = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
        many.extend(extensible_wav(10, 19, 0));
        assert!(matches!(decode(&many), Err(DecodeError::Unsupported(_))));
    }

    #[test]
    fn a_wav_whose_headers_make_the_reader_panic_is_refused_as_corrupt() {
        // Found by the audio_decode fuzz target: a second `fmt ` chunk stating 65 529 channels
        // overflows a multiplication in the WAV reader (in builds with overflow checks, such as
        // this test's), which the decoder's guard turns into a refusal.
        let plain = wav(10, 1, 8000);
        let mut second = plain[12..36].to_vec();
        second[10..12].copy_from_slice(&65_529u16.to_le_bytes());
        let mut bytes = plain[..36].to_vec();
        bytes.extend(&second);
        bytes.extend(&plain[36..]);
        let riff_len = (bytes.len() - 8) as u32;
        bytes[4..8].copy_from_slice(&riff_len.to_le_bytes());
        assert!(
            matches!(decode(&bytes), Err(DecodeError::Corrupt(_))),
            "{:?}",
            decode(&bytes).map(|c| c.sample_rate)
        );
    }

    #[test]
    fn a_wav_with_no_frames_is_empty() {
        assert_eq!(decode(&wav(0, 1, 16000)), Err(DecodeError::Empty));
    }
}
