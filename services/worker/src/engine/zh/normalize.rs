//! Chinese text normalisation: numbers, dates, times, percentages and phone numbers written as
//! the words a reader would say.

use std::sync::OnceLock;

use regex::{Captures, Regex};

const DIGITS: [&str; 10] = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九"];

/// Each digit on its own: years and codes.
pub fn digits(s: &str) -> String {
    s.chars()
        .filter_map(|c| c.to_digit(10).map(|d| DIGITS[d as usize]))
        .collect()
}

/// Phone numbers are read digit by digit, with 1 as 幺 so that it is not heard as 七.
fn phone(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '1' => Some("幺"),
            c => c.to_digit(10).map(|d| DIGITS[d as usize]),
        })
        .collect()
}

/// 1 to 9999 with 千, 百, 十 and inner zeros read as 零.
fn group(n: u64) -> String {
    const UNITS: [&str; 4] = ["千", "百", "十", ""];
    let ds = [n / 1000 % 10, n / 100 % 10, n / 10 % 10, n % 10];
    let mut out = String::new();
    let (mut started, mut zero) = (false, false);
    for (d, unit) in ds.iter().zip(UNITS) {
        if *d == 0 {
            zero |= started;
        } else {
            if zero {
                out.push('零');
                zero = false;
            }
            out.push_str(DIGITS[*d as usize]);
            out.push_str(unit);
            started = true;
        }
    }
    out
}

/// A whole number as it is counted: 12 → 十二, 105 → 一百零五, 20500 → 两万零五百 is read here
/// as 二万零五百.
pub fn cardinal(n: u64) -> String {
    if n == 0 {
        return "零".into();
    }
    let (yi, wan, ge) = (n / 100_000_000, n / 10_000 % 10_000, n % 10_000);
    let mut out = String::new();
    if yi > 0 {
        out.push_str(&cardinal(yi));
        out.push('亿');
    }
    if wan > 0 {
        if yi > 0 && wan < 1000 {
            out.push('零');
        }
        out.push_str(&group(wan));
        out.push('万');
    }
    if ge > 0 {
        if (yi > 0 || wan > 0) && (ge < 1000 || wan == 0) {
            out.push('零');
        }
        out.push_str(&group(ge));
    }
    // 10 to 19 at the start are 十, 十一 ..., not 一十.
    if out.starts_with("一十") {
        out.replace_range(.."一".len(), "");
    }
    out
}

/// A number as written: integer or decimal, possibly negative.
pub fn number(s: &str) -> String {
    let (sign, s) = match s.strip_prefix('-') {
        Some(rest) => ("负", rest),
        None => ("", s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int = int.replace(',', "");
    let whole = match int.parse::<u64>() {
        Ok(n) => cardinal(n),
        Err(_) => digits(&int),
    };
    if frac.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}点{}", digits(frac))
    }
}

/// A pattern and what its matches become.
type Rule = (Regex, fn(&Captures) -> String);

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rule = |pattern: &str, f: fn(&Captures) -> String| {
            (
                Regex::new(pattern).expect("normalisation patterns are valid"),
                f,
            )
        };
        vec![
            // 2024-03-05, 2024/3/5
            rule(r"([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})", |c| {
                format!("{}年{}月{}日", digits(&c[1]), number(&c[2]), number(&c[3]))
            }),
            // 15:30
            rule(r"([0-9]{1,2}):([0-9]{2})", |c| {
                let minutes = c[2].parse::<u64>().unwrap_or(0);
                if minutes == 0 {
                    format!("{}点", number(&c[1]))
                } else {
                    format!("{}点{}分", number(&c[1]), cardinal(minutes))
                }
            }),
            // 12.5%, -3%
            rule(r"(-?[0-9]+(?:\.[0-9]+)?)\s*[%％]", |c| {
                format!("百分之{}", number(&c[1]))
            }),
            // A year: 2024年
            rule(r"([0-9]{2,4})\s*年", |c| format!("{}年", digits(&c[1]))),
            // Phone numbers and other long digit strings are read digit by digit.
            rule(r"\+?[0-9]{3,4}-[0-9]{7,8}|\+?[0-9]{7,}", |c| phone(&c[0])),
            // Everything else that is a number.
            rule(r"-?[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?", |c| number(&c[0])),
        ]
    })
}

/// Full-width digits as ASCII ones, and the full-width `．：－／` between two digits as their
/// ASCII forms, so that `２０２４／３／５` and `１２．５％` are read like `2024/3/5` and `12.5%`.
/// Elsewhere those marks are the text's own punctuation and stay.
fn ascii_digits(text: &str) -> String {
    let chars: Vec<char> = text
        .chars()
        .map(|c| match c {
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            c => c,
        })
        .collect();
    let digit_at = |i: Option<usize>| {
        i.and_then(|i| chars.get(i))
            .is_some_and(char::is_ascii_digit)
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| match c {
            '．' | '：' | '－' | '／' if digit_at(i.checked_sub(1)) && digit_at(Some(i + 1)) => {
                char::from_u32(c as u32 - 0xFEE0).unwrap_or(c)
            }
            c => c,
        })
        .collect()
}

/// Rewrites every number in `text` as words. Digits are ASCII or full-width; other scripts'
/// digits are left as written rather than read as Chinese.
pub fn normalize(text: &str) -> String {
    let mut text = ascii_digits(text);
    for (pattern, replace) in rules() {
        text = pattern
            .replace_all(&text, |c: &Captures| replace(c))
            .into_owned();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cardinals_read_like_chinese() {
        for (n, words) in [
            (0, "零"),
            (7, "七"),
            (10, "十"),
            (12, "十二"),
            (20, "二十"),
            (105, "一百零五"),
            (1010, "一千零一十"),
            (2024, "二千零二十四"),
            (10000, "一万"),
            (10001, "一万零一"),
            (51000, "五万一千"),
            (50100, "五万零一百"),
            (100_001_000, "一亿零一千"),
            (150_000_000, "一亿五千万"),
        ] {
            assert_eq!(cardinal(n), words, "{n}");
        }
    }

    #[test]
    fn the_reference_sentence_is_all_words() {
        assert_eq!(
            normalize("2024年3月5日 下午3点 价格是12.5元"),
            "二零二四年三月五日 下午三点 价格是十二点五元"
        );
    }

    #[test]
    fn percentages_times_dates_and_phones() {
        assert_eq!(normalize("增长了12.5%"), "增长了百分之十二点五");
        assert_eq!(normalize("会议在15:30开始"), "会议在十五点三十分开始");
        assert_eq!(normalize("8:00"), "八点");
        assert_eq!(normalize("日期2024-03-05"), "日期二零二四年三月五日");
        assert_eq!(normalize("电话13812345678"), "电话幺三八幺二三四五六七八");
        assert_eq!(normalize("零下-5度"), "零下负五度");
        assert_eq!(normalize("共1,200人"), "共一千二百人");
    }

    #[test]
    fn full_width_digits_are_read() {
        // Found by the zh_normalize fuzz target: full-width digits matched the patterns but
        // were no digits to `to_digit`, so every one of them vanished from the text.
        assert_eq!(
            normalize("２０２４年共有３５％的人参加。"),
            "二零二四年共有百分之三十五的人参加。"
        );
        assert_eq!(normalize("１２．５元"), "十二点五元");
        assert_eq!(normalize("２０２４／３／５"), "二零二四年三月五日");
        assert_eq!(normalize("时间：１５：３０"), "时间：十五点三十分");
    }

    #[test]
    fn other_scripts_digits_are_left_as_written() {
        assert_eq!(normalize("第٣章"), "第٣章");
        assert_eq!(normalize("共٣5人"), "共٣五人");
    }
}
