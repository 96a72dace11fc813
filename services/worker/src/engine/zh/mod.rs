//! The Mandarin front end: text normalisation, then hanzi to pinyin to IPA with Kokoro's tone
//! arrows.

pub mod normalize;
pub mod pinyin_ipa;

use pinyin::ToPinyin;

use super::espeak::PhonemizedSentence;
use crate::text::{split_clauses, split_sentences};

/// Turns Mandarin text into sentences of IPA: words joined by spaces, clauses by ", ", each
/// sentence ending in its punctuation. Latin words inside the text are left to `latin`, which
/// phonemizes them (for example with espeak-ng's English voice).
pub fn phonemize(
    text: &str,
    latin: &mut dyn FnMut(&str) -> Option<String>,
) -> Vec<PhonemizedSentence> {
    let normalized = normalize::normalize(text);
    let mut out = Vec::new();
    for sentence in split_sentences(&normalized) {
        let mut clauses = Vec::new();
        for clause in split_clauses(&sentence.text) {
            let ipa = clause_ipa(&clause.text, latin);
            if !ipa.is_empty() {
                clauses.push(ipa);
            }
        }
        if clauses.is_empty() {
            continue;
        }
        let end = match sentence.punctuation.chars().next() {
            Some('？' | '?') => '?',
            Some('！' | '!') => '!',
            _ => '.',
        };
        out.push(PhonemizedSentence {
            text: format!("{}{}", sentence.text, sentence.punctuation),
            ipa: format!("{}{end}", clauses.join(", ")),
        });
    }
    out
}

fn clause_ipa(clause: &str, latin: &mut dyn FnMut(&str) -> Option<String>) -> String {
    let mut words = Vec::new();
    for word in segment(clause) {
        if word.chars().all(|c| c.is_ascii_alphanumeric() || c == '\'') {
            if let Some(ipa) = latin(&word) {
                words.push(ipa);
            }
            continue;
        }
        let mut ipa = String::new();
        for (c, py) in word.chars().zip(word.as_str().to_pinyin()) {
            match py {
                Some(py) => {
                    if let Some(s) = pinyin_ipa::syllable(py.with_tone_num_end()) {
                        ipa.push_str(&s);
                    }
                }
                // Not a hanzi: keep letters and digits left by normalisation out.
                None => {
                    let _ = c;
                }
            }
        }
        if !ipa.is_empty() {
            words.push(ipa);
        }
    }
    words.join(" ")
}

/// Splits a clause into words: runs of Latin letters, and Chinese words by dictionary
/// segmentation.
fn segment(clause: &str) -> Vec<String> {
    static JIEBA: std::sync::OnceLock<jieba_rs::Jieba> = std::sync::OnceLock::new();
    let jieba = JIEBA.get_or_init(jieba_rs::Jieba::new);
    jieba
        .cut(clause, false)
        .into_iter()
        .map(|token| token.word.trim())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_sentence_gives_its_ipa() {
        let sentences = phonemize("今天天气很好，我们一起去公园散步吧。", &mut |_| None);
        assert_eq!(sentences.len(), 1);
        // As the reference transcription, except 一 keeps its dictionary tone (no sandhi).
        assert_eq!(
            sentences[0].ipa,
            "tɕi→ntʰjɛ→ntʰjɛ→ntɕʰi↘ xə↓n xau↓, wo↓mən i→tɕʰi↓ tɕʰy↘ kʊ→ŋɥɛ↗n sa↘npu↘ pa."
        );
    }

    #[test]
    fn latin_words_go_to_the_latin_phonemizer() {
        let sentences = phonemize("我用 Rust 写代码。", &mut |w| Some(format!("<{w}>")));
        assert!(sentences[0].ipa.contains("<Rust>"), "{}", sentences[0].ipa);
    }
}
