//! Pieces of a job's audio, published by the worker as the engine makes them, so that the gateway
//! can stream speech before the whole text is done.
//!
//! Chunks go out on core NATS (`subjects::job_audio`), at most once: a listener may miss one. The
//! stored WAV stays the truth, so each chunk says where its samples start (`first_sample`) and
//! which attempt made it; a listener that sees a gap or another attempt knows it cannot trust
//! what it has and turns to the stored audio.
//!
//! The wire form is binary, as audio is: the magic `TTSA`, a version byte, the job id (16 bytes),
//! then little-endian `attempt` (u32), `seq` (u64), `sample_rate` (u32) and `first_sample` (u64),
//! then the samples as 16-bit little-endian mono PCM.

use crate::JobId;

const MAGIC: &[u8; 4] = b"TTSA";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 16 + 4 + 8 + 4 + 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioChunk {
    pub job_id: JobId,
    /// The delivery of the job that made it (1 for the first).
    pub attempt: u32,
    /// 0 for the attempt's first chunk, then one more for each.
    pub seq: u64,
    pub sample_rate: u32,
    /// Where the chunk's first sample is in the attempt's whole audio.
    pub first_sample: u64,
    /// Mono 16-bit samples, as the stored WAV holds them.
    pub samples: Vec<i16>,
}

/// Why bytes are not a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    TooShort,
    NotAChunk,
    UnknownVersion(u8),
    OddLength,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkError::TooShort => f.write_str("an audio chunk is shorter than its header"),
            ChunkError::NotAChunk => f.write_str("not an audio chunk"),
            ChunkError::UnknownVersion(v) => write!(f, "audio chunk version {v} is unknown"),
            ChunkError::OddLength => f.write_str("an audio chunk ends in half a sample"),
        }
    }
}

impl std::error::Error for ChunkError {}

impl AudioChunk {
    /// The sample after the chunk's last one.
    pub fn end_sample(&self) -> u64 {
        self.first_sample + self.samples.len() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.samples.len() * 2);
        bytes.extend_from_slice(MAGIC);
        bytes.push(VERSION);
        bytes.extend_from_slice(self.job_id.as_bytes());
        bytes.extend_from_slice(&self.attempt.to_le_bytes());
        bytes.extend_from_slice(&self.seq.to_le_bytes());
        bytes.extend_from_slice(&self.sample_rate.to_le_bytes());
        bytes.extend_from_slice(&self.first_sample.to_le_bytes());
        for sample in &self.samples {
            bytes.extend_from_slice(&sample.to_le_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<AudioChunk, ChunkError> {
        if bytes.len() < HEADER_LEN {
            return Err(ChunkError::TooShort);
        }
        if &bytes[..4] != MAGIC {
            return Err(ChunkError::NotAChunk);
        }
        if bytes[4] != VERSION {
            return Err(ChunkError::UnknownVersion(bytes[4]));
        }
        let body = &bytes[HEADER_LEN..];
        if !body.len().is_multiple_of(2) {
            return Err(ChunkError::OddLength);
        }
        let field = |at: usize, len: usize| &bytes[at..at + len];
        let job_id = uuid::Uuid::from_slice(field(5, 16)).map_err(|_| ChunkError::NotAChunk)?;
        let u32_at = |at| u32::from_le_bytes(field(at, 4).try_into().expect("4 bytes"));
        let u64_at = |at| u64::from_le_bytes(field(at, 8).try_into().expect("8 bytes"));
        Ok(AudioChunk {
            job_id,
            attempt: u32_at(21),
            seq: u64_at(25),
            sample_rate: u32_at(33),
            first_sample: u64_at(37),
            samples: body
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]))
                .collect(),
        })
    }
}

/// A sample in [-1, 1] as the 16-bit value the stored WAV holds, so that streamed and stored
/// audio are the same numbers.
pub fn to_i16(sample: f32) -> i16 {
    (sample.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_survives_the_wire_and_garbage_is_refused() {
        let chunk = AudioChunk {
            job_id: uuid::Uuid::new_v4(),
            attempt: 2,
            seq: 7,
            sample_rate: 22050,
            first_sample: 44100,
            samples: vec![0, 1, -1, i16::MAX, i16::MIN],
        };
        let bytes = chunk.encode();
        assert_eq!(AudioChunk::decode(&bytes).unwrap(), chunk);
        assert_eq!(chunk.end_sample(), 44105);
        assert_eq!(AudioChunk::decode(&bytes[..10]), Err(ChunkError::TooShort));
        assert_eq!(
            AudioChunk::decode(&bytes[..bytes.len() - 1]),
            Err(ChunkError::OddLength)
        );
        let mut other = bytes.clone();
        other[0] = b'X';
        assert_eq!(AudioChunk::decode(&other), Err(ChunkError::NotAChunk));
        other = bytes;
        other[4] = 9;
        assert_eq!(
            AudioChunk::decode(&other),
            Err(ChunkError::UnknownVersion(9))
        );
    }

    #[test]
    fn samples_convert_as_the_stored_wav_does() {
        assert_eq!(to_i16(0.0), 0);
        assert_eq!(to_i16(1.5), i16::MAX);
        assert_eq!(to_i16(-1.0), -i16::MAX);
    }
}
