//! Uploaded reference clips: `tts_audio::decode_at_most` on arbitrary bytes (WAV or MP3, judged
//! by the bytes). It must refuse or decode without panicking, within the time and memory its
//! limit allows, and a clip it returns must be what `Clip` promises: mono samples in [-1, 1]
//! at a real rate, no longer than the limit, that survive a 16-bit WAV round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tts_audio::{DecodeError, decode_at_most};
use tts_contracts::AudioFormat;

/// Small, so that each run stays fast; the limit's logic is the same at ten minutes.
const MAX_SECONDS: u32 = 5;

fuzz_target!(
    init: {
        // A panic is a crash (libfuzzer-sys's hook aborts), except one raised inside symphonia:
        // its readers overflow on some hostile headers where overflow checks are on, as here,
        // and the decoder catches that and refuses the file. Those are let through to its guard;
        // a panic in the service's own code, or past the guard, still aborts.
        let aborting = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_symphonia = info
                .location()
                .is_some_and(|at| at.file().contains("/symphonia-"));
            if !in_symphonia {
                aborting(info);
            }
        }));
    },
    |bytes: &[u8]| {
    let clip = match decode_at_most(bytes, MAX_SECONDS) {
        Ok(clip) => clip,
        Err(DecodeError::TooLong(limit)) => {
            assert_eq!(limit, MAX_SECONDS);
            return;
        }
        Err(_) => return,
    };
    assert!(!clip.samples.is_empty());
    assert!(clip.sample_rate > 0);
    assert!(matches!(clip.format, "wav" | "mp3"), "{}", clip.format);
    assert!(
        clip.samples.len() as u64 <= MAX_SECONDS as u64 * clip.sample_rate as u64,
        "{} samples at {} Hz is over {MAX_SECONDS} s",
        clip.samples.len(),
        clip.sample_rate
    );
    assert!(clip.duration_seconds() <= MAX_SECONDS as f32 + 1e-3);
    if let Some((i, s)) = clip
        .samples
        .iter()
        .enumerate()
        .find(|(_, s)| !s.is_finite() || s.abs() > 1.0)
    {
        panic!("sample {i} is {s}, outside [-1, 1]");
    }
    assert!(clip.rms().is_finite());

    // What the gateway accepted, the worker reads back: the same length and rate.
    let wav = tts_audio::encode::encode(&clip.samples, clip.sample_rate, AudioFormat::Wav)
        .expect("a decoded clip encodes as WAV");
    let again = decode_at_most(&wav, MAX_SECONDS + 1).expect("an encoded clip decodes");
    assert_eq!(again.format, "wav");
    assert_eq!(again.sample_rate, clip.sample_rate);
    assert_eq!(again.samples.len(), clip.samples.len());
    for (a, b) in clip.samples.iter().zip(&again.samples) {
        assert!((a - b).abs() <= 2.0 / 32768.0, "{a} became {b}");
    }
});
