//! WAV encoding of engine output.

use std::io::Cursor;

use tts_contracts::chunk::to_i16;

/// Encodes mono float samples in [-1, 1] as a 16-bit PCM WAV file.
pub fn encode_pcm16(samples: &[f32], sample_rate: u32) -> Result<Vec<u8>, hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
    {
        let mut writer = hound::WavWriter::new(&mut cursor, spec)?;
        // The same conversion as streamed chunks', so that what a listener heard is what is
        // stored.
        for &s in samples {
            writer.write_sample(to_i16(s))?;
        }
        writer.finalize()?;
    }
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_back() {
        let samples = [0.0, 0.5, -0.5, 2.0, f32::NAN];
        let bytes = encode_pcm16(&samples, 22050).unwrap();
        let mut reader = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(reader.spec().sample_rate, 22050);
        assert_eq!(reader.spec().channels, 1);
        let back: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(back, [0, 16384, -16384, 32767, 0]);
    }
}
