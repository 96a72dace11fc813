//! One pinyin syllable (tone number at the end, 5 or none for the neutral tone) to IPA with
//! Kokoro's tone arrows: ˥ → `→`, ˧˥ → `↗`, ˧˩˧ → `↓`, ˥˩ → `↘`. The arrow follows the
//! syllable's vowels, before a final nasal.

const INITIALS: &[(&str, &str)] = &[
    ("zh", "ʈʂ"),
    ("ch", "ʈʂʰ"),
    ("sh", "ʂ"),
    ("b", "p"),
    ("p", "pʰ"),
    ("m", "m"),
    ("f", "f"),
    ("d", "t"),
    ("t", "tʰ"),
    ("n", "n"),
    ("l", "l"),
    ("g", "k"),
    ("k", "kʰ"),
    ("h", "x"),
    ("j", "tɕ"),
    ("q", "tɕʰ"),
    ("x", "ɕ"),
    ("r", "ɻ"),
    ("z", "ts"),
    ("c", "tsʰ"),
    ("s", "s"),
];

const FINALS: &[(&str, &str)] = &[
    ("a", "a"),
    ("o", "o"),
    ("e", "ɤ"),
    ("ê", "ɛ"),
    ("ai", "ai"),
    ("ei", "ei"),
    ("ao", "au"),
    ("ou", "ou"),
    ("an", "an"),
    ("en", "ən"),
    ("ang", "aŋ"),
    ("eng", "əŋ"),
    ("ong", "ʊŋ"),
    ("er", "ɚ"),
    ("i", "i"),
    ("ia", "ja"),
    ("ie", "jɛ"),
    ("iao", "jau"),
    ("iu", "jou"),
    ("ian", "jɛn"),
    ("in", "in"),
    ("iang", "jaŋ"),
    ("ing", "iŋ"),
    ("iong", "jʊŋ"),
    ("u", "u"),
    ("ua", "wa"),
    ("uo", "wo"),
    ("uai", "wai"),
    ("ui", "wei"),
    ("uan", "wan"),
    ("un", "wən"),
    ("uang", "waŋ"),
    ("ueng", "wəŋ"),
    ("ü", "y"),
    ("üe", "ɥɛ"),
    ("üan", "ɥɛn"),
    ("ün", "yn"),
    // Interjections such as 嗯 and 呣.
    ("m", "m"),
    ("n", "n"),
    ("ng", "ŋ"),
];

/// Spellings with y and w, rewritten to the finals they stand for.
const ZERO_INITIAL: &[(&str, &str)] = &[
    ("yi", "i"),
    ("ya", "ia"),
    ("ye", "ie"),
    ("yao", "iao"),
    ("you", "iu"),
    ("yan", "ian"),
    ("yin", "in"),
    ("yang", "iang"),
    ("ying", "ing"),
    ("yong", "iong"),
    ("yu", "ü"),
    ("yue", "üe"),
    ("yuan", "üan"),
    ("yun", "ün"),
    ("wu", "u"),
    ("wa", "ua"),
    ("wo", "uo"),
    ("wai", "uai"),
    ("wei", "ui"),
    ("wan", "uan"),
    ("wen", "un"),
    ("wang", "uang"),
    ("weng", "ueng"),
];

fn lookup<'a>(table: &'a [(&str, &'a str)], key: &str) -> Option<&'a str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn arrow(tone: u8) -> Option<char> {
    match tone {
        1 => Some('→'),
        2 => Some('↗'),
        3 => Some('↓'),
        4 => Some('↘'),
        _ => None,
    }
}

/// IPA of one syllable such as `zhong1`, `lü4` (or `lv4`) or `ma` (neutral); `None` for
/// something that is not a pinyin syllable.
pub fn syllable(pinyin: &str) -> Option<String> {
    let pinyin = pinyin.trim().to_lowercase().replace('v', "ü");
    let (body, tone) = match pinyin.chars().last()? {
        d @ '0'..='9' => (&pinyin[..pinyin.len() - 1], d.to_digit(10)? as u8),
        _ => (pinyin.as_str(), 5),
    };
    let (initial, final_) = split(body)?;
    let mut final_ = final_.to_string();
    if matches!(initial, "j" | "q" | "x") && final_.starts_with('u') {
        final_ = final_.replacen('u', "ü", 1);
    }
    let initial_ipa = if initial.is_empty() {
        ""
    } else {
        lookup(INITIALS, initial)?
    };
    let final_ipa = match (initial, final_.as_str()) {
        // The "apical vowel" of zhi, chi, shi, ri, zi, ci, si.
        ("zh" | "ch" | "sh" | "r" | "z" | "c" | "s", "i") => "ɨ",
        ("b" | "p" | "m" | "f", "o") => "wo",
        _ => lookup(FINALS, &final_)?,
    };
    let mut ipa = format!("{initial_ipa}{final_ipa}");
    if let Some(arrow) = arrow(tone) {
        let at = if ipa.len() > 1
            && (ipa.ends_with('n') || ipa.ends_with('ŋ'))
            && !final_ipa.chars().all(|c| c == 'n' || c == 'ŋ')
        {
            ipa.len() - ipa.chars().last().map_or(0, char::len_utf8)
        } else {
            ipa.len()
        };
        ipa.insert(at, arrow);
    }
    Some(ipa)
}

/// Splits a syllable into initial and final, rewriting y- and w- spellings.
fn split(body: &str) -> Option<(&'static str, String)> {
    if let Some(final_) = lookup(ZERO_INITIAL, body) {
        return Some(("", final_.to_string()));
    }
    // Syllabic nasals (嗯 ng, 呣 m) would otherwise parse as an initial with nothing after it.
    if matches!(body, "m" | "n" | "ng") {
        return Some(("", body.to_string()));
    }
    for (initial, _) in INITIALS {
        if let Some(rest) = body.strip_prefix(initial)
            && !rest.is_empty()
        {
            return Some((initial, rest.to_string()));
        }
    }
    lookup(FINALS, body).map(|_| ("", body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::syllable;

    #[test]
    fn syllables_map_to_ipa_with_tone_arrows() {
        for (py, ipa) in [
            ("jin1", "tɕi→n"),
            ("tian1", "tʰjɛ→n"),
            ("qi4", "tɕʰi↘"),
            ("hen3", "xə↓n"),
            ("hao3", "xau↓"),
            ("wo3", "wo↓"),
            ("men5", "mən"),
            ("men", "mən"),
            ("qu4", "tɕʰy↘"),
            ("gong1", "kʊ→ŋ"),
            ("yuan2", "ɥɛ↗n"),
            ("san4", "sa↘n"),
            ("bu4", "pu↘"),
            ("ba", "pa"),
            ("zhi1", "ʈʂɨ→"),
            ("si4", "sɨ↘"),
            ("lü4", "ly↘"),
            ("lv4", "ly↘"),
            ("xue2", "ɕɥɛ↗"),
            ("er2", "ɚ↗"),
            ("ng2", "ŋ↗"),
            ("zhuang4", "ʈʂwa↘ŋ"),
        ] {
            assert_eq!(syllable(py).as_deref(), Some(ipa), "{py}");
        }
    }

    #[test]
    fn non_syllables_are_refused() {
        assert_eq!(syllable("xyz1"), None);
        assert_eq!(syllable(""), None);
    }
}
