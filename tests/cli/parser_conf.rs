//! `src/apparmor/parser_conf.rs` against the parsers themselves: the node's `parser.conf` must
//! mean to `copy` what it means to the node's own `apparmor_parser` at boot. Each case is a
//! `parser.conf` given to the real 3.0 parser (bookworm's, installed here) and the real 4.1
//! parser (trixie's, from the `.deb`s `tests/vm/prepare.sh` caches), with `--config-file`.
//! The parser shows how it read the file: an option it does not know prints `unknown option
//! (NAME)`, `version` prints its version and stops, `policy-features=V` tries to load `V`
//! (which does not exist here) and stops naming it. Our reading must predict exactly that.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use apparmor_profile_loader::parser_conf::{self, PIECE_LEN};

use crate::support::{self, real_parser};

/// What a parser run shows of its reading of a `parser.conf`, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Unknown(Vec<u8>),
    Version,
    Pin(Vec<u8>),
}

/// A command line that runs one parser.
struct Parser {
    name: &'static str,
    argv: Vec<OsString>,
    _tree: Option<tempfile::TempDir>,
}

/// Trixie's 4.1 parser (`support::parser_41`) as a command line.
fn parser_41() -> Option<Parser> {
    let p = support::parser_41()?;
    Some(Parser {
        name: "apparmor_parser 4.1",
        argv: p.argv,
        _tree: Some(p.tree),
    })
}

/// What `parser` shows of its reading of `conf`.
fn parser_reads(parser: &Parser, conf: &[u8], dir: &Path) -> Vec<Seen> {
    let conf_path = dir.join("parser.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let profile = dir.join("probe");
    std::fs::write(&profile, "profile probe {\n}\n").unwrap();
    let mut arg = OsString::from("--config-file=");
    arg.push(&conf_path);
    let out = Command::new(&parser.argv[0])
        .args(&parser.argv[1..])
        .arg(arg)
        .args(["--skip-kernel-load", "--skip-cache", "-o", "/dev/null"])
        .arg(&profile)
        .output()
        .unwrap();
    let mut seen = Vec::new();
    for line in out.stderr.split(|&b| b == b'\n') {
        if let Some(at) = find(line, b"unknown option (") {
            let rest = &line[at + b"unknown option (".len()..];
            let end = rfind(rest, b") in config file.").expect("the parser's message");
            seen.push(Seen::Unknown(rest[..end].to_vec()));
        } else if let Some(at) = find(line, b"Failed to load policy-features from '") {
            let rest = &line[at + b"Failed to load policy-features from '".len()..];
            let end = rfind(rest, b"': ").expect("the parser's message");
            seen.push(Seen::Pin(rest[..end].to_vec()));
        }
    }
    if find(&out.stdout, b"AppArmor parser version").is_some() {
        seen.push(Seen::Version);
    }
    seen
}

/// What our reading predicts the parser shows: every option up to the first one that stops it.
fn we_read(conf: &[u8]) -> Vec<Seen> {
    let mut seen = Vec::new();
    for option in parser_conf::options(conf) {
        match option.name.as_slice() {
            b"version" => {
                seen.push(Seen::Version);
                break;
            }
            b"policy-features" => {
                seen.push(Seen::Pin(option.value));
                break;
            }
            _ => seen.push(Seen::Unknown(option.name)),
        }
    }
    seen
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Files built to hit every rule of the reading: a comment line longer than a piece (the rest
/// is read as options), a value with `#` and CR in it, blanks, leading `=`, a NUL, bytes that
/// are not UTF-8, a value cut at the piece's end. Only `version`, `policy-features` and names
/// no parser knows appear, so what each parser prints shows its whole reading.
fn cases() -> Vec<Vec<u8>> {
    let x = |n| vec![b'x'; n];
    vec![
        cat(&[b"#", &x(PIECE_LEN - 1), b"version\n"]),
        cat(&[b"#", &x(PIECE_LEN), b"version\n"]),
        cat(&[b"#", &x(300), b"\nversion\n"]),
        cat(&[b"# a", &x(600), b" junk more\nversion\n"]),
        b"policy-features=/nonexistent-a # not a comment\n".to_vec(),
        b"policy-features /nonexistent-b\r\n".to_vec(),
        b"==junk  value\npolicy-features = /nonexistent-c\n".to_vec(),
        b"  \t# caf\xe9 in Latin-1\n\xff\xfejunk=1\nversion\n".to_vec(),
        b"ju\0nk\nversion".to_vec(),
        b"\n\t\n   junk\n\tversion\n".to_vec(),
        cat(&[b"policy-features=/", &vec![b'p'; PIECE_LEN - 17], b"junk\n"]),
        cat(&[&x(PIECE_LEN), b"version\n"]),
        b"junk".to_vec(),
    ]
}

#[test]
fn parser_conf_is_read_exactly_as_the_3x_and_41_parsers_read_it() {
    let Some(p30) = real_parser() else { return };
    let Some(p41) = parser_41() else { return };
    let parsers = [
        Parser {
            name: "apparmor_parser 3.0",
            argv: vec![p30.into()],
            _tree: None,
        },
        p41,
    ];
    let dir = tempfile::tempdir().unwrap();
    for conf in cases() {
        let want = we_read(&conf);
        assert!(!want.is_empty(), "each case shows something");
        for parser in &parsers {
            assert_eq!(
                parser_reads(parser, &conf, dir.path()),
                want,
                "{} reads {:?} otherwise than parser_conf",
                parser.name,
                String::from_utf8_lossy(&conf)
            );
        }
    }
}
