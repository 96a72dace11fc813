"""Resemblyzer's voice encoder (resemblyzer 0.1.4, Apache-2.0): the GE2E d-vector speaker
embedding of VoiceEncoder.embed_utterance, written in numpy.

Why: a second judge for the cloning evaluation, unlike CAM++ in architecture (a 3-layer LSTM),
training loss (GE2E) and training data, so that a clone's rank does not rest on one judge's
quirks. Its weights are the wheel's own pretrained.pt (scripts/eval-references), a checkpoint
in torch's legacy format that ptload.py reads without torch. Everything below follows the
wheel's voice_encoder.py, audio.py and hparams.py: volume normalised to -30 dBFS (raised only),
librosa's mel spectrogram (25 ms Hann window, 10 ms hop, 40 Slaney mel bands, power, no log),
partial utterances of 160 frames at 1.3 per second, each through the LSTM, a linear layer, a
ReLU and an L2 norm, and the utterance embedding the L2-normalised mean of the partials'.

Resemblyzer's preprocess_wav also shortens long silences with webrtcvad. That step is left
out: the evaluation's references are already trimmed to their speech by the service's own VAD
before they are judged, and the trim would add webrtcvad, a compiled package, to the judges'
venv of numpy and soundfile.
"""
import numpy as np

import ptload

# hparams.py
SAMPLING_RATE = 16000
MEL_WINDOW_LENGTH = 25  # ms
MEL_WINDOW_STEP = 10  # ms
MEL_N_CHANNELS = 40
PARTIALS_N_FRAMES = 160  # 1.6 s
AUDIO_NORM_TARGET_DBFS = -30
INT16_MAX = (2 ** 15) - 1


def normalize_volume(wav, target_dbfs=AUDIO_NORM_TARGET_DBFS):
    """audio.normalize_volume with increase_only=True, as preprocess_wav calls it."""
    rms = np.sqrt(np.mean((wav * INT16_MAX) ** 2))
    wave_dbfs = 20 * np.log10(rms / INT16_MAX)
    change = target_dbfs - wave_dbfs
    if change < 0:
        return wav
    return wav * (10 ** (change / 20))


def _hz_to_mel(f):
    # Slaney's scale (librosa's htk=False): linear below 1 kHz, logarithmic above.
    f = np.asarray(f, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, min_log_hz) / min_log_hz)
                    / logstep, f / f_sp)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filters(sr, n_fft, n_mels):
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels): fmin 0, fmax sr/2, Slaney
    scale, Slaney normalisation (each triangle scaled to unit area), float32."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.astype(np.float32)


def wav_to_mel_spectrogram(wav):
    """audio.wav_to_mel_spectrogram: librosa.feature.melspectrogram(sr=16000, n_fft=400,
    hop_length=160, n_mels=40) as (frames, 40) float32, not logarithmic."""
    n_fft = SAMPLING_RATE * MEL_WINDOW_LENGTH // 1000
    hop = SAMPLING_RATE * MEL_WINDOW_STEP // 1000
    # center=True pads n_fft // 2 on each side. librosa pads with zeros since 0.9.0 (its
    # "constant" default replaced "reflect"), and resemblyzer 0.1.4 requires librosa >= 0.9.1,
    # so every installation of this version zero-pads: zeros are what it computes. (The model
    # was trained in 2019 with reflect padding; the two differ only in the utterance's first
    # and last frames.)
    padded = np.pad(np.asarray(wav, np.float64), n_fft // 2, mode="constant")
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = padded[np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]]
    # scipy.signal.get_window("hann", n_fft), librosa's window: the periodic Hann window.
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, n_fft)) ** 2  # (frames, n_fft // 2 + 1)
    mel = power @ mel_filters(SAMPLING_RATE, n_fft, MEL_N_CHANNELS).T.astype(np.float64)
    return mel.astype(np.float32)


def compute_partial_slices(n_samples, rate=1.3, min_coverage=0.75):
    """VoiceEncoder.compute_partial_slices: the waveform and mel slices of the partials."""
    assert 0 < min_coverage <= 1
    samples_per_frame = int((SAMPLING_RATE * MEL_WINDOW_STEP / 1000))
    n_frames = int(np.ceil((n_samples + 1) / samples_per_frame))
    frame_step = int(np.round((SAMPLING_RATE / rate) / samples_per_frame))
    assert 0 < frame_step <= PARTIALS_N_FRAMES

    wav_slices, mel_slices = [], []
    steps = max(1, n_frames - PARTIALS_N_FRAMES + frame_step + 1)
    for i in range(0, steps, frame_step):
        mel_range = np.array([i, i + PARTIALS_N_FRAMES])
        wav_range = mel_range * samples_per_frame
        mel_slices.append(slice(*mel_range))
        wav_slices.append(slice(*wav_range))

    # The last partial is kept, zero-padded, only when the audio covers enough of it.
    last = wav_slices[-1]
    coverage = (n_samples - last.start) / (last.stop - last.start)
    if coverage < min_coverage and len(mel_slices) > 1:
        mel_slices = mel_slices[:-1]
        wav_slices = wav_slices[:-1]
    return wav_slices, mel_slices


def _sigmoid(x):
    # The tanh form equals 1 / (1 + exp(-x)) without overflowing for large negative x.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def lstm_layer(x, w_ih, w_hh, b_ih, b_hh):
    """One layer of torch.nn.LSTM (batch_first, zero initial state) over x (batch, time, in):
    the outputs (batch, time, hidden) and the final hidden state (batch, hidden). torch stacks
    the gates as input, forget, cell, output."""
    hidden = w_hh.shape[1]
    inputs = x @ w_ih.T + (b_ih + b_hh)  # every step's input projection at once
    h = np.zeros((x.shape[0], hidden), np.float32)
    c = np.zeros_like(h)
    out = np.empty((x.shape[0], x.shape[1], hidden), np.float32)
    for t in range(x.shape[1]):
        gates = inputs[:, t] + h @ w_hh.T
        i = _sigmoid(gates[:, :hidden])
        f = _sigmoid(gates[:, hidden:2 * hidden])
        g = np.tanh(gates[:, 2 * hidden:3 * hidden])
        o = _sigmoid(gates[:, 3 * hidden:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out[:, t] = h
    return out, h


class VoiceEncoder:
    def __init__(self, path):
        checkpoint = ptload.load(path)
        # The wheel's checkpoint is {"step", "model_state", "optimizer_state"}; a bare state
        # dict is taken as it is.
        state = checkpoint.get("model_state", checkpoint)
        self.p = {k: np.asarray(v, np.float32) for k, v in state.items()}
        self.layers = sum(1 for k in self.p if k.startswith("lstm.weight_ih_l"))

    def forward(self, mels):
        """VoiceEncoder.forward: mels (batch, frames, 40) -> L2-normalised (batch, 256)."""
        p, x = self.p, mels.astype(np.float32)
        for layer in range(self.layers):
            x, h = lstm_layer(x, p[f"lstm.weight_ih_l{layer}"], p[f"lstm.weight_hh_l{layer}"],
                              p[f"lstm.bias_ih_l{layer}"], p[f"lstm.bias_hh_l{layer}"])
        raw = np.maximum(h @ p["linear.weight"].T + p["linear.bias"], 0.0)
        return raw / np.linalg.norm(raw, axis=1, keepdims=True)

    def embed_utterance(self, wav, rate=1.3, min_coverage=0.75):
        """VoiceEncoder.embed_utterance of a preprocessed wav: (256,) float32, L2-normalised."""
        wav_slices, mel_slices = compute_partial_slices(len(wav), rate, min_coverage)
        max_wave_length = wav_slices[-1].stop
        if max_wave_length >= len(wav):
            wav = np.pad(wav, (0, max_wave_length - len(wav)), "constant")
        mel = wav_to_mel_spectrogram(wav)
        partials = self.forward(np.array([mel[s] for s in mel_slices]))
        raw = np.mean(partials, axis=0)
        return raw / np.linalg.norm(raw, 2)

    def embed(self, wav16k):
        """A 16 kHz mono waveform's embedding: preprocess_wav without its silence trim, then
        embed_utterance."""
        return self.embed_utterance(normalize_volume(np.asarray(wav16k, np.float32)))
