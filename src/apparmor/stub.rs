//! Deny-everything stubs: a profile file declaring an empty profile for each name, the hash the
//! kernel will give one stub (from the very bytes the parser compiles it to), and loading them.
//!
//! `load` replaces a child profile or hat that its parent no longer defines by such a stub (see
//! `profile::neutralise`). Names are plain strings here: which names need a stub, and whether
//! the kernel shows it, is decided above this layer.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::apparmor::parser::{Cache, Parser, ParserError, ParserInput};
use crate::apparmor::policy_blob;

/// Why a stub could not be written, compiled, read back or loaded.
#[derive(Debug, thiserror::Error)]
pub enum StubError {
    #[error("cannot create a temporary file in {dir}: {source}")]
    CreateStub {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteStub {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parser(ParserError),
    #[error("cannot read the compiled stub {path}: {source}")]
    ReadStub {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Blob(policy_blob::BadBlob),
}

/// The hash the kernel will give the stub of `name`, or why no stub can express that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StubHash {
    /// The compiled stub holds exactly one profile of exactly that name, with this hash.
    Hash(String),
    /// The parser refuses the stub, or reads it as another name.
    Unexpressible(String),
}

/// The hash the kernel will give the stub of `name`, from the bytes the parser compiles it to
/// ([`StubHash::Unexpressible`] when those bytes do not hold exactly one profile of exactly
/// that name). The stub and its compiled policy are temporary files in `dir`.
pub fn stub_hash(dir: &Path, parser: &Parser, name: &str) -> Result<StubHash, StubError> {
    let stub = stub_file(dir, &[name])?;
    let out = stub_temp(dir)?;
    match parser.compile_to(&Stubs(stub.path()), out.path()) {
        Ok(()) => {}
        Err(e @ ParserError::Failed { .. }) => {
            return Ok(StubHash::Unexpressible(format!(
                "the parser refuses its stub: {e}"
            )));
        }
        Err(e) => return Err(StubError::Parser(e)),
    }
    let blob = std::fs::read(out.path()).map_err(|source| StubError::ReadStub {
        path: out.path().to_path_buf(),
        source,
    })?;
    let profiles = policy_blob::profile_hashes(&blob).map_err(StubError::Blob)?;
    Ok(match profiles.as_slice() {
        [(got, hash)] if got == name => StubHash::Hash(hash.clone()),
        _ => StubHash::Unexpressible(format!(
            "the parser reads its stub as {:?}, not as this name",
            profiles.iter().map(|(n, _)| n).collect::<Vec<_>>()
        )),
    })
}

/// Loads the stubs of `names` into the kernel in one parser call (replacing what is loaded under
/// those names), bypassing the cache.
pub fn load_stubs(dir: &Path, parser: &Parser, names: &[&str]) -> Result<(), StubError> {
    let stub = stub_file(dir, names)?;
    parser
        .replace(&[Stubs(stub.path())], Cache::Skip)
        .map_err(StubError::Parser)
}

/// The text of a profile file declaring an empty (deny-everything) profile for each name.
pub fn stub_text(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("profile {} {{\n}}\n", quote_name(n)))
        .collect()
}

/// Prefix of every stub file and compiled stub: a dot-file (the host's parser skips those), and
/// distinct from the prefix of `host::atomic_file`'s temporary files.
const STUB_PREFIX: &str = ".apparmor-profile-loader.stub-";

/// Random letters and digits after [`STUB_PREFIX`] (what every release has written, so a
/// cleanup finds the files an older one left too).
const STUB_RANDOM_LEN: usize = 6;

/// Whether `name` is a stub file or compiled stub of ours: [`STUB_PREFIX`] then exactly
/// [`STUB_RANDOM_LEN`] ASCII letters and digits. Nothing else matches, so a cleanup of the ones
/// a killed run left behind never touches a file that is not ours.
pub fn is_stub_temp_name(name: &str) -> bool {
    name.strip_prefix(STUB_PREFIX).is_some_and(|rest| {
        rest.len() == STUB_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// An empty temporary file for a stub or its compiled policy, created exclusively under an
/// unpredictable name in `dir` (one [`is_stub_temp_name`] claims). Removed when dropped, unless
/// the process is killed first.
fn stub_temp(dir: &Path) -> Result<tempfile::NamedTempFile, StubError> {
    tempfile::Builder::new()
        .prefix(STUB_PREFIX)
        .rand_bytes(STUB_RANDOM_LEN)
        .tempfile_in(dir)
        .map_err(|source| StubError::CreateStub {
            dir: dir.to_path_buf(),
            source,
        })
}

/// [`stub_text`] for `names`, in a temporary file of its own (created exclusively, with an
/// unpredictable name) in `dir`.
fn stub_file(dir: &Path, names: &[&str]) -> Result<tempfile::NamedTempFile, StubError> {
    let mut file = stub_temp(dir)?;
    file.write_all(stub_text(names).as_bytes())
        .map_err(|source| StubError::WriteStub {
            path: file.path().to_path_buf(),
            source,
        })?;
    Ok(file)
}

/// The stub file, as the parser's input.
struct Stubs<'a>(&'a Path);

impl ParserInput for Stubs<'_> {
    fn key(&self) -> &str {
        "(deny-everything stubs for children that left the ConfigMap)"
    }
    fn path(&self) -> &Path {
        self.0
    }
}

/// A profile name in a `profile` statement, quoted. The parser keeps a backslash in a quoted
/// name as it is (`"a\\b"` is the name `a\\b`, not `a\b`) but reads `\"` as a quote and other
/// escapes (`\t`, `\101`) as the character they stand for: so only quotes are escaped, and
/// whether the parser reads back exactly the name is checked on the compiled stub
/// ([`stub_hash`]), never assumed.
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_for_the_stub() {
        assert_eq!(quote_name("a b"), "\"a b\"");
        assert_eq!(quote_name("x\"y"), "\"x\\\"y\"");
        // The parser keeps a backslash in a quoted name: it is not doubled.
        assert_eq!(quote_name("p//a\\b"), "\"p//a\\b\"");
    }

    #[test]
    fn the_stub_declares_one_empty_profile_per_name_in_order() {
        assert_eq!(
            stub_text(&["p//kid", "p//^hat", "p//a b", "p//x\"y"]),
            "profile \"p//kid\" {\n}\n\
             profile \"p//^hat\" {\n}\n\
             profile \"p//a b\" {\n}\n\
             profile \"p//x\\\"y\" {\n}\n"
        );
        assert_eq!(stub_text(&[]), "");
    }

    #[test]
    fn the_stub_file_holds_the_stub_text_under_a_hidden_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = stub_file(dir.path(), &["p//kid"]).unwrap();
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "profile \"p//kid\" {\n}\n"
        );
        let name = file.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".apparmor-profile-loader.stub-"), "{name}");
        assert!(is_stub_temp_name(name), "{name}");
        assert_eq!(file.path().parent(), Some(dir.path()));
    }

    #[test]
    fn stub_temp_name_pattern_matches_only_our_stub_files() {
        let ours = [
            ".apparmor-profile-loader.stub-a1B2c3",
            ".apparmor-profile-loader.stub-ZZZZZZ",
            ".apparmor-profile-loader.stub-000000",
        ];
        for name in ours {
            assert!(is_stub_temp_name(name), "{name}");
        }
        let theirs = [
            "alpha",
            "loaded.json",
            ".apparmor-profile-loader.stub-",
            ".apparmor-profile-loader.stub-a1B2c",
            ".apparmor-profile-loader.stub-a1B2c3d",
            ".apparmor-profile-loader.stub-a1B2c-",
            ".apparmor-profile-loader.stub-a1B2c3.bak",
            ".apparmor-profile-loader.stubx-a1B2c3",
            ".apparmor-profile-loader.stuba1B2c3",
            "apparmor-profile-loader.stub-a1B2c3",
            "x.apparmor-profile-loader.stub-a1B2c3",
            // `host::atomic_file`'s temporary files are its own to clean.
            ".apparmor-profile-loader.tmp-0123456789abcdef",
            ".apparmor-profile-loader.tmp-a1B2c3",
        ];
        for name in theirs {
            assert!(!is_stub_temp_name(name), "{name}");
        }
    }
}
