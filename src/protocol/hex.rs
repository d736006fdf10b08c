//! Bytes as text and back: the one format of bytes in every log line, API answer and setting.

use std::fmt::Write as _;

/// A string that is not hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hex: {0}")]
pub struct HexError(String);

/// Parses "01 03 07 D0 00 01", "0103 07d0", "01:03..." (whitespace, colons and dashes
/// ignored, case-insensitive). An empty or separator-only string is an empty vector, so an
/// empty `reply = ""` in the settings means "no bytes".
pub fn parse_hex(s: &str) -> Result<Vec<u8>, HexError> {
    let mut digits = Vec::with_capacity(s.len());
    for (pos, c) in s.char_indices() {
        if c.is_whitespace() || c == ':' || c == '-' {
            continue;
        }
        match c.to_digit(16) {
            // to_digit(16) is at most 15, so the cast is lossless.
            Some(d) => digits.push(d as u8),
            None => {
                return Err(HexError(format!(
                    "invalid character {c:?} at position {pos} in {s:?}"
                )))
            }
        }
    }
    if digits.len() % 2 != 0 {
        return Err(HexError(format!(
            "odd number of hex digits ({}) in {s:?}",
            digits.len()
        )));
    }
    Ok(digits
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => (hi << 4) | lo,
            _ => 0, // chunks_exact(2) never yields another length
        })
        .collect())
}

/// "01 03 07 D0": uppercase, space separated; the one format of bytes in every log line.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02X}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        parse_hex(s).unwrap()
    }

    #[test]
    fn parse_hex_forms() {
        assert_eq!(h("01 03 07 D0 00 01"), vec![1, 3, 7, 0xD0, 0, 1]);
        assert_eq!(h("0103 07d0"), vec![1, 3, 7, 0xD0]);
        assert_eq!(h("01:03:07:d0"), vec![1, 3, 7, 0xD0]);
        assert_eq!(h("01-03-07-D0"), vec![1, 3, 7, 0xD0]);
        assert_eq!(h(" 01\t03\n"), vec![1, 3]);
        assert_eq!(h(""), Vec::<u8>::new());
        assert!(matches!(parse_hex("013"), Err(HexError(_))));
        assert!(matches!(parse_hex("0g"), Err(HexError(_))));
        assert!(matches!(parse_hex("0x01"), Err(HexError(_))));
        assert!(matches!(parse_hex("é1"), Err(HexError(_))));
    }
    #[test]
    fn to_hex_format() {
        assert_eq!(to_hex(&[1, 3, 7, 0xD0]), "01 03 07 D0");
        assert_eq!(to_hex(&[]), "");
        assert_eq!(to_hex(&[0xab]), "AB");
    }
}
