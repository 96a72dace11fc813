//! OpenVoice's spectrogram front end: the linear magnitude spectrogram of its
//! `spectrogram_torch`, which both graphs take. A periodic Hann window of [`WIN`] samples, an
//! [`N_FFT`]-point FFT every [`HOP`] samples, reflect padding of `(N_FFT - HOP) / 2` samples on
//! each side, no centering, magnitude `sqrt(re² + im² + 1e-6)`.

use ndarray::Array2;

use crate::error::EngineError;
use crate::stft::{Stft, periodic_hann};

/// FFT size of the spectrogram (OpenVoice's `filter_length`).
pub const N_FFT: usize = 1024;
/// Samples between spectrogram frames (OpenVoice's `hop_length`).
pub const HOP: usize = 256;
/// Window length of the spectrogram (OpenVoice's `win_length`).
pub const WIN: usize = 1024;
/// Frequency bins of a spectrogram frame.
pub const BINS: usize = N_FFT / 2 + 1;
/// Samples of reflect padding on each side, so that frame `t` starts at sample `t * HOP`.
pub const PAD: usize = (N_FFT - HOP) / 2;
/// Added to the power before the square root, as OpenVoice does, so that silence stays finite.
pub const POWER_FLOOR: f32 = 1e-6;

/// OpenVoice's linear magnitude spectrogram (`spectrogram_torch` with `center=False`).
pub struct Spectrogram {
    stft: Stft,
}

impl Default for Spectrogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Spectrogram {
    pub fn new() -> Self {
        Spectrogram {
            stft: Stft::new(N_FFT, periodic_hann(WIN), HOP),
        }
    }

    /// Frames of 22050 Hz audio, time major: [frames, [`BINS`]]. Frame `t` covers samples
    /// `t * HOP - PAD ..` of the reflect-padded signal, so there are `1 + (len - HOP) / HOP`.
    pub fn compute(&self, samples: &[f32]) -> Result<Array2<f32>, EngineError> {
        // Reflect padding mirrors PAD samples after the first, so the signal must be longer.
        if samples.len() <= PAD {
            return Err(EngineError::invalid(
                "audio_too_short",
                format!(
                    "a spectrogram needs more than {PAD} samples; the audio has {}",
                    samples.len()
                ),
            ));
        }
        let padded = reflect_pad(samples, PAD);
        let mut out = self.stft.power(&padded);
        out.mapv_inplace(|power| (power + POWER_FLOOR).sqrt());
        Ok(out)
    }
}

/// `samples` with `pad` samples mirrored on each side, the edge samples not repeated (as
/// torch's `reflect` mode). `samples` must be longer than `pad`.
fn reflect_pad(samples: &[f32], pad: usize) -> Vec<f32> {
    let n = samples.len();
    let mut out = Vec::with_capacity(n + 2 * pad);
    out.extend((1..=pad).rev().map(|k| samples[k]));
    out.extend_from_slice(samples);
    out.extend((1..=pad).map(|k| samples[n - 1 - k]));
    out
}

#[cfg(test)]
mod tests {
    use super::super::{SAMPLE_RATE, sine};
    use super::*;
    use crate::error::EngineErrorKind;

    #[test]
    fn spectrogram_has_one_frame_per_hop_and_513_bins() {
        let spectrogram = Spectrogram::new();
        // With (N_FFT - HOP) / 2 samples of padding on each side, whole hops give one frame each.
        let frames = spectrogram.compute(&vec![0.1; 100 * HOP]).unwrap();
        assert_eq!(frames.dim(), (100, BINS));
        let frames = spectrogram
            .compute(&vec![0.1; SAMPLE_RATE as usize])
            .unwrap();
        assert_eq!(frames.nrows(), 1 + (SAMPLE_RATE as usize - HOP) / HOP);
        // Silence is the floor, not zero or NaN.
        let silent = spectrogram.compute(&vec![0.0; 10 * HOP]).unwrap();
        assert!(silent.iter().all(|v| (v - POWER_FLOOR.sqrt()).abs() < 1e-6));
    }

    #[test]
    fn a_sine_lands_in_its_bin_with_the_hann_windows_gain() {
        let bin = 100;
        let frequency = bin as f32 * SAMPLE_RATE as f32 / N_FFT as f32;
        let frames = Spectrogram::new()
            .compute(&sine(frequency, SAMPLE_RATE as usize))
            .unwrap();
        // Interior frames (the padded edges are mirrored, so not a clean sine).
        for row in frames.rows().into_iter().skip(4).take(frames.nrows() - 8) {
            let peak = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap();
            assert_eq!(peak, bin);
            // A unit sine through a periodic Hann window of N samples peaks at N / 4.
            assert!((row[bin] - N_FFT as f32 / 4.0).abs() < 1.0, "{}", row[bin]);
            // Two bins away, a Hann window leaks nothing of an on-bin sine but rounding.
            assert!(
                row[bin + 2] < 0.5 && row[bin - 2] < 0.5,
                "{} {}",
                row[bin - 2],
                row[bin + 2]
            );
        }
    }

    #[test]
    fn frames_match_a_direct_dft_of_the_padded_windowed_signal() {
        // An independent reference in f64: pad, window and transform frame by frame.
        let samples: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let frames = Spectrogram::new().compute(&samples).unwrap();
        let padded = reflect_pad(&samples, PAD);
        for t in [0, 5, frames.nrows() - 1] {
            for k in [0, 1, 37, 256, BINS - 1] {
                let (mut re, mut im) = (0.0f64, 0.0f64);
                for n in 0..N_FFT {
                    let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / WIN as f64).cos();
                    let x = padded[t * HOP + n] as f64 * w;
                    let phase = -2.0 * std::f64::consts::PI * (k * n) as f64 / N_FFT as f64;
                    re += x * phase.cos();
                    im += x * phase.sin();
                }
                let want = (re * re + im * im + POWER_FLOOR as f64).sqrt();
                let got = frames[[t, k]] as f64;
                assert!(
                    (got - want).abs() < 1e-3 * want.max(1.0),
                    "frame {t} bin {k}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        let samples = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            reflect_pad(&samples, 2),
            [2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]
        );
    }

    #[test]
    fn too_little_audio_is_refused_not_a_panic() {
        let err = Spectrogram::new().compute(&[0.5; PAD]).unwrap_err();
        assert_eq!(err.kind(), EngineErrorKind::InvalidInput);
        assert_eq!(err.code(), "audio_too_short");
        assert!(Spectrogram::new().compute(&[]).is_err());
    }
}
