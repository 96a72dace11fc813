//! Sample-rate conversion of mono audio, whole or in a stream.
//!
//! Both use rubato's FFT resampler, which is band-limited, so downsampling does not alias. The
//! worker resamples clips for its models with [`resample`]; the encoders convert to the rate a
//! format needs with [`StreamResampler`], which takes audio in pieces of any size and gives the
//! same length as resampling it whole.

use rubato::audioadapter_buffers::owned::InterleavedOwned;
use rubato::{Fft, FixedSync, Indexing, Resampler};

/// Frames the FFT resampler takes per chunk.
const CHUNK: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("resampling from {from} Hz to {to} Hz failed")]
pub struct ResampleError {
    pub from: u32,
    pub to: u32,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Converts mono `samples` from `from` Hz to `to` Hz.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, ResampleError> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| ResampleError {
        from,
        to,
        source: e,
    };
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input)
        .map_err(|e| fail(e.into()))?;
    let input = InterleavedOwned::new_from(samples.to_vec(), 1, samples.len())
        .map_err(|e| fail(e.into()))?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| fail(e.into()))?;
    Ok(output.take_data())
}

/// A resampler fed in pieces. Input waits until a whole chunk is there; the resampler's startup
/// delay is dropped from the front and [`StreamResampler::finish`] cuts the tail, so the output
/// is as long as [`resample`] would make it, whatever the pieces were.
pub struct StreamResampler {
    from: u32,
    to: u32,
    /// `None` when the rates are equal: samples pass through untouched.
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    /// Output frames still to drop for the startup delay.
    to_trim: usize,
    frames_in: u64,
    frames_out: u64,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<Self, ResampleError> {
        let inner = if from == to {
            None
        } else {
            Some(
                Fft::<f32>::new(from as usize, to as usize, CHUNK, 1, FixedSync::Input).map_err(
                    |e| ResampleError {
                        from,
                        to,
                        source: e.into(),
                    },
                )?,
            )
        };
        let to_trim = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(StreamResampler {
            from,
            to,
            inner,
            pending: Vec::new(),
            to_trim,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Takes more input and returns the output that is ready (possibly none yet).
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>, ResampleError> {
        self.frames_in += samples.len() as u64;
        if self.inner.is_none() {
            self.frames_out += samples.len() as u64;
            return Ok(samples.to_vec());
        }
        self.pending.extend_from_slice(samples);
        let mut out = Vec::new();
        loop {
            let need = self.inner.as_ref().map_or(0, |r| r.input_frames_next());
            if self.pending.len() < need {
                break;
            }
            let chunk: Vec<f32> = self.pending.drain(..need).collect();
            self.run(chunk, None, &mut out)?;
        }
        Ok(out)
    }

    /// Flushes what is left: the last partial chunk, then silence until the output has the
    /// length the input calls for, and no more.
    pub fn finish(mut self) -> Result<Vec<f32>, ResampleError> {
        if self.inner.is_none() {
            return Ok(Vec::new());
        }
        let expected = (self.frames_in as f64 * self.to as f64 / self.from as f64).ceil() as u64;
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            let len = rest.len();
            self.run(rest, Some(len), &mut out)?;
        }
        while self.frames_out < expected {
            self.run(Vec::new(), Some(0), &mut out)?;
        }
        let surplus = (self.frames_out - expected) as usize;
        out.truncate(out.len().saturating_sub(surplus));
        Ok(out)
    }

    /// Resamples one chunk (or a shorter, zero-padded one) and appends what is past the delay.
    fn run(
        &mut self,
        chunk: Vec<f32>,
        partial_len: Option<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), ResampleError> {
        let (from, to) = (self.from, self.to);
        let fail = |e: Box<dyn std::error::Error + Send + Sync>| ResampleError {
            from,
            to,
            source: e,
        };
        let resampler = self.inner.as_mut().expect("only called when resampling");
        // The adapter needs at least one frame even when the whole chunk is padding.
        let mut data = chunk;
        if data.is_empty() {
            data.push(0.0);
        }
        let len = data.len();
        let input = InterleavedOwned::new_from(data, 1, len).map_err(|e| fail(e.into()))?;
        let indexing = Indexing {
            input_offset: 0,
            output_offset: 0,
            partial_len,
            active_channels_mask: None,
        };
        let produced = resampler
            .process(&input, Some(&indexing))
            .map_err(|e| fail(e.into()))?
            .take_data();
        let skip = self.to_trim.min(produced.len());
        self.to_trim -= skip;
        self.frames_out += (produced.len() - skip) as u64;
        out.extend_from_slice(&produced[skip..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, seconds: f32) -> Vec<f32> {
        (0..(rate as f32 * seconds) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn a_tone_keeps_its_length_and_frequency() {
        let out = resample(&tone(22_050, 1.0), 22_050, 16_000).unwrap();
        assert!((out.len() as i64 - 16_000).abs() < 50, "{}", out.len());
        // Zero crossings of a 440 Hz tone over one second: about 880.
        let crossings = out
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!((860..=900).contains(&crossings), "{crossings}");
    }

    #[test]
    fn a_stream_in_uneven_pieces_matches_resampling_whole() {
        let input = tone(22_050, 1.3);
        let whole = resample(&input, 22_050, 48_000).unwrap();
        let mut stream = StreamResampler::new(22_050, 48_000).unwrap();
        let mut out = Vec::new();
        let mut rest = &input[..];
        for size in [1usize, 300, 5000, 17, 2048].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            out.extend(stream.push(piece).unwrap());
            rest = tail;
        }
        out.extend(stream.finish().unwrap());
        assert_eq!(out.len(), whole.len());
        let worst = out
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "{worst}");
    }
}
