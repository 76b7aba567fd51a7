//! Text from pods and images (an image's Cmd, a pod's name) shown on the
//! operator's terminal: control characters are escaped, never printed raw,
//! so an image cannot move the cursor, retitle the window or hide a line.

use std::borrow::Cow;
use std::fmt::Write;

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
}
