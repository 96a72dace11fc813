//! IPA phonemes from the `espeak-ng` program.
//!
//! espeak-ng runs as a separate process rather than being linked: the library is GPL-3.0, and a
//! separate process also side-steps its lack of thread safety. Starting the program costs far
//! more than phonemizing a clause (about 20 ms against 1 ms), so processes are kept running
//! between sentences ([`Resident`]) and fed a line at a time; a one-off run is the fallback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{LazyLock, Mutex, mpsc};
use std::time::Duration;

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

/// Phonemizes several clauses, one result each, each the same as [`phonemize_clause`] gives:
/// on a resident espeak-ng when one can be had, else in one run of the program where that can
/// be done safely. In that run clauses go in separated by blank lines, which espeak-ng ends a
/// clause at, and each comes out as a line of its own, the same as when it is phonemized alone.
/// When a clause might give no line (nothing to pronounce) or the lines do not come out one per
/// clause (espeak-ng ends a clause at an abbreviation's full stop, say), each clause is
/// phonemized on its own instead.
pub fn phonemize_clauses(voice: &str, clauses: &[&str]) -> Result<Vec<String>, EngineError> {
    if let Some(lines) = Resident::phonemize(voice, clauses) {
        return Ok(lines);
    }
    phonemize_clauses_once(voice, clauses)
}

/// [`phonemize_clauses`] with one run of the program (or one per clause).
fn phonemize_clauses_once(voice: &str, clauses: &[&str]) -> Result<Vec<String>, EngineError> {
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

/// A line that marks the end of a clause's output: a made-up word, which espeak-ng spells out as
/// one line of its own. A clause holding it is never sent to a resident.
const MARKER: &str = "zyxquv";

/// How long a resident may take to answer before it is given up for a one-off run: far more than
/// any clause needs, so that only a stuck process reaches it.
const RESIDENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Residents not in use, by espeak voice.
static IDLE: LazyLock<Mutex<HashMap<String, Vec<Resident>>>> = LazyLock::new(Default::default);

/// An espeak-ng that keeps running between sentences. Without text on its command line the
/// program reads its input a line at a time and prints each line's phonemes (a line per clause)
/// before it reads the next, so after each clause the [`MARKER`] is sent, and its known output
/// line says where the clause's own lines end. A resident serves one caller at a time: it is
/// taken from [`IDLE`] and put back, and one that fails in any way is killed instead.
struct Resident {
    child: Child,
    stdin: ChildStdin,
    /// Output lines, read by a thread of their own so that waiting can time out.
    lines: mpsc::Receiver<String>,
    /// The marker's phonemes, as this process prints them.
    marker: String,
}

impl Resident {
    /// `clauses` phonemized on a resident for `voice`; `None` when that cannot be done (no
    /// resident can be started, a clause holds the marker, the process fails), and the caller
    /// runs the program once instead.
    fn phonemize(voice: &str, clauses: &[&str]) -> Option<Vec<String>> {
        // A clause's line breaks would split it into lines of its own; espeak-ng reads one
        // inside a clause as a space, so they are sent as spaces.
        let clauses: Vec<String> = clauses.iter().map(|c| words(c)).collect();
        if clauses.iter().any(|c| c.to_lowercase().contains(MARKER)) {
            return None;
        }
        let taken = IDLE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(voice)
            .and_then(Vec::pop);
        let mut resident = match taken {
            Some(resident) => resident,
            None => match Resident::start(voice) {
                Ok(resident) => resident,
                Err(e) => {
                    tracing::debug!(voice, error = %e, "no resident espeak-ng");
                    return None;
                }
            },
        };
        match resident.ask(&clauses) {
            Ok(lines) => {
                IDLE.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(voice.to_string())
                    .or_default()
                    .push(resident);
                Some(lines)
            }
            Err(e) => {
                tracing::warn!(voice, error = %e, "resident espeak-ng failed; running it once");
                None
            }
        }
    }

    fn start(voice: &str) -> Result<Resident, String> {
        let mut child = Command::new("espeak-ng")
            .args(["-q", "--ipa", "-v", voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run espeak-ng: {e}"))?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("espeak-ng reader".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        let mut resident = Resident {
            child,
            stdin,
            lines,
            marker: String::new(),
        };
        resident.send(&format!("{MARKER}\n"))?;
        resident.marker = loop {
            let line = resident.next_line()?;
            if !line.trim().is_empty() {
                break line;
            }
        };
        Ok(resident)
    }

    /// Each clause's output lines joined with spaces, as [`phonemize_clause`] gives them.
    fn ask(&mut self, clauses: &[String]) -> Result<Vec<String>, String> {
        let mut input = String::new();
        for clause in clauses {
            input.push_str(clause);
            input.push('\n');
            input.push_str(MARKER);
            input.push('\n');
        }
        self.send(&input)?;
        let mut out = Vec::with_capacity(clauses.len());
        for _ in clauses {
            let mut said = Vec::new();
            loop {
                let line = self.next_line()?;
                if line == self.marker {
                    break;
                }
                said.push(line);
            }
            out.push(words(&said.join(" ")));
        }
        Ok(out)
    }

    fn send(&mut self, input: &str) -> Result<(), String> {
        self.stdin
            .write_all(input.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("espeak-ng stdin: {e}"))
    }

    fn next_line(&self) -> Result<String, String> {
        self.lines
            .recv_timeout(RESIDENT_TIMEOUT)
            .map_err(|e| format!("espeak-ng gave no line: {e}"))
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

    /// One run for many clauses, and a resident, give what a run per clause gives, abbreviations
    /// (which espeak ends a clause at) and clauses with nothing to say included.
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
            &["A clause over\ntwo lines", "and zyxquv, the marker"][..],
        ] {
            let together = phonemize_clauses_once("en-us", clauses).unwrap();
            let alone: Vec<String> = clauses
                .iter()
                .map(|c| phonemize_clause("en-us", c).unwrap())
                .collect();
            assert_eq!(together, alone, "{clauses:?}");
            // A resident gives the same, asked twice so that its second answer starts where its
            // first ended; a clause holding the marker is never sent to one.
            let marked = clauses.iter().any(|c| c.contains(MARKER));
            for _ in 0..2 {
                let resident = Resident::phonemize("en-us", clauses);
                if marked {
                    assert_eq!(resident, None);
                } else {
                    assert_eq!(resident.as_ref(), Some(&alone), "{clauses:?}");
                }
                assert_eq!(phonemize_clauses("en-us", clauses).unwrap(), alone);
            }
        }
    }
}
