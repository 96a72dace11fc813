//! Text preparation shared by engines: sentence and clause splitting.

/// Characters that end a sentence, Latin and CJK.
const SENTENCE_ENDS: &[char] = &['.', '!', '?', '。', '！', '？', '…'];

/// Characters that end a clause inside a sentence.
const CLAUSE_ENDS: &[char] = &[',', ';', ':', '，', '；', '：', '、'];

/// A piece of text and the punctuation that closed it (empty at the end of text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub punctuation: String,
}

/// Splits text into sentences at sentence-ending punctuation followed by white space or the end
/// (so "3.5" and "e.g.x" stay whole), or at any CJK sentence end. Empty sentences are dropped.
pub fn split_sentences(text: &str) -> Vec<Piece> {
    split(text, SENTENCE_ENDS)
}

/// Splits a sentence into clauses at commas, semicolons and colons, keeping the punctuation.
pub fn split_clauses(sentence: &str) -> Vec<Piece> {
    split(sentence, CLAUSE_ENDS)
}

/// The pieces a sentence is spoken in: its opening words and then the rest when `lead_words`
/// asks for a short first piece (see [`lead_in`]), else the sentence whole.
pub fn parts(sentence: &Piece, lead_words: usize) -> Vec<Piece> {
    match lead_in(sentence, lead_words) {
        Some((lead, rest)) => vec![lead, rest],
        None => vec![sentence.clone()],
    }
}

/// Words after which an English phrase rarely breaks: a first piece ends before one of them, so
/// that it ends on a word that carries meaning ("Streaming speech lets | a listener").
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "with", "by", "from", "and", "or",
    "but", "as", "that", "which", "while", "is", "are", "was", "were", "be", "it", "its", "this",
    "these", "those", "than", "into", "about",
];

/// Splits the opening words off a sentence, so that a listener hears them while the rest is
/// made: the first clause if it has at most `max_words` words, else the first `max_words` words
/// or fewer, ending before a function word where one is near. The lead ends in a comma, which
/// the voices read as "more to come" rather than as the end of a sentence. `None` when the
/// sentence is short enough to be a first piece itself, or has no spaces between its words.
pub fn lead_in(sentence: &Piece, max_words: usize) -> Option<(Piece, Piece)> {
    let words: Vec<&str> = sentence.text.split_whitespace().collect();
    if max_words == 0 || words.len() <= max_words + 1 {
        return None;
    }
    let ends_clause = |w: &str| w.ends_with(CLAUSE_ENDS);
    let bare = |w: &str| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    let take = (1..=max_words)
        .rev()
        .find(|&k| ends_clause(words[k - 1]))
        .or_else(|| {
            (2..=max_words)
                .rev()
                .find(|&k| FUNCTION_WORDS.contains(&bare(words[k]).as_str()))
        })
        .unwrap_or(max_words);
    let lead = words[..take].join(" ");
    let lead = lead.trim_end_matches(CLAUSE_ENDS);
    Some((
        Piece {
            text: lead.to_string(),
            punctuation: ",".into(),
        },
        Piece {
            text: words[take..].join(" "),
            punctuation: sentence.punctuation.clone(),
        },
    ))
}

/// Splits a long sentence in two at the clause boundary nearest its middle, so that the halves
/// can be spoken at the same time on two cores; `None` when it has fewer than `min_words` words
/// or a single clause. The first half keeps its clause's punctuation, which the voices read as
/// "more to come", and the second the sentence's.
pub fn halves(sentence: &Piece, min_words: usize) -> Option<(Piece, Piece)> {
    if sentence.text.split_whitespace().count() < min_words {
        return None;
    }
    let clauses = split_clauses(&sentence.text);
    if clauses.len() < 2 {
        return None;
    }
    let total: usize = clauses.iter().map(|c| c.text.chars().count()).sum();
    // The boundary after clause `k - 1` whose first half is nearest half the characters.
    let mut before = 0;
    let mut best = (usize::MAX, 1);
    for (k, clause) in clauses.iter().enumerate().take(clauses.len() - 1) {
        before += clause.text.chars().count();
        let off = (2 * before).abs_diff(total);
        if off < best.0 {
            best = (off, k + 1);
        }
    }
    let k = best.1;
    let join = |part: &[Piece]| {
        let mut text = String::new();
        for (i, clause) in part.iter().enumerate() {
            text.push_str(&clause.text);
            if i + 1 < part.len() {
                text.push_str(&clause.punctuation);
                text.push(' ');
            }
        }
        text
    };
    let punctuation = clauses[k - 1].punctuation.clone();
    Some((
        Piece {
            text: join(&clauses[..k]),
            punctuation,
        },
        Piece {
            text: join(&clauses[k..]),
            punctuation: sentence.punctuation.clone(),
        },
    ))
}

fn split(text: &str, ends: &[char]) -> Vec<Piece> {
    let chars: Vec<char> = text.chars().collect();
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if ends.contains(&c) {
            // Collect a run of closing punctuation such as "?!" or "...".
            let mut punct = String::new();
            let mut j = i;
            while j < chars.len() && (ends.contains(&chars[j]) || chars[j] == '.') {
                punct.push(chars[j]);
                j += 1;
            }
            let cjk = !c.is_ascii();
            let at_boundary = j >= chars.len() || chars[j].is_whitespace() || cjk;
            if at_boundary {
                push_piece(&mut pieces, &current, &punct);
                current.clear();
                i = j;
                continue;
            }
            current.push_str(&punct);
            i = j;
            continue;
        }
        current.push(c);
        i += 1;
    }
    push_piece(&mut pieces, &current, "");
    pieces
}

fn push_piece(pieces: &mut Vec<Piece>, text: &str, punctuation: &str) {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().any(|c| c.is_alphanumeric()) {
        pieces.push(Piece {
            text,
            punctuation: punctuation.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(pieces: &[Piece]) -> Vec<&str> {
        pieces.iter().map(|p| p.text.as_str()).collect()
    }

    #[test]
    fn sentences_split_at_terminal_punctuation() {
        let s = split_sentences("Hello there. How are you?! Fine...  Thanks");
        assert_eq!(texts(&s), ["Hello there", "How are you", "Fine", "Thanks"]);
        assert_eq!(s[1].punctuation, "?!");
        assert_eq!(s[3].punctuation, "");
    }

    #[test]
    fn decimals_and_inner_dots_do_not_split() {
        let s = split_sentences("It costs 3.5 dollars. Version 1.2.3 is out.");
        assert_eq!(texts(&s), ["It costs 3.5 dollars", "Version 1.2.3 is out"]);
    }

    #[test]
    fn chinese_punctuation_splits_without_spaces() {
        let s = split_sentences("今天天气很好。我们去公园吧！好吗？");
        assert_eq!(texts(&s), ["今天天气很好", "我们去公园吧", "好吗"]);
    }

    #[test]
    fn punctuation_only_text_gives_nothing() {
        assert!(split_sentences(" ... !? ").is_empty());
    }

    #[test]
    fn clauses_keep_their_punctuation() {
        let c = split_clauses("First, second; third");
        assert_eq!(texts(&c), ["First", "second", "third"]);
        assert_eq!(c[0].punctuation, ",");
        assert_eq!(c[1].punctuation, ";");
    }

    fn piece(text: &str) -> Piece {
        Piece {
            text: text.into(),
            punctuation: ".".into(),
        }
    }

    #[test]
    fn a_long_sentence_halves_at_the_clause_nearest_its_middle() {
        let sentence = piece(
            "First of all, the committee reviewed the proposal carefully, and after a long \
             discussion it agreed; then it went home",
        );
        let (first, second) = halves(&sentence, 12).unwrap();
        assert_eq!(
            first.text,
            "First of all, the committee reviewed the proposal carefully"
        );
        assert_eq!(first.punctuation, ",");
        assert_eq!(
            second.text,
            "and after a long discussion it agreed; then it went home"
        );
        assert_eq!(second.punctuation, ".");
        // Short sentences and sentences of one clause stay whole.
        assert_eq!(halves(&piece("Short, but with a comma"), 12), None);
        assert_eq!(
            halves(
                &piece("A long sentence without any comma in it goes on and on for a while"),
                12
            ),
            None
        );
    }

    #[test]
    fn a_lead_in_ends_before_a_function_word() {
        let sentence = piece("Streaming speech lets a listener hear the first words early");
        let (lead, rest) = lead_in(&sentence, 4).unwrap();
        assert_eq!(lead.text, "Streaming speech lets");
        assert_eq!(lead.punctuation, ",");
        assert_eq!(rest.text, "a listener hear the first words early");
        assert_eq!(rest.punctuation, ".");
    }

    #[test]
    fn a_lead_in_prefers_a_short_first_clause() {
        let sentence = piece("Well, the service splits the paragraph into sentences");
        let (lead, rest) = lead_in(&sentence, 4).unwrap();
        assert_eq!(lead.text, "Well");
        assert_eq!(rest.text, "the service splits the paragraph into sentences");
    }

    #[test]
    fn a_lead_in_without_function_words_takes_the_most_words() {
        let sentence = piece("Big red dogs bark loudly every single morning");
        let (lead, rest) = lead_in(&sentence, 4).unwrap();
        assert_eq!(lead.text, "Big red dogs bark");
        assert_eq!(rest.text, "loudly every single morning");
    }

    #[test]
    fn short_sentences_and_unspaced_text_have_no_lead_in() {
        assert_eq!(lead_in(&piece("Hello there my friend"), 4), None);
        assert_eq!(lead_in(&piece("今天天气很好我们去公园吧"), 4), None);
        assert_eq!(lead_in(&piece("One two three four five six"), 0), None);
    }
}
