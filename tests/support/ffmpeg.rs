//! Independent decoding of the audio the service gives, with Debian's ffmpeg.

use std::io::Write;
use std::process::Command;

/// What ffprobe and ffmpeg, decoders independent of the service, make of audio it gave.
#[derive(Debug)]
pub struct Decoded {
    pub codec: String,
    pub rate: u32,
    pub channels: u32,
    pub samples: usize,
    pub rms: f32,
}

/// What ffprobe says of the stream and ffmpeg decodes from it. Raw PCM is described to them
/// as the API promises it: s16le, 24 kHz, mono.
pub fn decode(bytes: &[u8], raw_pcm: bool) -> Decoded {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let raw: &[&str] = if raw_pcm {
        &["-f", "s16le", "-ar", "24000", "-ac", "1"]
    } else {
        &[]
    };
    let probe = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(raw)
        .args([
            "-show_entries",
            "stream=sample_rate,channels,codec_name",
            "-of",
            "default=noprint_wrappers=1",
            &path,
        ])
        .output()
        .expect("ffprobe is needed: scripts/deps --servers installs ffmpeg");
    assert!(probe.status.success(), "{probe:?}");
    let text = String::from_utf8(probe.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("ffprobe gave no {name}: {text}"))
            .to_string()
    };
    // ffmpeg 5's own Opus decoder garbles some SILK frames that libopus decodes cleanly.
    let decoder: &[&str] = if text.contains("codec_name=opus") {
        &["-c:a", "libopus"]
    } else {
        &[]
    };
    let output = Command::new("ffmpeg")
        .args(["-v", "error"])
        .args(raw)
        .args(decoder)
        .args(["-i", &path, "-f", "f32le", "-"])
        .output()
        .expect("ffmpeg is needed");
    assert!(output.status.success(), "{output:?}");
    let samples: Vec<f32> = output
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let energy: f64 = samples.iter().map(|s| (*s as f64).powi(2)).sum();
    Decoded {
        codec: field("codec_name"),
        rate: field("sample_rate").parse().unwrap(),
        channels: field("channels").parse().unwrap(),
        samples: samples.len(),
        rms: (energy / samples.len().max(1) as f64).sqrt() as f32,
    }
}

impl Decoded {
    pub fn seconds(&self) -> f32 {
        self.samples as f32 / self.rate.max(1) as f32
    }
}
