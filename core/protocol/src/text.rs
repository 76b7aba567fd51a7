//! Text that came from an untrusted side (a guest's error message, an
//! image's Cmd, a pod's name) on its way to an operator's terminal or log:
//! control characters are escaped, never printed raw, so it cannot move the
//! cursor, retitle the window or hide a line.

use std::borrow::Cow;
use std::fmt::Write;

/// Longest guest-provided message the host keeps, in characters.
pub const MAX_GUEST_TEXT: usize = 1024;

/// `s` with every control character (C0, DEL, C1) and backslash escaped
/// as Docker's `ps` shows them (`\x1b`, `\x00`, `\u{85}`, `\\`); other text
/// is unchanged and borrowed.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Bidirectional overrides and isolates, which reorder what a terminal
/// shows (the "Trojan Source" trick).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// A message from the guest as the host keeps it: control and bidi
/// characters escaped, at most [`MAX_GUEST_TEXT`] characters of the
/// original, and a note of how much was cut.
pub fn guest_text(s: &str) -> String {
    let total = s.chars().count();
    let kept: String = s
        .chars()
        .take(MAX_GUEST_TEXT)
        .map(|c| if is_bidi_control(c) { '\u{fffd}' } else { c })
        .collect();
    let mut out = escape_control(&kept).into_owned();
    if total > MAX_GUEST_TEXT {
        let _ = write!(out, " … ({} more characters cut)", total - MAX_GUEST_TEXT);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_control("sleep 10"), "sleep 10");
        assert!(matches!(escape_control("héllo"), Cow::Borrowed(_)));
        let hostile = "echo \x1b]0;pwned\x07\x00\x7f\u{9b}2J\r\nx\\";
        let shown = escape_control(hostile);
        assert_eq!(
            shown,
            "echo \\x1b]0;pwned\\x07\\x00\\x7f\\u{9b}2J\\r\\nx\\\\"
        );
        assert!(!shown.chars().any(|c| c.is_control()));
    }

    #[test]
    fn guest_text_is_bounded_printable_and_says_what_was_cut() {
        assert_eq!(guest_text("no such file"), "no such file");
        let hostile = format!("\x1b[2J\u{202e}{}", "x".repeat(5000));
        let kept = guest_text(&hostile);
        assert!(kept.starts_with("\\x1b[2J\u{fffd}x"), "{kept}");
        let cut = hostile.chars().count() - MAX_GUEST_TEXT;
        assert!(
            kept.ends_with(&format!("({cut} more characters cut)")),
            "{kept}"
        );
        assert!(!kept.chars().any(|c| c.is_control() || is_bidi_control(c)));
        assert!(kept.chars().count() < MAX_GUEST_TEXT + 64);
    }
}
