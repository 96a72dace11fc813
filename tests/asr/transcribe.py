"""Transcribes WAV files with Whisper base (faster-whisper), for the tests that check voices
are understood. Arguments: the model directory, then PATH:LANGUAGE pairs. Prints one JSON
object per file: {"path", "language", "text"}.

Greedy decoding (beam 1) and no voice-activity filter keep the result a plain function of the
audio. For Mandarin, a short prompt in simplified characters keeps Whisper from answering in
traditional ones, which would count as errors against the simplified text spoken.
"""
import json
import sys

from faster_whisper import WhisperModel

PROMPTS = {"zh": "以下是普通话的句子。"}


def main() -> None:
    model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8", cpu_threads=2)
    for arg in sys.argv[2:]:
        path, language = arg.rsplit(":", 1)
        segments, _ = model.transcribe(
            path,
            language=language,
            beam_size=1,
            vad_filter=False,
            initial_prompt=PROMPTS.get(language),
        )
        text = "".join(s.text for s in segments).strip()
        print(json.dumps({"path": path, "language": language, "text": text}, ensure_ascii=False))


if __name__ == "__main__":
    main()
