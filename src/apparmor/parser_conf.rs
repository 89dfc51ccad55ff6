//! A `parser.conf` read exactly as `apparmor_parser` reads it (`getopt_long_file` in
//! `parser_main.c`, the same in 3.x and 4.x), so that what we decide from the node's file is
//! what the node's own parser does with it at boot.
//!
//! The parser reads the file with `fgets` into a 256-byte buffer: in pieces of at most 255
//! bytes, each ending after a newline or where the buffer is full. A long line is therefore
//! several pieces, and each piece is read as if it were a line of its own: an option after byte
//! 255 of a comment line takes effect. Per piece: leading blanks (space, tab) are skipped; a
//! piece whose next byte is `#` is a comment; otherwise the option name is the first token
//! between the delimiters space, tab, CR, LF and `=` (leading delimiters skipped), and its value
//! is the rest of the piece after the one delimiter that ended the name, leading blanks skipped
//! and one trailing newline removed (so `a # b` stays in a value, and so does a CR). A NUL ends
//! the piece's text, as in C. Bytes need not be UTF-8: a comment in Latin-1 is just a comment.
//! `tests/cli/parser_conf.rs` checks this reading against the 3.x and 4.x parsers themselves.

/// The most bytes one piece holds (`fgets(line, 256, f)`).
pub const PIECE_LEN: usize = 255;

/// One option the parser takes from its configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfOption {
    /// The option's name, as the parser compares it with its long option names.
    pub name: Vec<u8>,
    /// The value: everything the parser passes as the option's argument.
    pub value: Vec<u8>,
    /// Where the piece that holds it starts in the file, for messages.
    pub offset: usize,
    /// Whether that piece starts in the middle of a line (the line was longer than a piece).
    pub mid_line: bool,
}

impl ConfOption {
    /// The name for a message (not UTF-8 shown escaped).
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Every option the parser reads from `conf`, in order, whether or not the parser knows it.
pub fn options(conf: &[u8]) -> Vec<ConfOption> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut line_start = true;
    while at < conf.len() {
        let window = &conf[at..conf.len().min(at + PIECE_LEN)];
        let len = window
            .iter()
            .position(|&b| b == b'\n')
            .map_or(window.len(), |i| i + 1);
        let piece = &window[..len];
        let (offset, mid_line) = (at, !line_start);
        at += len;
        line_start = piece.last() == Some(&b'\n');
        // C string: the text ends at the first NUL.
        let piece = piece.split(|&b| b == 0).next().unwrap_or_default();
        if let Some((name, value)) = option_of(piece) {
            out.push(ConfOption {
                name: name.to_vec(),
                value: value.to_vec(),
                offset,
                mid_line,
            });
        }
    }
    out
}

/// `isblank`.
fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The delimiters of the option name (`strtok_r(pos, " \t\r\n=", &save)`).
fn delimiter(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'=')
}

/// One piece's option name and value, or `None` for a comment or a blank piece.
fn option_of(piece: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = &piece[piece.iter().take_while(|&&b| blank(b)).count()..];
    if rest.first() == Some(&b'#') {
        return None;
    }
    let start = rest.iter().position(|&b| !delimiter(b))?;
    let rest = &rest[start..];
    let name_len = rest
        .iter()
        .position(|&b| delimiter(b))
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    // The value starts after the one delimiter that ended the name.
    let mut value = &rest[(name_len + 1).min(rest.len())..];
    if !value.is_empty() {
        value = &value[value.iter().take_while(|&&b| blank(b)).count()..];
        if value.last() == Some(&b'\n') {
            value = &value[..value.len() - 1];
        }
    }
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An option as the tests spell it: name, value, in the middle of a line.
    type Read = (String, String, bool);

    fn read(conf: &[u8]) -> Vec<Read> {
        options(conf)
            .into_iter()
            .map(|o| {
                (
                    o.name_lossy(),
                    String::from_utf8_lossy(&o.value).into_owned(),
                    o.mid_line,
                )
            })
            .collect()
    }

    fn opt(name: &str, value: &str) -> Read {
        (name.into(), value.into(), false)
    }

    #[test]
    fn lines_as_the_parser_reads_them() {
        let cases: &[(&[u8], &[Read])] = &[
            (b"", &[]),
            (b"# a comment\n\n   \t\n", &[]),
            (b"  \t# indented comment\n", &[]),
            (
                b"policy-features=/usr/share/apparmor-features/features\n",
                &[opt(
                    "policy-features",
                    "/usr/share/apparmor-features/features",
                )],
            ),
            // `#` after the start is part of the value; a CR stays in it too.
            (
                b"policy-features=/a # b\n",
                &[opt("policy-features", "/a # b")],
            ),
            (b"policy-features /a\r\n", &[opt("policy-features", "/a\r")]),
            // Only the one delimiter that ended the name is skipped, then blanks.
            (b"policy-features = /a\n", &[opt("policy-features", "= /a")]),
            (b"==quiet\n", &[opt("quiet", "")]),
            (b"quiet", &[opt("quiet", "")]),
            (
                b"write-cache\nComplain\n",
                &[opt("write-cache", ""), opt("Complain", "")],
            ),
            // Non-UTF-8 comments are comments; a NUL ends the piece's text.
            (b"# caf\xe9\nquiet\n", &[opt("quiet", "")]),
            (b"qu\0iet\n", &[opt("qu", "")]),
        ];
        for (conf, want) in cases {
            assert_eq!(read(conf), *want, "{:?}", String::from_utf8_lossy(conf));
        }
    }

    #[test]
    fn a_long_line_is_read_in_pieces_of_255_bytes() {
        // 255 bytes of comment, then `Complain` on the same line: a piece of its own.
        let mut conf = vec![b'#'];
        conf.extend([b'x'; PIECE_LEN - 1]);
        conf.extend(b"Complain\n");
        assert_eq!(read(&conf), [("Complain".into(), String::new(), true)]);
        assert_eq!(options(&conf)[0].offset, PIECE_LEN);
        // One byte more and the second piece starts with an `x`: an (unknown) option `xComplain`.
        let mut conf = vec![b'#'];
        conf.extend([b'x'; PIECE_LEN]);
        conf.extend(b"Complain\n");
        assert_eq!(read(&conf), [("xComplain".into(), String::new(), true)]);
        // A line of exactly 255 bytes and its newline: the newline is a blank piece.
        let mut conf = vec![b'#'];
        conf.extend([b'x'; PIECE_LEN - 1]);
        conf.extend(b"\nquiet\n");
        assert_eq!(read(&conf), [opt("quiet", "")]);
        // A value is cut at the piece's end, and the rest is read as an option of its own.
        let mut conf = b"policy-features=/".to_vec();
        conf.extend([b'p'; PIECE_LEN - 17]);
        conf.extend(b"Include=/x\n");
        let got = read(&conf);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.len(), PIECE_LEN - 16);
        assert_eq!(got[1], ("Include".into(), "/x".into(), true));
    }
}
