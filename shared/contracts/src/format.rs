//! The audio formats the API answers in.

use serde::{Deserialize, Serialize};

/// A format audio can be delivered in. Workers always store 16-bit WAV; the gateway converts on
/// the way out, so one stored job can be fetched in any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    #[default]
    Wav,
    /// Raw 16-bit little-endian mono samples at 24 kHz, as OpenAI's speech API gives them.
    Pcm,
    Mp3,
    /// Opus in an Ogg container.
    Opus,
    Aac,
    Flac,
}

impl AudioFormat {
    /// Every format, in the order error messages list them.
    pub const ALL: [AudioFormat; 6] = [
        AudioFormat::Wav,
        AudioFormat::Pcm,
        AudioFormat::Mp3,
        AudioFormat::Opus,
        AudioFormat::Aac,
        AudioFormat::Flac,
    ];

    /// The sample rate of [`AudioFormat::Pcm`], fixed by OpenAI's contract.
    pub const PCM_RATE: u32 = 24_000;

    pub fn name(self) -> &'static str {
        match self {
            AudioFormat::Wav => "wav",
            AudioFormat::Pcm => "pcm",
            AudioFormat::Mp3 => "mp3",
            AudioFormat::Opus => "opus",
            AudioFormat::Aac => "aac",
            AudioFormat::Flac => "flac",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            AudioFormat::Wav => "audio/wav",
            AudioFormat::Pcm => "audio/pcm",
            AudioFormat::Mp3 => "audio/mpeg",
            AudioFormat::Opus => "audio/ogg",
            AudioFormat::Aac => "audio/aac",
            AudioFormat::Flac => "audio/flac",
        }
    }

    /// The file extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            AudioFormat::Opus => "ogg",
            other => other.name(),
        }
    }

    /// Parses a format name, case-insensitively.
    pub fn parse(name: &str) -> Option<AudioFormat> {
        AudioFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name.trim()))
    }
}

impl std::fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde_and_parse() {
        for format in AudioFormat::ALL {
            let json = serde_json::to_string(&format).unwrap();
            assert_eq!(json, format!("\"{}\"", format.name()));
            assert_eq!(serde_json::from_str::<AudioFormat>(&json).unwrap(), format);
            assert_eq!(
                AudioFormat::parse(&format.name().to_uppercase()),
                Some(format)
            );
        }
        assert_eq!(AudioFormat::parse("ogg"), None);
        assert_eq!(AudioFormat::Opus.extension(), "ogg");
        assert_eq!(AudioFormat::default(), AudioFormat::Wav);
    }
}
