//! The lexical rule every scan of raw model text shares (the pest grammar
//! is the authority; these scans run before or beside parsing: the nesting
//! bound, the formatter's comments, error recovery): a string is `"` up to
//! the next unescaped `"` or the line end (`\` escapes one byte), a comment
//! is `//` to the line end, and everything else is code.

use std::ops::Range;

/// What one step of the scan found.
enum Piece {
    Code(usize),
    String,
    Comment(Range<usize>),
}

/// The pieces of `b` in order.
fn pieces(b: &[u8]) -> impl Iterator<Item = Piece> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= b.len() {
            return None;
        }
        Some(match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                Piece::String
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let start = i;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                Piece::Comment(start..i)
            }
            _ => {
                i += 1;
                Piece::Code(i - 1)
            }
        })
    })
}

/// Byte ranges of the `//` comments of `b` (each to its line end, the `\n`
/// excluded).
pub fn comments(b: &[u8]) -> Vec<Range<usize>> {
    pieces(b)
        .filter_map(|p| match p {
            Piece::Comment(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// The bytes of `b` outside strings and comments, with their offsets.
pub fn code_bytes(b: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    pieces(b).filter_map(move |p| match p {
        Piece::Code(i) => Some((i, b[i])),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_hide_comment_marks_and_comments_hide_quotes() {
        let t = br#"a "x // y \" z" b // c "d"
e"#;
        let c = comments(t);
        assert_eq!(c.len(), 1);
        assert_eq!(&t[c[0].clone()], br#"// c "d""#);
        let code: String = code_bytes(t).map(|(_, b)| b as char).collect();
        assert_eq!(code, "a  b \ne");
        // A string ends at the line end even without its closing quote.
        assert_eq!(comments(b"\"open\n// next").len(), 1);
    }
}
