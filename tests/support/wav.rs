//! Checks on WAV bytes the service returns.

use std::io::Cursor;

#[derive(Debug)]
pub struct WavSummary {
    pub sample_rate: u32,
    pub channels: u16,
    pub bits_per_sample: u16,
    pub duration_secs: f32,
    pub rms: f32,
}

pub fn summarise(bytes: &[u8]) -> WavSummary {
    let mut reader = hound::WavReader::new(Cursor::new(bytes)).expect("a valid WAV file");
    let spec = reader.spec();
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .map(|s| s.expect("a readable sample"))
        .collect();
    let energy: f64 = samples
        .iter()
        .map(|&s| (s as f64 / i16::MAX as f64).powi(2))
        .sum();
    WavSummary {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        bits_per_sample: spec.bits_per_sample,
        duration_secs: samples.len() as f32 / spec.sample_rate as f32,
        rms: (energy / samples.len().max(1) as f64).sqrt() as f32,
    }
}

/// Asserts the audio is what the Piper voice gives: 22050 Hz mono 16-bit, audible, and of a
/// duration plausible for `words` words of English (between 0.15 and 1.2 s a word).
pub fn assert_plausible_speech(bytes: &[u8], words: usize) {
    let s = summarise(bytes);
    assert_eq!(s.sample_rate, 22050, "{s:?}");
    assert_eq!(s.channels, 1, "{s:?}");
    assert_eq!(s.bits_per_sample, 16, "{s:?}");
    let (min, max) = (0.15 * words as f32, 1.2 * words as f32 + 0.5);
    assert!(
        (min..=max).contains(&s.duration_secs),
        "{words} words gave {:.2} s of audio: {s:?}",
        s.duration_secs
    );
    assert!(s.rms > 0.01, "the audio is (nearly) silent: {s:?}");
}
