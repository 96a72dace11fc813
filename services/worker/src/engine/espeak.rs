//! IPA phonemes from the `espeak-ng` program.
//!
//! espeak-ng runs as a separate process rather than being linked: the library is GPL-3.0, and a
//! separate process also side-steps its lack of thread safety.

use std::io::Write;
use std::process::{Command, Stdio};

use super::EngineError;
use crate::text::{Piece, split_clauses};

/// One sentence as IPA, with Piper-style punctuation: clauses joined by their punctuation and a
/// space, the sentence's end punctuation last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhonemizedSentence {
    pub text: String,
    pub ipa: String,
}

pub fn check_available() -> Result<String, EngineError> {
    let out = Command::new("espeak-ng")
        .arg("--version")
        .output()
        .map_err(|e| {
            EngineError::internal(format!("espeak-ng is not installed: {e}")).with_source(e)
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Phonemizes one piece of text with `voice` (an espeak-ng voice such as `en-us`). espeak-ng
/// prints one line per clause it finds; they are joined with spaces.
pub fn phonemize_clause(voice: &str, text: &str) -> Result<String, EngineError> {
    Ok(words(&run(voice, text)?))
}

/// espeak-ng's IPA output for `text`, as it prints it.
fn run(voice: &str, text: &str) -> Result<String, EngineError> {
    let mut child = Command::new("espeak-ng")
        .args(["-q", "--ipa", "-v", voice, "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| EngineError::internal(format!("cannot run espeak-ng: {e}")).with_source(e))?;
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| EngineError::internal(format!("espeak-ng stdin: {e}")).with_source(e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EngineError::internal(format!("espeak-ng: {e}")).with_source(e))?;
    if !out.status.success() {
        return Err(EngineError::internal(format!(
            "espeak-ng failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Phonemizes several clauses, one result each, in one run of espeak-ng where that can be done
/// safely: starting the program costs far more than phonemizing a clause (about 20 ms against
/// 1 ms), and a sentence has a clause per comma. Clauses go in separated by blank lines, which
/// espeak-ng ends a clause at, and each comes out as a line of its own, the same as when it is
/// phonemized alone. When a clause might give no line (nothing to pronounce) or the lines do not
/// come out one per clause (espeak-ng ends a clause at an abbreviation's full stop, say), each
/// clause is phonemized on its own instead.
pub fn phonemize_clauses(voice: &str, clauses: &[&str]) -> Result<Vec<String>, EngineError> {
    let pronounceable = |c: &&str| c.chars().any(char::is_alphanumeric);
    if clauses.len() > 1 && clauses.iter().all(pronounceable) {
        let lines = run(voice, &clauses.join("\n\n"))?;
        let lines: Vec<&str> = lines.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() == clauses.len() {
            return Ok(lines.iter().map(|l| words(l)).collect());
        }
    }
    clauses.iter().map(|c| phonemize_clause(voice, c)).collect()
}

/// espeak-ng's output lines joined with single spaces.
fn words(ipa: &str) -> String {
    ipa.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Phonemizes one sentence of [`crate::text::split_sentences`]; `None` when it has nothing to
/// say. Engines call it a sentence at a time, so that the first sentence is spoken without
/// waiting for the rest to be phonemized.
pub fn phonemize_sentence(
    voice: &str,
    sentence: &Piece,
) -> Result<Option<PhonemizedSentence>, EngineError> {
    let clauses = split_clauses(&sentence.text);
    let texts: Vec<&str> = clauses.iter().map(|c| c.text.as_str()).collect();
    let mut ipa = String::new();
    for (i, (clause, phonemes)) in clauses
        .iter()
        .zip(phonemize_clauses(voice, &texts)?)
        .enumerate()
    {
        if phonemes.is_empty() {
            continue;
        }
        ipa.push_str(&phonemes);
        if i + 1 < clauses.len() {
            // Clause punctuation is kept as the model was trained with it.
            let p = clause
                .punctuation
                .chars()
                .next()
                .map(ascii_punct)
                .unwrap_or(',');
            ipa.push(p);
            ipa.push(' ');
        }
    }
    let end = sentence
        .punctuation
        .chars()
        .next()
        .map(ascii_punct)
        .unwrap_or('.');
    if ipa.is_empty() {
        return Ok(None);
    }
    ipa.push(end);
    Ok(Some(PhonemizedSentence {
        text: format!("{}{}", sentence.text, sentence.punctuation),
        ipa,
    }))
}

/// Maps CJK punctuation to the ASCII mark the phoneme vocabularies know.
fn ascii_punct(c: char) -> char {
    match c {
        '。' | '…' => '.',
        '！' => '!',
        '？' => '?',
        '，' | '、' => ',',
        '；' => ';',
        '：' => ':',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One run for many clauses gives what a run per clause gives, abbreviations (which espeak
    /// ends a clause at) and clauses with nothing to say included.
    #[test]
    fn clauses_phonemized_together_match_clauses_phonemized_alone() {
        for clauses in [
            &[
                "The committee reviewed the proposal",
                "and agreed to fund it",
            ][..],
            &["Dr. Smith paid 3.5 dollars", "then left"][..],
            &["Hello", "...", "world"][..],
            &["In 2024 prices rose", "however", "the result was good"][..],
        ] {
            let together = phonemize_clauses("en-us", clauses).unwrap();
            let alone: Vec<String> = clauses
                .iter()
                .map(|c| phonemize_clause("en-us", c).unwrap())
                .collect();
            assert_eq!(together, alone, "{clauses:?}");
        }
    }
}
