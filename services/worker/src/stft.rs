//! Short-time Fourier framing: a window laid on the signal every hop samples, each windowed frame
//! transformed by a real FFT. The speaker encoder's log-mel front end and OpenVoice's spectrogram
//! both start here, so the framing is written once.

use std::sync::Arc;

use ndarray::{Array2, Axis};
use realfft::{RealFftPlanner, RealToComplex};

/// A periodic Hann window (`torch.hann_window`): the symmetric window of one more sample,
/// without its last.
pub fn periodic_hann(len: usize) -> Vec<f32> {
    (0..len)
        .map(|n| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * n as f32 / len as f32).cos())
        .collect()
}

/// A periodic Hamming window.
pub fn periodic_hamming(len: usize) -> Vec<f32> {
    (0..len)
        .map(|n| 0.54 - 0.46 * (2.0 * std::f32::consts::PI * n as f32 / len as f32).cos())
        .collect()
}

/// Frames of `window.len()` samples every `hop`, without centering or padding, each windowed and
/// zero-filled to an `n_fft`-point FFT.
pub struct Stft {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    hop: usize,
}

impl Stft {
    /// `window` must be no longer than `n_fft`.
    pub fn new(n_fft: usize, window: Vec<f32>, hop: usize) -> Self {
        assert!(window.len() <= n_fft && hop > 0, "a window within the FFT");
        Stft {
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(n_fft),
            window,
            hop,
        }
    }

    /// Frequency bins of a frame: `n_fft / 2 + 1`.
    pub fn bins(&self) -> usize {
        self.fft.len() / 2 + 1
    }

    /// How many whole windows fit in `len` samples: `1 + (len - window) / hop`, none when the
    /// signal is shorter than one window.
    pub fn frames(&self, len: usize) -> usize {
        if len < self.window.len() {
            0
        } else {
            1 + (len - self.window.len()) / self.hop
        }
    }

    /// The power spectrum `re² + im²` of each frame: [frames, bins], time major.
    pub fn power(&self, samples: &[f32]) -> Array2<f32> {
        let mut out = Array2::<f32>::zeros((self.frames(samples.len()), self.bins()));
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        for (t, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
            let start = t * self.hop;
            // The FFT uses its input as scratch space, so the zero fill is renewed every frame.
            input.iter_mut().for_each(|x| *x = 0.0);
            for (i, x) in input.iter_mut().take(self.window.len()).enumerate() {
                *x = samples[start + i] * self.window[i];
            }
            self.fft
                .process(&mut input, &mut spectrum)
                .expect("buffers come from the same plan");
            for (value, c) in row.iter_mut().zip(&spectrum) {
                *value = c.norm_sqr();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_whole_windows_every_hop() {
        let stft = Stft::new(512, periodic_hamming(400), 160);
        assert_eq!(stft.bins(), 257);
        assert_eq!(stft.frames(399), 0);
        assert_eq!(stft.frames(400), 1);
        assert_eq!(stft.frames(400 + 159), 1);
        assert_eq!(stft.frames(400 + 160), 2);
        assert_eq!(stft.power(&[0.5; 399]).dim(), (0, 257));
        assert_eq!(stft.power(&vec![0.5; 16_000]).dim(), (98, 257));
    }

    #[test]
    fn a_short_window_is_zero_filled_to_the_fft() {
        // A constant through a window shorter than the FFT: bin 0 holds the window's sum squared.
        let window = periodic_hamming(400);
        let sum: f32 = window.iter().sum();
        let power = Stft::new(512, window, 160).power(&[1.0; 1000]);
        for row in power.rows() {
            assert!((row[0] - sum * sum).abs() < 1e-2 * sum * sum, "{}", row[0]);
        }
    }
}
