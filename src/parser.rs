//! `apparmor_parser`: the only program that turns profile text into kernel policy.
//!
//! We never interpret profile syntax ourselves. Whether a file compiles, which profile names it
//! defines (`--names`) and which mode each asks for (the parser's debug dump) all come from the
//! parser, so our view of a profile is the kernel's view.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::state::Inventory;

/// Where `apparmor_parser` usually lives when it is not on `PATH` (non-root `PATH`s often
/// lack the `sbin` directories).
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin"];

/// How to run the parser: the same options for checking, loading and removing.
#[derive(Debug, Clone)]
pub struct Parser {
    pub binary: PathBuf,
    /// `--base`: where `#include <abstractions/…>` resolve.
    pub base: PathBuf,
    /// Extra `--Include` search directories.
    pub includes: Vec<PathBuf>,
    /// `--jobs` for the compile, and how many files are described at once.
    pub jobs: usize,
}

/// A profile file to check: its key (the file name on the host), where it is, and the hash of
/// its content (to recognise files a record already describes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInput {
    pub key: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// A profile file as the parser sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledProfile {
    pub key: String,
    pub path: PathBuf,
    /// Every profile the file defines, from `--names` (children as `parent//child`).
    pub names: Vec<String>,
    /// The mode each top-level profile asks for (`enforce` unless its flags say otherwise).
    pub modes: BTreeMap<String, String>,
}

/// One file the parser refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    pub key: String,
    pub line: Option<u32>,
    pub message: String,
}

impl std::fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "profile {:?} line {line}: {}", self.key, self.message),
            None => write!(f, "profile {:?}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParserError {
    #[error(
        "apparmor_parser not found (looked for {0:?} on PATH and in /usr/sbin, /sbin); install the \
         Debian/Ubuntu package `apparmor` or pass --parser"
    )]
    NotFound(String),
    #[error("cannot run {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} of {1} profile files do not compile:\n  {2}")]
    Invalid(usize, usize, String),
    #[error("two files define the same profile name: {0}")]
    DuplicateNames(String),
    #[error("apparmor_parser failed to {action} (exit status {status}): {stderr}")]
    Failed {
        action: &'static str,
        status: String,
        stderr: String,
    },
}

/// Where the kernel's compiled-policy cache lives for one parser run.
#[derive(Debug, Clone, Copy)]
pub enum Cache<'a> {
    /// `--skip-cache`: nothing read or written (validation without a kernel).
    Skip,
    /// `--cache-loc DIR --write-cache`: reuse unchanged compilations across runs.
    At(&'a Path),
}

impl Parser {
    /// Finds the parser binary: an explicit path is used as given; a bare name is searched on
    /// `PATH`, then in the usual `sbin` directories.
    pub fn locate(name: &str) -> Result<PathBuf, ParserError> {
        if name.contains('/') {
            let path = PathBuf::from(name);
            return if path.is_file() {
                Ok(path)
            } else {
                Err(ParserError::NotFound(name.into()))
            };
        }
        let on_path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain(FALLBACK_DIRS.iter().map(|d| Path::new(d).join(name)))
            .find(|p| p.is_file())
            .ok_or_else(|| ParserError::NotFound(name.into()))
    }

    /// A parser command with our base and include directories.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--base").arg(&self.base);
        for dir in &self.includes {
            cmd.arg("--Include").arg(dir);
        }
        cmd
    }

    fn run(&self, mut cmd: Command) -> Result<Output, ParserError> {
        cmd.output().map_err(|source| ParserError::Spawn {
            binary: self.binary.clone(),
            source,
        })
    }

    /// Runs the parser and turns a non-zero exit into an error carrying its messages.
    fn run_checked(&self, cmd: Command, action: &'static str) -> Result<Output, ParserError> {
        let out = self.run(cmd)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ParserError::Failed {
                action,
                status: out.status.to_string(),
                stderr: parser_errors(&out.stderr),
            })
        }
    }

    /// Runs the parser with stdout and stderr on one pipe. The debug dump prints a profile's
    /// `Name:` on stdout and its `Mode:` on stderr, so only the merged stream pairs them.
    fn run_merged(&self, mut cmd: Command) -> Result<String, ParserError> {
        let spawn_err = |source| ParserError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        let (mut reader, writer) = std::io::pipe().map_err(spawn_err)?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(writer.try_clone().map_err(spawn_err)?)
            .stderr(writer);
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // The command holds the pipe's write ends; drop it so the read below sees EOF.
        drop(cmd);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut reader, &mut text).map_err(spawn_err)?;
        child.wait().map_err(spawn_err)?;
        Ok(text)
    }

    fn cache_args(cmd: &mut Command, cache: Cache<'_>) {
        match cache {
            Cache::Skip => {
                cmd.arg("--skip-cache");
            }
            Cache::At(dir) => {
                cmd.arg("--write-cache").arg("--cache-loc").arg(dir);
            }
        }
    }

    // === Checking ===

    /// Compiles every file without touching the kernel.
    ///
    /// All files go through one parser process (`--jobs` in parallel); only when that fails is
    /// each file compiled alone, so every broken file is reported, not just the last one the
    /// parser saw.
    pub fn compile(&self, files: &[&ProfileInput], cache: Cache<'_>) -> Result<(), ParserError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut cmd = self.command();
        cmd.arg("--skip-kernel-load")
            .arg("--jobs")
            .arg(self.jobs.to_string());
        Self::cache_args(&mut cmd, cache);
        cmd.args(files.iter().map(|f| &f.path));
        let out = self.run(cmd)?;
        if out.status.success() {
            return Ok(());
        }
        let failures: Vec<ParseFailure> = self
            .parallel(files, |f| self.compile_alone(f))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        if failures.is_empty() {
            return Err(ParserError::Failed {
                action: "compile the profiles",
                status: out.status.to_string(),
                stderr: parser_errors(&out.stderr),
            });
        }
        let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
        Err(ParserError::Invalid(
            failures.len(),
            files.len(),
            lines.join("\n  "),
        ))
    }

    /// Compiles one file alone; `Some` with the parser's reason when it fails.
    fn compile_alone(&self, file: &ProfileInput) -> Result<Option<ParseFailure>, ParserError> {
        let mut cmd = self.command();
        cmd.arg("--skip-kernel-load")
            .arg("--skip-cache")
            .arg(&file.path);
        let out = self.run(cmd)?;
        if out.status.success() {
            return Ok(None);
        }
        let stderr = parser_errors(&out.stderr);
        Ok(Some(ParseFailure {
            key: file.key.clone(),
            line: error_line(&stderr),
            message: error_message(&stderr),
        }))
    }

    /// What each file defines: the profile names and the mode each asks for.
    ///
    /// A file whose content hash matches an entry of `known` (a record this tool wrote after
    /// asking the parser about the same bytes) is taken from there; the others are asked
    /// about, `--jobs` at a time. Two files defining the same profile name are refused: one
    /// would silently replace the other in the kernel.
    pub fn describe(
        &self,
        files: &[&ProfileInput],
        known: &Inventory,
    ) -> Result<Vec<CompiledProfile>, ParserError> {
        let described = self.parallel(files, |f| match known.describes(&f.key, &f.sha256) {
            Some(entry) => Ok(CompiledProfile {
                key: f.key.clone(),
                path: f.path.clone(),
                names: entry.profiles.clone(),
                modes: entry.modes.clone(),
            }),
            _ => self.describe_one(&f.key, &f.path),
        });
        let compiled = described.into_iter().collect::<Result<Vec<_>, _>>()?;
        reject_duplicate_names(&compiled)?;
        Ok(compiled)
    }

    /// The profile names a file defines (`--names`; children as `parent//child`).
    pub fn names(&self, path: &Path) -> Result<Vec<String>, ParserError> {
        let mut cmd = self.command();
        cmd.arg("--names").arg(path);
        let out = self.run_checked(cmd, "list profile names")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// Runs `work` over `items` on up to `--jobs` threads, keeping the input order.
    pub fn parallel<T: Sync, R: Send>(&self, items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
        let threads = self.jobs.clamp(1, items.len().max(1));
        let chunk = items.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .chunks(chunk)
                .map(|part| scope.spawn(|| part.iter().map(&work).collect::<Vec<R>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("parser worker panicked"))
                .collect()
        })
    }

    /// Names (`--names`) and modes (the debug dump) of one file that is known to compile.
    fn describe_one(&self, key: &str, path: &Path) -> Result<CompiledProfile, ParserError> {
        let names = self.names(path)?;
        let mut cmd = self.command();
        cmd.arg("--debug")
            .arg("--skip-kernel-load")
            .arg("--skip-cache")
            .arg(path);
        let dumped = parse_debug_modes(&self.run_merged(cmd)?);
        let modes = names
            .iter()
            .filter(|n| !n.contains("//"))
            .map(|n| {
                let mode = dumped.get(n).cloned().unwrap_or_else(|| "enforce".into());
                (n.clone(), mode)
            })
            .collect();
        Ok(CompiledProfile {
            key: key.to_string(),
            path: path.to_path_buf(),
            names,
            modes,
        })
    }

    // === Loading and removing ===

    /// Loads (or replaces) every file in one parser process.
    pub fn replace(&self, paths: &[&Path], cache: Cache<'_>) -> Result<(), ParserError> {
        let mut cmd = self.command();
        cmd.arg("--replace")
            .arg("--jobs")
            .arg(self.jobs.to_string());
        Self::cache_args(&mut cmd, cache);
        cmd.args(paths);
        self.run_checked(cmd, "load the profiles into the kernel")
            .map(drop)
    }

    /// Unloads profiles by name with the parser's remove mode. The parser removes by the
    /// names a file declares, so a stub file declaring just those names is enough; the
    /// original file is already gone from the host.
    pub fn remove(&self, names: &[String], scratch_dir: &Path) -> Result<(), ParserError> {
        if names.is_empty() {
            return Ok(());
        }
        let stub: String = names
            .iter()
            .map(|n| format!("profile {} {{\n}}\n", quote_name(n)))
            .collect();
        let stub_path = scratch_dir.join(".remove-stub");
        std::fs::write(&stub_path, stub).map_err(|source| ParserError::Scratch {
            path: stub_path.clone(),
            source,
        })?;
        let mut cmd = self.command();
        cmd.arg("--remove").arg(&stub_path);
        let result = self.run_checked(cmd, "remove profiles from the kernel");
        let _ = std::fs::remove_file(&stub_path);
        result.map(drop)
    }
}

// === Utility functions ===

/// A profile name as the parser's grammar accepts it in a `profile` statement.
fn quote_name(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The parser's stderr without the noise it prints on machines whose kernel lacks AppArmor.
fn parser_errors(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.starts_with("Cache read/write disabled"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The line number in a parser error such as
/// `AppArmor parser error for /x/bad in profile /x/bad at line 4: missing …`.
fn error_line(stderr: &str) -> Option<u32> {
    let rest = &stderr[stderr.find(" at line ")? + " at line ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The human part of a parser error: what follows the location, or the whole text.
fn error_message(stderr: &str) -> String {
    if let Some(at) = stderr.find(" at line ")
        && let Some(colon) = stderr[at..].find(": ")
    {
        return stderr[at + colon + 2..].trim().to_string();
    }
    stderr.trim().to_string()
}

/// Reads the `Name:`/`Mode:` pairs of the parser's `--debug` dump. An empty mode is enforce;
/// hats print `Mode: , Hat`.
fn parse_debug_modes(dump: &str) -> BTreeMap<String, String> {
    let mut modes = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in dump.lines() {
        if let Some(n) = line.strip_prefix("Name:\t\t") {
            name = Some(n.trim().to_string());
        } else if let Some(m) = line.strip_prefix("Mode: ") {
            if let Some(n) = name.take() {
                let mode = m.split(',').next().unwrap_or("").trim();
                let mode = if mode.is_empty() { "enforce" } else { mode };
                modes.entry(n).or_insert_with(|| mode.to_string());
            }
        } else if line == "Mode:"
            && let Some(n) = name.take()
        {
            modes.entry(n).or_insert_with(|| "enforce".into());
        }
    }
    modes
}

/// Refuses a set of files in which two define the same profile name.
fn reject_duplicate_names(compiled: &[CompiledProfile]) -> Result<(), ParserError> {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    let mut clashes = BTreeSet::new();
    for p in compiled {
        for name in &p.names {
            if let Some(first) = owner.insert(name, &p.key) {
                clashes.insert(format!("{name:?} in {first:?} and {:?}", p.key));
            }
        }
    }
    if clashes.is_empty() {
        Ok(())
    } else {
        Err(ParserError::DuplicateNames(
            clashes.into_iter().collect::<Vec<_>>().join(", "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_location_is_read_from_parser_message() {
        let msg = "AppArmor parser error for /tmp/bad in profile /tmp/bad at line 4: \
                   missing an end of line character? (entry: /etc/**)";
        assert_eq!(error_line(msg), Some(4));
        assert_eq!(
            error_message(msg),
            "missing an end of line character? (entry: /etc/**)"
        );
        assert_eq!(error_line("Could not open 'x'"), None);
        assert_eq!(error_message("Could not open 'x'"), "Could not open 'x'");
    }

    #[test]
    fn debug_dump_modes() {
        let dump = "----- Debugging built structures -----\nName:\t\tp\nMode: \n\
                    Mode:\trwa:rwa\tName:\t(/dev/full)\nName:\t\tq\nMode: complain\n\
                    Name:\t\that\nMode: , Hat\n";
        let modes = parse_debug_modes(dump);
        assert_eq!(modes["p"], "enforce");
        assert_eq!(modes["q"], "complain");
        assert_eq!(modes["hat"], "enforce");
        assert_eq!(modes.len(), 3);
    }

    #[test]
    fn names_are_quoted_for_the_stub() {
        assert_eq!(quote_name("a b"), "\"a b\"");
        assert_eq!(quote_name("x\"y"), "\"x\\\"y\"");
    }

    #[test]
    fn duplicate_names_name_both_files() {
        let p = |key: &str, names: &[&str]| CompiledProfile {
            key: key.into(),
            path: PathBuf::from(key),
            names: names.iter().map(|s| s.to_string()).collect(),
            modes: BTreeMap::new(),
        };
        let err = reject_duplicate_names(&[p("a", &["x", "y"]), p("b", &["y"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "two files define the same profile name: \"y\" in \"a\" and \"b\""
        );
        assert!(reject_duplicate_names(&[p("a", &["x"]), p("b", &["y"])]).is_ok());
    }

    #[test]
    fn bare_name_not_found_says_how_to_install() {
        let err = Parser::locate("no-such-parser-binary").unwrap_err();
        assert!(err.to_string().contains("install"));
        assert!(Parser::locate("/no/such/apparmor_parser").is_err());
    }
}
