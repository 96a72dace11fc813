//! Sample-rate conversion of mono audio.

use rubato::audioadapter_buffers::owned::InterleavedOwned;
use rubato::{Fft, FixedSync, Resampler};

use crate::error::EngineError;

/// Converts mono `samples` from `from` Hz to `to` Hz with an FFT resampler (band-limited, so
/// downsampling does not alias).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, EngineError> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let mut resampler =
        Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input).map_err(fail)?;
    let input = InterleavedOwned::new_from(samples.to_vec(), 1, samples.len()).map_err(fail)?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .map_err(fail)?;
    Ok(output.take_data())
}

fn fail(e: impl std::error::Error + Send + Sync + 'static) -> EngineError {
    EngineError::internal(format!("resampling: {e}")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_keeps_its_length_and_frequency() {
        let rate = 22_050.0;
        let tone: Vec<f32> = (0..22_050)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate).sin())
            .collect();
        let out = resample(&tone, 22_050, 16_000).unwrap();
        assert!((out.len() as i64 - 16_000).abs() < 50, "{}", out.len());
        // Zero crossings of a 440 Hz tone over one second: about 880.
        let crossings = out
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!((860..=900).contains(&crossings), "{crossings}");
    }
}
