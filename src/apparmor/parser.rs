//! `apparmor_parser`: the only program that turns profile text into kernel policy.
//!
//! This module is the parser's command-line semantics and nothing else: it builds command lines,
//! runs them bounded by a timeout ([`process`]: the parser's DFA construction can run for hours
//! on a small pathological profile), and turns what the parser printed into typed results. We never
//! interpret profile syntax ourselves: whether a file compiles, which profile names it defines
//! (`--names`) and which mode each asks for (the debug dump) all come from the parser.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::apparmor::features::Features;
use crate::apparmor::mode::Mode;
use crate::apparmor::pool;
use crate::apparmor::process::{self, Finished, ProcessError};

/// Where `apparmor_parser` usually lives when it is not on `PATH` (non-root `PATH`s often
/// lack the `sbin` directories).
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin"];

/// How often a long parser run says it is still working, so `kubectl logs` never shows silence.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// How to run the parser: the same options for checking, loading and removing.
#[derive(Debug, Clone)]
pub struct Parser {
    pub binary: PathBuf,
    /// `--base`: where `#include <abstractions/…>` resolve.
    pub base: PathBuf,
    /// Extra `--Include` search directories.
    pub includes: Vec<PathBuf>,
    /// `--jobs` for one compile, and how many files are compiled alone at once.
    pub jobs: usize,
    /// The feature set policy is compiled for.
    pub features: Features,
    /// Longest a single parser run may take before it is killed.
    pub timeout: Duration,
}

/// One file for the parser: its key (the file name on the host) and where it is.
pub trait ParserInput {
    fn key(&self) -> &str;
    fn path(&self) -> &Path;
}

impl<T: ParserInput + ?Sized> ParserInput for &T {
    fn key(&self) -> &str {
        (**self).key()
    }
    fn path(&self) -> &Path {
        (**self).path()
    }
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
    #[error("cannot run {binary}: {reason}")]
    Spawn { binary: PathBuf, reason: String },
    #[error("cannot read the output of {binary}: {source}")]
    Output {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} of {1} profile files do not compile:\n  {2}")]
    Invalid(usize, usize, String),
    #[error(
        "apparmor_parser did not finish {action} within {timeout:?} (--parser-timeout) and was \
         killed; it was working on: {files}. A profile with many nested `**` globs can make \
         the parser run for hours: simplify the rules of the file at fault"
    )]
    TimedOut {
        action: &'static str,
        timeout: Duration,
        files: String,
    },
    #[error(
        "apparmor_parser was killed by signal {signal}{hint} while {action}; nothing was loaded \
         by that run"
    )]
    Killed {
        action: &'static str,
        signal: i32,
        hint: &'static str,
    },
    #[error("apparmor_parser failed {action} (exit status {status}): {stderr}")]
    Failed {
        action: &'static str,
        status: String,
        stderr: String,
    },
}

impl crate::exit_code::ExitStatus for ParserError {
    fn exit_code(&self) -> u8 {
        match self {
            // The profiles are at fault: a compile error, or a compile that never ends.
            ParserError::Invalid(..) | ParserError::TimedOut { .. } => {
                crate::exit_code::INVALID_PROFILES
            }
            // The parser could not run, was killed (OOM) or failed for a reason that is not a
            // profile's: the tool or the node, not the ConfigMap.
            ParserError::NotFound(_)
            | ParserError::Spawn { .. }
            | ParserError::Output { .. }
            | ParserError::Killed { .. }
            | ParserError::Failed { .. } => crate::exit_code::INTERNAL,
        }
    }
}

/// Where the kernel's compiled-policy cache lives for one parser run.
#[derive(Debug, Clone, Copy)]
pub enum Cache<'a> {
    /// `--skip-cache`: nothing read or written (validation without a node).
    Skip,
    /// `--cache-loc DIR --write-cache`: reuse compilations whose inputs are unchanged.
    ReadWrite(&'a Path),
    /// `--cache-loc DIR --skip-read-cache --write-cache`: compile afresh and store the result.
    Refresh(&'a Path),
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

    /// A parser command with our base, include directories and feature set.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--base").arg(&self.base);
        for dir in &self.includes {
            cmd.arg("--Include").arg(dir);
        }
        self.features.add_args(&mut cmd);
        cmd
    }

    fn cache_args(cmd: &mut Command, cache: Cache<'_>) {
        match cache {
            Cache::Skip => {
                cmd.arg("--skip-cache");
            }
            Cache::ReadWrite(dir) => {
                cmd.arg("--write-cache").arg("--cache-loc").arg(dir);
            }
            Cache::Refresh(dir) => {
                cmd.arg("--skip-read-cache")
                    .arg("--write-cache")
                    .arg("--cache-loc")
                    .arg(dir);
            }
        }
    }

    // === Checking ===

    /// Compiles every file without touching the kernel.
    ///
    /// All files go through one parser process (`--jobs` in parallel); only when that fails is
    /// each file compiled alone, so every broken file is reported, not just the last one the
    /// parser saw.
    pub fn compile<F: ParserInput + Sync>(
        &self,
        files: &[F],
        cache: Cache<'_>,
    ) -> Result<(), ParserError> {
        if files.is_empty() {
            return Ok(());
        }
        tracing::info!(
            files = files.len(),
            "compiling {} profile files",
            files.len()
        );
        let mut cmd = self.command();
        cmd.arg("--skip-kernel-load")
            .arg("--jobs")
            .arg(self.jobs.to_string());
        let for_a_node = self.features.is_node_specific();
        if for_a_node {
            cmd.args(UNENFORCED_WARNINGS);
        }
        Self::cache_args(&mut cmd, cache);
        cmd.args(files.iter().map(|f| f.path()));
        let out = self.execute(cmd, "compiling the profiles", &keys(files), false)?;
        if out.status.success() {
            if for_a_node {
                self.log_unenforced(&out.stderr);
            }
            return Ok(());
        }
        let failures: Vec<ParseFailure> = pool::map(self.jobs, files, |f| self.compile_alone(f))
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        if failures.is_empty() {
            return Err(failed("compiling the profiles", &out));
        }
        let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
        Err(ParserError::Invalid(
            failures.len(),
            files.len(),
            lines.join("\n  "),
        ))
    }

    /// Logs each rule the parser says the node's kernel does not enforce, or enforces only in
    /// a coarser form (`--warn=rule-not-enforced`, `--warn=rule-downgraded`): the profile
    /// loads, but not all of it is enforced there, which the profile's author should know. A
    /// compile the parser's cache answers prints nothing, so only a fresh compile logs them.
    fn log_unenforced(&self, stderr: &str) {
        let mut seen = std::collections::BTreeSet::new();
        for line in stderr.lines().map(str::trim) {
            if line.starts_with("Warning from profile ") && seen.insert(line) {
                tracing::warn!(
                    parser = %self.binary.display(),
                    "the node's kernel does not enforce this rule as written (the profile loads \
                     without it): {line}"
                );
            }
        }
    }

    /// Compiles one file alone; `Some` with the parser's reason when it fails.
    fn compile_alone<F: ParserInput>(&self, file: &F) -> Result<Option<ParseFailure>, ParserError> {
        let mut cmd = self.command();
        cmd.arg("--skip-kernel-load")
            .arg("--skip-cache")
            .arg(file.path());
        let out = self.execute(cmd, "compiling one profile", file.key(), false)?;
        if out.status.success() {
            return Ok(None);
        }
        let stderr = parser_errors(&out.stderr);
        Ok(Some(ParseFailure {
            key: file.key().to_string(),
            line: error_line(&stderr),
            message: error_message(&stderr),
        }))
    }

    /// The profile names the files define (`--names`; children as `parent//child`), in file
    /// order: one process, one job, so the output follows the arguments.
    pub fn names<F: ParserInput>(&self, files: &[F]) -> Result<Vec<String>, ParserError> {
        let mut cmd = self.command();
        cmd.arg("--names").arg("--jobs").arg("1");
        cmd.args(files.iter().map(|f| f.path()));
        let out = self.execute(cmd, "listing profile names", &keys(files), false)?;
        if !out.status.success() {
            return Err(failed("listing profile names", &out));
        }
        // Exactly as printed: the kernel keeps every character of a name, spaces included, so
        // a trimmed name would be another profile than the one loaded.
        Ok(out
            .stdout
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// The mode each profile of the files asks for, from the parser's debug dump (`enforce`
    /// unless its flags say otherwise), as `(name, mode)` in file order (one process, one job).
    pub fn modes<F: ParserInput>(&self, files: &[F]) -> Result<Vec<(String, Mode)>, ParserError> {
        let mut cmd = self.command();
        cmd.arg("--debug")
            .arg("--skip-kernel-load")
            .arg("--skip-cache")
            .arg("--jobs")
            .arg("1");
        cmd.args(files.iter().map(|f| f.path()));
        // The dump prints a profile's `Name:` on stdout and its `Mode:` on stderr, so only the
        // merged stream pairs them.
        let out = self.execute(cmd, "reading profile modes", &keys(files), true)?;
        if !out.status.success() {
            return Err(failed("reading profile modes", &out));
        }
        Ok(parse_debug_modes(&out.stdout))
    }

    /// Compiles one file, without the kernel or a cache, into `out`: the very bytes a load
    /// of it sends to the kernel (`--ofile`), so the hash the kernel gives each of its
    /// profiles can be known before loading ([`crate::apparmor::policy_blob`]).
    pub fn compile_to<F: ParserInput>(&self, file: &F, out: &Path) -> Result<(), ParserError> {
        let mut cmd = self.command();
        cmd.arg("--skip-cache")
            .arg("--ofile")
            .arg(out)
            .arg(file.path());
        let action = "compiling the policy to send to the kernel";
        let done = self.execute(cmd, action, file.key(), false)?;
        if done.status.success() {
            Ok(())
        } else {
            Err(failed(action, &done))
        }
    }

    // === Loading and removing ===

    /// Loads (or replaces) every file in one parser process.
    pub fn replace<F: ParserInput>(
        &self,
        files: &[F],
        cache: Cache<'_>,
    ) -> Result<(), ParserError> {
        let mut cmd = self.command();
        cmd.arg("--replace")
            .arg("--jobs")
            .arg(self.jobs.to_string());
        Self::cache_args(&mut cmd, cache);
        cmd.args(files.iter().map(|f| f.path()));
        let action = "loading the profiles into the kernel";
        let out = self.execute(cmd, action, &keys(files), false)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed(action, &out))
        }
    }

    // === Running the process ===

    /// Runs one parser command (see [`process::run`]), logging progress while it runs, and
    /// names what went wrong in the parser's terms.
    fn execute(
        &self,
        cmd: Command,
        action: &'static str,
        files: &str,
        merged: bool,
    ) -> Result<Finished, ParserError> {
        let progress = |elapsed: Duration| {
            tracing::warn!(
                elapsed_s = elapsed.as_secs(),
                "still {action} after {} s (--parser-timeout {:?}): {files}",
                elapsed.as_secs(),
                self.timeout
            );
        };
        process::run(cmd, merged, self.timeout, PROGRESS_EVERY, progress).map_err(|e| match e {
            ProcessError::Spawn(e) => ParserError::Spawn {
                binary: self.binary.clone(),
                reason: process::spawn_failure(&self.binary, &e),
            },
            ProcessError::Output(source) => ParserError::Output {
                binary: self.binary.clone(),
                source,
            },
            ProcessError::TimedOut => ParserError::TimedOut {
                action,
                timeout: self.timeout,
                files: files.to_string(),
            },
            ProcessError::Killed(signal) => ParserError::Killed {
                action,
                signal,
                hint: if signal == 9 {
                    " (SIGKILL: usually the container's memory limit; raise the limit of this \
                     init container, see the README's memory notes)"
                } else {
                    ""
                },
            },
        })
    }
}

// === Utility functions ===

/// The parser's warnings for rules the kernel's feature set does not enforce as written (off
/// by default in the parser); both the 3.0 and the 4.1 parser know them.
const UNENFORCED_WARNINGS: [&str; 2] = ["--warn=rule-not-enforced", "--warn=rule-downgraded"];

/// The keys of a batch, for progress and timeout messages.
fn keys<F: ParserInput>(files: &[F]) -> String {
    files.iter().map(|f| f.key()).collect::<Vec<_>>().join(", ")
}

fn failed(action: &'static str, out: &Finished) -> ParserError {
    // A merged run (the debug dump) has its errors among the dump on stdout: keep only the
    // lines that are messages, not the dump.
    let stderr = if out.stderr.trim().is_empty() {
        let errors: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.contains("rror") || l.starts_with("AppArmor parser"))
            .collect();
        parser_errors(&errors.join("\n"))
    } else {
        parser_errors(&out.stderr)
    };
    ParserError::Failed {
        action,
        status: out.status.to_string(),
        stderr,
    }
}

/// The parser's stderr without the noise it prints on machines whose kernel lacks AppArmor.
fn parser_errors(stderr: &str) -> String {
    stderr
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
/// hats print `Mode: , Hat`; child profiles print `Local To:` before their mode. A name that
/// is not followed by one of those lines spans several lines (it contains a newline) and is
/// left out, so its caller sees a name it cannot account for.
fn parse_debug_modes(dump: &str) -> Vec<(String, Mode)> {
    let mut modes = Vec::new();
    let mut name: Option<String> = None;
    for line in dump.lines() {
        if let Some(n) = line.strip_prefix("Name:\t\t") {
            name = Some(n.to_string());
        } else if let Some(m) = line.strip_prefix("Mode:") {
            if let Some(n) = name.take() {
                let mode = m.split(',').next().unwrap_or("").trim();
                let mode = if mode.is_empty() {
                    Mode::Enforce
                } else {
                    Mode::from(mode)
                };
                modes.push((n, mode));
            }
        } else if !line.starts_with("Local To:") {
            name = None;
        }
    }
    modes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Instant;

    struct File(PathBuf);
    impl ParserInput for File {
        fn key(&self) -> &str {
            "k"
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    fn script_parser(dir: &Path, body: &str, timeout: Duration) -> Parser {
        let path = dir.join("fake_parser");
        aapl_test_support::executable_script::write(&path, &format!("#!/bin/sh\n{body}\n"));
        Parser {
            binary: path,
            base: dir.to_path_buf(),
            includes: vec![],
            jobs: 1,
            features: Features::ParserDefault,
            timeout,
        }
    }

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
        let modes: BTreeMap<_, _> = parse_debug_modes(dump).into_iter().collect();
        assert_eq!(modes["p"], Mode::Enforce);
        assert_eq!(modes["q"], Mode::Complain);
        assert_eq!(modes["hat"], Mode::Enforce);
        assert_eq!(modes.len(), 3);
        // A child profile says where it belongs first; a name with a newline spans lines.
        let dump = "Name:\t\tkid\nLocal To:\tp\nMode: \nName:\t\ta\nb\nMode: \n";
        let modes: BTreeMap<_, _> = parse_debug_modes(dump).into_iter().collect();
        assert_eq!(modes["kid"], Mode::Enforce);
        assert!(
            !modes.contains_key("a") && !modes.contains_key("b"),
            "{modes:?}"
        );
    }

    #[test]
    fn bare_name_not_found_says_how_to_install() {
        let err = Parser::locate("no-such-parser-binary").unwrap_err();
        assert!(err.to_string().contains("install"));
        assert!(Parser::locate("/no/such/apparmor_parser").is_err());
    }

    #[test]
    fn a_failed_debug_dump_surfaces_the_parser_error_not_a_default_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = script_parser(
            dir.path(),
            "echo 'AppArmor parser error: out of memory' >&2; exit 1",
            Duration::from_secs(30),
        );
        let err = p
            .modes(&[File(dir.path().join("x"))])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reading profile modes") && err.contains("out of memory"),
            "{err}"
        );
    }

    #[test]
    fn a_parser_that_never_ends_is_killed_with_its_children_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // The parser forks a grandchild in its process group and says its pid; both must die.
        let p = script_parser(
            dir.path(),
            &format!("sleep 30 & echo $! >{}; sleep 30", pid_file.display()),
            Duration::from_millis(300),
        );
        let started = Instant::now();
        let err = p
            .compile(&[File(dir.path().join("slow"))], Cache::Skip)
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(20));
        let msg = err.to_string();
        assert!(
            matches!(err, ParserError::TimedOut { .. })
                && msg.contains("k")
                && msg.contains("300ms"),
            "{msg}"
        );
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .expect("the script recorded its grandchild")
            .trim()
            .parse()
            .unwrap();
        // SIGKILL went to the whole group: the grandchild is gone (or a zombie awaiting its
        // reaper) within moments, not 30 s later.
        let deadline = Instant::now() + Duration::from_secs(10);
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
        };
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(), "the grandchild {pid} outlived the killed parser");
    }

    #[test]
    fn a_killed_parser_is_reported_with_the_memory_hint() {
        let dir = tempfile::tempdir().unwrap();
        let p = script_parser(dir.path(), "kill -9 $$", Duration::from_secs(30));
        let msg = p
            .compile(&[File(dir.path().join("x"))], Cache::Skip)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("signal 9") && msg.contains("memory limit"),
            "{msg}"
        );
    }

    #[test]
    fn spawn_failures_name_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = script_parser(dir.path(), "exit 0", Duration::from_secs(5));
        p.binary = dir.path().join("gone");
        let msg = p
            .names(&[File(dir.path().join("x"))])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("gone does not exist"), "{msg}");

        // An executable whose interpreter is missing: a script naming a missing shell.
        let orphan = dir.path().join("orphan");
        aapl_test_support::executable_script::write(&orphan, "#!/no/such/shell\n");
        p.binary = orphan;
        let msg = p
            .names(&[File(dir.path().join("x"))])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("a file it needs to start is missing"), "{msg}");
    }
}
