//! Names of people and recipients: how they are compared and how they are shown.
//!
//! Two declared names are the same person when their normalised forms are equal:
//! Unicode NFKC (a no-break space becomes a space, full-width letters plain ones), then
//! lower case, then every run of white space collapsed to one space and the ends trimmed.
//! Invisible and control characters (zero-width space, bidirectional overrides, soft
//! hyphen, ...) are refused outright: they make two names look alike on screen while
//! comparing different.

use unicode_normalization::UnicodeNormalization;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing visible is left.
    #[error("is empty")]
    Empty,
    /// It holds a control or invisible character.
    #[error("holds the invisible or control character U+{:04X}; type the name with visible characters only", u32::from(*.0))]
    Invisible(char),
}

/// Whether `c` is a control character or one that renders as nothing (format characters,
/// zero-width joiners, fillers, variation selectors, tag characters).
pub fn is_invisible(c: char) -> bool {
    if c.is_control() {
        // White space controls (tab, newline) are refused too: a name is one line.
        return true;
    }
    matches!(u32::from(c),
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF9..=0xFFFB | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// The form two names are compared in (see the module docs). Refuses names with invisible
/// or control characters and names with nothing visible.
pub fn normalise(name: &str) -> Result<String, NameError> {
    if let Some(c) = name.chars().find(|&c| is_invisible(c)) {
        return Err(NameError::Invisible(c));
    }
    let folded: String = name.nfkc().collect::<String>().to_lowercase();
    let out = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.is_empty() {
        return Err(NameError::Empty);
    }
    Ok(out)
}

/// Whether two names denote the same person (their normalised forms are equal). A name
/// that cannot be normalised is treated as matching nothing.
pub fn same_name(a: &str, b: &str) -> bool {
    matches!((normalise(a), normalise(b)), (Ok(x), Ok(y)) if x == y)
}

/// `s` made safe to print on a terminal: control and invisible characters are shown as
/// `\u{...}` escapes, everything else as is.
pub fn escape_for_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_invisible(c) || c == '\\' {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookalike_names_are_the_same_person() {
        for other in
            ["pc smith", "PC  Smith", " PC Smith ", "PC\u{a0}Smith", "ＰＣ Ｓｍｉｔｈ", "PC\u{2003}SMITH"]
        {
            assert!(same_name("PC Smith", other), "{other:?}");
        }
        assert!(!same_name("PC Smith", "PC Smyth"));
        assert!(!same_name("PC Smith", "Insp. Jones"));
    }

    #[test]
    fn invisible_characters_are_refused() {
        assert_eq!(normalise("PC\u{200b}Smith"), Err(NameError::Invisible('\u{200b}')));
        assert_eq!(normalise("PC Smith\u{202e}"), Err(NameError::Invisible('\u{202e}')));
        assert_eq!(normalise("PC\tSmith"), Err(NameError::Invisible('\t')));
        assert_eq!(normalise("a\u{ad}b"), Err(NameError::Invisible('\u{ad}')));
        assert_eq!(normalise("  \u{a0} "), Err(NameError::Empty));
        assert!(!same_name("PC Smith", "PC\u{200b} Smith"));
        assert_eq!(normalise("Zoë  O'Brien").unwrap(), "zoë o'brien");
    }

    #[test]
    fn terminal_escaping_shows_hidden_characters() {
        assert_eq!(escape_for_terminal("a\u{1b}[2Jb\u{200b}"), "a\\u{1b}[2Jb\\u{200b}");
        assert_eq!(escape_for_terminal("plain name"), "plain name");
    }
}
