//! Speech recognition for the tests that check a voice is understood: Whisper base, run by
//! `tests/asr/transcribe.py` in the venv and model directory that `scripts/asr` makes (the
//! README's test command runs it first). A recogniser trained on human speech, not on this
//! project's voices, so that "understood" means what it means for a listener.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Transcribes each (WAV file, language) pair; the texts in the same order.
pub fn transcribe(clips: &[(&Path, &str)]) -> Vec<String> {
    let root = crate::workspace_root();
    let python = root.join(".cache/asr-venv/bin/python");
    let model = root.join(".cache/asr/whisper-base");
    assert!(
        python.exists() && model.join("model.bin").exists(),
        "the speech recogniser is not installed: run scripts/asr"
    );
    let output = Command::new(python)
        .arg(root.join("tests/asr/transcribe.py"))
        .arg(model)
        .args(
            clips
                .iter()
                .map(|(path, language)| format!("{}:{language}", path.display())),
        )
        // The model is on disk; nothing may be fetched.
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the recogniser runs");
    assert!(
        output.status.success(),
        "the recogniser failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 transcripts")
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).expect("one JSON object per file");
            value["text"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// Word error rate: word-level edit distance over the reference's word count, on lower-case
/// words without punctuation.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f32 {
    let words = |text: &str| -> Vec<String> {
        text.split_whitespace()
            .map(|w| {
                w.chars()
                    .filter(|c| c.is_alphanumeric() || *c == '\'')
                    .collect::<String>()
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let (reference, hypothesis) = (words(reference), words(hypothesis));
    strsim::generic_levenshtein(&reference, &hypothesis) as f32 / reference.len().max(1) as f32
}

/// Character error rate: character-level edit distance over the reference's length, on the
/// letters and digits alone (Mandarin has no spaces, and punctuation is not spoken).
pub fn character_error_rate(reference: &str, hypothesis: &str) -> f32 {
    let chars =
        |text: &str| -> Vec<char> { text.chars().filter(|c| c.is_alphanumeric()).collect() };
    let (reference, hypothesis) = (chars(reference), chars(hypothesis));
    strsim::generic_levenshtein(&reference, &hypothesis) as f32 / reference.len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rates_count_edits_against_the_reference() {
        assert_eq!(
            word_error_rate("The quick brown fox.", "the quick brown fox"),
            0.0
        );
        assert_eq!(word_error_rate("one two three four", "one too three"), 0.5);
        assert_eq!(character_error_rate("今天天气很好。", "今天天气很好"), 0.0);
        assert_eq!(
            character_error_rate("今天天气很好", "今天天汽很好"),
            1.0 / 6.0
        );
    }
}
