//! Reference clips for cloning tests, spoken by the Piper voice: a speaker Kokoro has never seen.

use tts_worker::engine::{Engine, SynthesisInput};

use crate::engines;

pub const FIRST: &str =
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.";
pub const SECOND: &str = "Yesterday we walked along the river and counted the boats drifting by.";
pub const THIRD: &str = "My grandmother kept a small notebook of recipes in the kitchen drawer.";

/// Piper's speech of `text`: mono samples at its own rate (22050 Hz).
pub fn speech(text: &str) -> (Vec<f32>, u32) {
    let input = SynthesisInput {
        text: text.into(),
        voice_id: "en_US-joe-medium".into(),
        language: "en".into(),
        speed: 1.0,
        streamed: false,
        voice: None,
        cancel: Default::default(),
        reference_wav: None,
    };
    let audio = engines::piper()
        .synthesize(&input, &mut |_| {})
        .expect("piper speaks");
    (audio.samples, audio.sample_rate)
}

/// A 16-bit mono WAV file of `samples`.
pub fn wav(samples: &[f32], rate: u32) -> Vec<u8> {
    tts_worker::wav::encode_pcm16(samples, rate).expect("WAV encodes")
}

/// A WAV file of Piper speaking `text`.
pub fn spoken_wav(text: &str) -> Vec<u8> {
    let (samples, rate) = speech(text);
    wav(&samples, rate)
}

/// `wav` re-encoded as MP3 with the `lame` command (scripts/deps installs it).
pub fn mp3(wav: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let input = dir.path().join("in.wav");
    let output = dir.path().join("out.mp3");
    std::fs::write(&input, wav).expect("WAV written");
    let status = std::process::Command::new("lame")
        .args(["--quiet", "-b", "64"])
        .arg(&input)
        .arg(&output)
        .status()
        .expect("lame is installed (scripts/deps installs it)");
    assert!(status.success(), "lame failed");
    std::fs::read(&output).expect("MP3 read")
}
