//! The Mandarin front end: `normalize` (numbers, dates, times, money, percentages, phone
//! numbers as words) and then `phonemize` (to pinyin and IPA) on arbitrary text. It must never
//! panic, its output must stay within a fixed multiple of its input, and every number must be
//! read: no digit survives normalisation, and nothing but the characters of numbers (digits
//! and their separators) is dropped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tts_worker::engine::zh::{normalize::normalize, phonemize};

/// Characters a number may consume when it is read: digits (ASCII or full-width), signs and
/// separators.
fn part_of_a_number(c: char) -> bool {
    c.is_ascii_digit() || c.is_whitespace() || "+-,./:%％０１２３４５６７８９．：－／".contains(c)
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let input_chars = text.chars().count();
    let words = normalize(text);
    let output_chars = words.chars().count();
    // 1% becomes 百分之一, the longest reading per character written.
    assert!(
        output_chars <= 2 * input_chars,
        "{input_chars} characters became {output_chars}: {words:?}"
    );
    assert!(
        !words
            .chars()
            .any(|c| c.is_ascii_digit() || ('０'..='９').contains(&c)),
        "a digit was left unread: {words:?}"
    );
    // Everything else is kept, in order.
    let mut kept = words.chars();
    for c in text.chars().filter(|c| !part_of_a_number(*c)) {
        assert!(
            kept.any(|k| k == c),
            "{c:?} of {text:?} was dropped: {words:?}"
        );
    }

    let sentences = phonemize(text, &mut |latin: &str| Some(latin.to_string()));
    let ipa: usize = sentences.iter().map(|s| s.ipa.chars().count()).sum();
    assert!(
        ipa <= 16 * output_chars + 16 * sentences.len(),
        "{output_chars} characters became {ipa} of IPA"
    );
});
