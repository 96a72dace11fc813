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
}
