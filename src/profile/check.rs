//! Checking a set of profile files: compile them, learn what each defines and in which mode,
//! and apply our rules on what is defined. `validate`, `copy` and `load` all check through
//! here, so an operator's CI, the copy step and the load step refuse exactly the same files,
//! and every name that passes is one `load` can load, verify and unload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::apparmor::mode::Mode;
use crate::apparmor::parser::{Cache, Parser, ParserError, ParserInput};
use crate::apparmor::pool;
use crate::exit_code::{self, ExitStatus};
use crate::profile::keys::Key;
use crate::profile::names::{BadProfileName, ProfileName, check_name_set};
use crate::profile::node_labels::{NodeReport, ReportTooLarge};
use crate::profile::ownership;
use crate::profile::records::{Entry, Inventory};
use crate::profile::source::{ProfileInput, Rejection, Source};

/// A profile file that compiles, with what it defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledProfile {
    pub key: Key,
    pub path: PathBuf,
    pub sha256: String,
    /// Every profile the file defines, from `--names` (children as `parent//child`).
    pub names: Vec<ProfileName>,
    /// The mode each top-level profile asks for (`enforce` unless its flags say otherwise).
    pub modes: BTreeMap<ProfileName, Mode>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Parser(#[from] ParserError),
    #[error("{} of {total} profile files are refused:\n  {}", .refused.len(), .refused.join("\n  "))]
    Refused { refused: Vec<String>, total: usize },
    #[error("two files define the same profile name: {0}")]
    DuplicateNames(String),
    #[error(transparent)]
    ReportTooLarge(#[from] ReportTooLarge),
    #[error("{} of the profile keys are invalid, nothing was changed:\n  {}", .0.len(), list(.0))]
    Rejected(Vec<Rejection>),
    #[error(
        "{} did not print the marker profiles between the files once each and in order, so \
         which file defines which profile cannot be told; this tool does not understand that \
         parser's output and refuses to guess (nothing was changed)",
        .binary.display()
    )]
    Unsplittable { binary: PathBuf },
}

fn list(rejections: &[Rejection]) -> String {
    rejections
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl ExitStatus for CheckError {
    fn exit_code(&self) -> u8 {
        match self {
            CheckError::Parser(e) => e.exit_code(),
            CheckError::Refused { .. }
            | CheckError::DuplicateNames(_)
            | CheckError::ReportTooLarge(_)
            | CheckError::Rejected(_) => exit_code::INVALID_PROFILES,
            // The parser, not the profiles: no ConfigMap change can fix it.
            CheckError::Unsplittable { .. } => exit_code::INTERNAL,
        }
    }
}

/// Logs the keys skipped on purpose and refuses the source if any key was rejected by the
/// rules that need no parser.
pub fn accept_keys(source: &Source) -> Result<(), CheckError> {
    for key in &source.skipped {
        tracing::warn!(key = %key, "skipping {key}: a Kubernetes manifest, not a profile");
    }
    if source.rejected.is_empty() {
        Ok(())
    } else {
        Err(CheckError::Rejected(source.rejected.clone()))
    }
}

/// Compiles the files `known` does not describe (with `cache`), learns what every file
/// defines, and refuses what we could not prove in the kernel.
///
/// A file whose hash matches an entry of `known` (a record this tool wrote after asking the
/// parser about the same bytes) is not compiled or asked about again.
pub fn check(
    inputs: &[ProfileInput],
    parser: &Parser,
    known: &Inventory,
    cache: Cache<'_>,
) -> Result<Vec<CompiledProfile>, CheckError> {
    let fresh = ownership::unproven(known, inputs);
    // Names and modes come from parse-only passes that do not need the compile's output, so
    // they run beside it, on CPU the compile leaves idle (its start, its last file). Should the
    // compile fail, their answer is dropped and the compile's error is the one reported.
    let (described, compiled) = pool::join(
        || describe_all(parser, &fresh),
        || parser.compile(&fresh, cache),
    );
    compiled?;
    let mut described: BTreeMap<&str, Described> = fresh
        .iter()
        .map(|i| i.key.as_str())
        .zip(described?)
        .collect();
    let mut compiled = Vec::with_capacity(inputs.len());
    let mut refused = Vec::new();
    for input in inputs {
        // What the parser said enters here as plain strings and becomes profile names in
        // `prove`. A record's entry is proven the same way: reading it back checked each name,
        // not that the file defines one or that every top-level name has its mode.
        let checked = match known.describes(&input.key, &input.sha256) {
            Some(entry) => prove(&input.key, as_described(entry)),
            None => prove(
                &input.key,
                described.remove(input.key.as_str()).unwrap_or_default(),
            ),
        };
        match checked {
            Ok((names, modes)) => compiled.push(CompiledProfile {
                key: input.key.clone(),
                path: input.path.clone(),
                sha256: input.sha256.clone(),
                names,
                modes,
            }),
            Err(why) => refused.extend(why),
        }
    }
    if !refused.is_empty() {
        return Err(CheckError::Refused {
            refused,
            total: inputs.len(),
        });
    }
    reject_duplicate_names(&compiled)?;
    // The set must fit the node annotation untaint writes, or no node could ever be untainted.
    NodeReport::of(
        compiled
            .iter()
            .map(|c| (c.sha256.as_str(), c.names.as_slice())),
        Default::default(),
    )
    .fits()?;
    Ok(compiled)
}

/// What one file defines, as the parser printed it: its profile names and the mode of each
/// top-level one.
type Described = (Vec<String>, BTreeMap<String, Mode>);

/// What a file defines, as profile names: [`prove`]'s answer when nothing was refused.
type Named = (Vec<ProfileName>, BTreeMap<ProfileName, Mode>);

/// A record's entry as the parser would have described its file.
fn as_described(entry: &Entry) -> Described {
    (
        entry.profiles.iter().map(ToString::to_string).collect(),
        entry
            .modes
            .iter()
            .map(|(name, mode)| (name.to_string(), mode.clone()))
            .collect(),
    )
}

/// A file for the parser: one of ours, or a marker between them.
struct Item {
    key: String,
    path: PathBuf,
}

impl ParserInput for Item {
    fn key(&self) -> &str {
        &self.key
    }
    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Names (`--names`) and modes (the debug dump) of files that compile, in two parser
/// processes side by side for all of them rather than two per file (process start-up
/// dominates on a small node). Marker profiles between the files split the parser's output
/// per file. With one job the parser prints its input files in order, so markers that do not
/// come back once each and in order mean a parser whose output we do not understand: that is
/// refused ([`CheckError::Unsplittable`]), not worked around.
fn describe_all(parser: &Parser, files: &[&ProfileInput]) -> Result<Vec<Described>, CheckError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let dir = tempfile::tempdir().map_err(|source| ParserError::Output {
        binary: parser.binary.clone(),
        source,
    })?;
    let nonce = format!("{}-{}", std::process::id(), dir.path().display()).replace('/', "_");
    let marker = |i: usize| format!("apparmor-profile-loader-marker-{i}-{nonce}");
    let mut sequence = Vec::with_capacity(files.len() * 2 + 1);
    for i in 0..=files.len() {
        let path = dir.path().join(format!("marker-{i}"));
        std::fs::write(&path, format!("profile \"{}\" {{\n}}\n", marker(i))).map_err(|source| {
            ParserError::Output {
                binary: parser.binary.clone(),
                source,
            }
        })?;
        sequence.push(Item {
            key: format!("(marker {i})"),
            path,
        });
        if let Some(f) = files.get(i) {
            sequence.push(Item {
                key: f.key.to_string(),
                path: f.path.clone(),
            });
        }
    }
    let (names, modes) = pool::join(|| parser.names(&sequence), || parser.modes(&sequence));
    let names = split_at_markers(names?, files.len(), &marker, |n| n);
    let modes = split_at_markers(modes?, files.len(), &marker, |(n, _)| n);
    match (names, modes) {
        (Some(names), Some(modes)) => Ok(names
            .into_iter()
            .zip(modes)
            .map(|(names, dumped)| with_modes(names, dumped.into_iter().collect()))
            .collect()),
        _ => Err(CheckError::Unsplittable {
            binary: parser.binary.clone(),
        }),
    }
}

/// Splits an ordered output at the marker names `marker(0)` … `marker(files)`, which must each
/// come exactly once and in order; `None` otherwise.
fn split_at_markers<T>(
    items: Vec<T>,
    files: usize,
    marker: &dyn Fn(usize) -> String,
    name: impl Fn(&T) -> &String,
) -> Option<Vec<Vec<T>>> {
    let mut groups: Vec<Vec<T>> = Vec::with_capacity(files);
    let mut seen = 0;
    for item in items {
        if *name(&item) == marker(seen) {
            seen += 1;
            if seen <= files {
                groups.push(Vec::new());
            }
        } else if (1..=files).contains(&seen) {
            groups.last_mut()?.push(item);
        } else {
            return None;
        }
    }
    (seen == files + 1).then_some(groups)
}

/// Top-level names with the mode the dump gives them; a name the dump cannot account for (a
/// quoted name with a newline) stays without a mode and is refused.
fn with_modes(names: Vec<String>, dumped: BTreeMap<String, Mode>) -> Described {
    let modes = names
        .iter()
        .filter(|n| !n.contains("//"))
        .filter_map(|n| dumped.get(n).map(|m| (n.clone(), m.clone())))
        .collect();
    (names, modes)
}

/// What one file defines, as profile names with the mode of each top-level one, or why it is
/// refused: it defines nothing, or a name we could not prove. Each name is checked once, as it
/// becomes a [`ProfileName`].
fn prove(key: &Key, (names, modes): Described) -> Result<Named, Vec<String>> {
    if names.is_empty() {
        return Err(vec![format!(
            "key {key:?}: the file defines no profile (only comments, variables or includes), \
             so nothing would be loaded from it; remove the key or add the profile"
        )]);
    }
    let name_set = check_name_set(&names);
    let mut refused = Vec::new();
    let (mut proven, mut proven_modes) = (Vec::with_capacity(names.len()), BTreeMap::new());
    for text in names {
        let name = match ProfileName::try_from(text) {
            Ok(name) => name,
            Err(BadProfileName { name, reason }) => {
                refused.push(format!(
                    "key {key:?}: profile name {name:?} is refused: {reason}"
                ));
                continue;
            }
        };
        if !name.is_child() {
            match modes.get(name.as_str()) {
                Some(mode) => {
                    proven_modes.insert(name.clone(), mode.clone());
                }
                None => refused.push(format!(
                    "key {key:?}: profile name {name:?} cannot be read back from the parser (does \
                     a quoted name contain a newline or another control character?)"
                )),
            }
        }
        proven.push(name);
    }
    if let Err(reason) = name_set {
        refused.push(format!("key {key:?}: {reason}"));
    }
    if refused.is_empty() {
        Ok((proven, proven_modes))
    } else {
        Err(refused)
    }
}

/// Refuses a set of files in which two define the same profile name: one would silently
/// replace the other in the kernel.
fn reject_duplicate_names(compiled: &[CompiledProfile]) -> Result<(), CheckError> {
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
        Err(CheckError::DuplicateNames(
            clashes.into_iter().collect::<Vec<_>>().join(", "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the parser would print for a file defining `names`, every top-level one enforced.
    fn described(names: &[&str]) -> Described {
        let modes = names
            .iter()
            .filter(|n| !n.contains("//"))
            .map(|n| (n.to_string(), Mode::Enforce))
            .collect();
        (names.iter().map(|s| s.to_string()).collect(), modes)
    }

    fn p(key: &str, names: &[&str]) -> CompiledProfile {
        let (names, modes) = prove(&Key::try_from(key).unwrap(), described(names)).unwrap();
        CompiledProfile {
            key: Key::try_from(key).unwrap(),
            path: PathBuf::from(key),
            sha256: String::new(),
            names,
            modes,
        }
    }

    #[test]
    fn output_splits_at_markers_in_order_or_not_at_all() {
        let marker = |i: usize| format!("m{i}");
        let out = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let split = |v: &[&str], n| split_at_markers(out(v), n, &marker, |s| s);
        assert_eq!(
            split(&["m0", "a", "a//h", "m1", "m2", "c", "m3"], 3),
            Some(vec![out(&["a", "a//h"]), out(&[]), out(&["c"])])
        );
        assert_eq!(split(&["m0", "a", "m1"], 1), Some(vec![out(&["a"])]));
        // Missing, out-of-order or surplus markers, or output before the first: no split.
        assert_eq!(split(&["m0", "a", "m2", "m1"], 2), None);
        assert_eq!(split(&["m0", "a"], 1), None);
        assert_eq!(split(&["x", "m0", "a", "m1"], 1), None);
        assert_eq!(split(&["m0", "a", "m1", "stray"], 1), None);
    }

    /// A parser whose `--names` and `--debug` output lacks the marker profiles (here: one that
    /// prints the same name for any input) is refused, not asked again file by file.
    #[test]
    fn a_parser_that_drops_the_markers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("fake_parser");
        aapl_test_support::executable_script::write(
            &binary,
            "#!/bin/sh\necho 'Name:\t\tp'; echo 'Mode: '; echo p\n",
        );
        let parser = Parser {
            binary: binary.clone(),
            base: dir.path().to_path_buf(),
            includes: vec![],
            jobs: 1,
            features: crate::apparmor::features::Features::ParserDefault,
            timeout: std::time::Duration::from_secs(30),
        };
        let file = dir.path().join("k");
        std::fs::write(&file, "profile p {}\n").unwrap();
        let inputs = [ProfileInput {
            key: Key::try_from("k").unwrap(),
            path: file,
            sha256: "ab".into(),
        }];
        let err = check(&inputs, &parser, &Inventory::default(), Cache::Skip).unwrap_err();
        assert!(matches!(err, CheckError::Unsplittable { .. }), "{err}");
        assert_eq!(err.exit_code(), exit_code::INTERNAL);
        let msg = err.to_string();
        assert!(
            msg.contains(&binary.display().to_string()) && msg.contains("refuses to guess"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_names_name_both_files() {
        let err = reject_duplicate_names(&[p("a", &["x", "y"]), p("b", &["y"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "two files define the same profile name: \"y\" in \"a\" and \"b\""
        );
        assert!(reject_duplicate_names(&[p("a", &["x"]), p("b", &["y"])]).is_ok());
    }

    #[test]
    fn files_and_names_we_could_not_prove_are_refused() {
        let k = Key::try_from("k").unwrap();
        let refused = |d: Described| prove(&k, d).err().unwrap_or_default().join("; ");
        assert!(refused(described(&["ok", "ok//hat"])).is_empty());
        let cases: &[(&[&str], &str)] = &[
            (&[], "defines no profile"),
            (&[":ns1:name"], "policy namespace"),
            (&["a\nb"], "control character"),
            (&["a//b"], "which is not defined alongside it"),
            (&["hostprof//x", "mine"], "\"hostprof\""),
            (&["cri-containerd.apparmor.d"], "container runtime"),
            (&["docker-default"], "container runtime"),
        ];
        let (names, _) = described(&["a", "b"]);
        assert!(refused((names, BTreeMap::new())).contains("cannot be read back"));
        for (names, expect) in cases {
            let r = refused(described(names));
            assert!(r.contains(expect), "{names:?}: {r}");
            assert!(r.starts_with("key \"k\""), "{r}");
        }
    }
}
