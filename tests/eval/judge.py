"""The cloning evaluation's independent judges: speaker embeddings from CAM++ (campp.py) or
from Resemblyzer's voice encoder (resemblyzer.py).

    judge.py MODEL WEIGHTS embed A.wav [B.wav ...]          {"A.wav": [floats], ...}
    judge.py MODEL WEIGHTS similarity REF.wav A.wav [...]    {"A.wav": cosine to REF, ...}

MODEL is campp (192-dimensional embeddings, weights .cache/eval/campplus_cn_en_common.pt) or
resemblyzer (256 dimensions, .cache/eval/resemblyzer.pt). WAVs are 16 kHz mono. Prints one
JSON object on stdout. Run with the venv scripts/eval-references makes (.cache/eval-venv:
numpy and soundfile, no torch).
"""
import json
import os
import sys

import numpy as np
import soundfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from campp import CAMPPlus  # noqa: E402
from resemblyzer import VoiceEncoder  # noqa: E402

MODELS = {"campp": CAMPPlus, "resemblyzer": VoiceEncoder}


def read(path):
    samples, rate = soundfile.read(path, dtype="float32")
    if samples.ndim > 1:
        samples = samples.mean(axis=1)
    if rate != 16000:
        sys.exit(f"{path}: {rate} Hz, the judge takes 16 kHz")
    return samples


def cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    if len(sys.argv) < 5 or sys.argv[1] not in MODELS or sys.argv[3] not in ("embed", "similarity"):
        sys.exit(__doc__)
    model = MODELS[sys.argv[1]](sys.argv[2])
    paths = sys.argv[4:]
    embeddings = {path: model.embed(read(path)) for path in paths}
    if sys.argv[3] == "embed":
        result = {path: [float(v) for v in e] for path, e in embeddings.items()}
    else:
        reference = embeddings[paths[0]]
        result = {path: cosine(reference, embeddings[path]) for path in paths[1:]}
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
