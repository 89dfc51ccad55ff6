//! The profile source: reading a directory (a ConfigMap volume, one generation of it, or a plain
//! directory) into profiles whose keys pass the key rules (`keys`).
//!
//! Everything here is pure checking and reading; nothing is written. `copy` and `validate` both
//! start here so that an operator's CI and the node apply exactly the same rules.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::apparmor::parser::ParserInput;
use crate::profile::keys::{Key, is_manifest_key};

/// The most a ConfigMap's data may hold, in bytes: the API server adds up its values (not its
/// keys) and refuses more (`tests/apiserver_e2e.rs` finds the limit on the real server).
pub const CONFIGMAP_DATA_LIMIT: u64 = 1024 * 1024;

/// Largest profile file accepted, in bytes. Real profiles are a few KiB; a ConfigMap holds at
/// most [`CONFIGMAP_DATA_LIMIT`] in total, so a bigger key is a mistake, not a profile.
pub const DEFAULT_MAX_SIZE: u64 = CONFIGMAP_DATA_LIMIT;

/// The name of the atomic link Kubernetes maintains inside every ConfigMap volume.
const CONFIGMAP_DATA_LINK: &str = "..data";

/// One profile file that passed every check that needs no parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileFile {
    /// The ConfigMap key, which is also the file name written to the host.
    pub key: Key,
    /// The resolved file the content was read from (inside the source volume).
    pub path: PathBuf,
    pub content: String,
}

impl ProfileFile {
    /// Hex SHA-256 of the content: what the state files record to tell "unchanged" from "changed".
    pub fn sha256(&self) -> String {
        sha256_hex(self.content.as_bytes())
    }

    /// What the parser needs to check this file, read from `path` (the source itself, or a
    /// private snapshot of it).
    pub fn input(&self, path: PathBuf) -> ProfileInput {
        ProfileInput {
            key: self.key.clone(),
            path,
            sha256: self.sha256(),
        }
    }
}

/// A profile file to check: its key (the file name on the host), where the bytes to compile
/// are, and the hash of those bytes (to recognise files a record already describes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInput {
    pub key: Key,
    pub path: PathBuf,
    pub sha256: String,
}

impl ParserInput for ProfileInput {
    fn key(&self) -> &str {
        self.key.as_str()
    }
    fn path(&self) -> &Path {
        &self.path
    }
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key that cannot become a profile file, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {:?}: {}", self.key, self.reason)
    }
}

/// Everything found in a source directory.
#[derive(Debug, Default)]
pub struct Source {
    /// Valid profiles, sorted by key.
    pub profiles: Vec<ProfileFile>,
    /// Keys skipped on purpose (Kubernetes manifests), reported as warnings.
    pub skipped: Vec<String>,
    /// Keys that failed a check. Non-empty means nothing may be written.
    pub rejected: Vec<Rejection>,
}

/// Why a source could not be read at all (as opposed to a single bad key).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read profile source {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile source {0} is not a directory or a file")]
    NotFound(PathBuf),
}

/// How many times a ConfigMap update may swap the generation under one read before we give up.
const GENERATION_ATTEMPTS: usize = 5;

/// Reads a ConfigMap volume or a plain directory.
///
/// In a ConfigMap volume every key is a symlink through `..data`, which Kubernetes swaps
/// atomically on update and then deletes the old generation. We resolve `..data` once and read
/// the generation directory it points to, so we never mix two generations; if the kubelet
/// swapped it while we read (a file vanished, or `..data` moved on), we read the new
/// generation from the start: a normal ConfigMap update is never blamed on the profiles.
/// Everything is read into memory, so what is compiled later is exactly what was read.
pub fn read_source_dir(dir: &Path, max_size: u64) -> Result<Source, SourceError> {
    let io_err = |source| SourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let root = fs::canonicalize(dir).map_err(io_err)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let generation = current_generation(&root).map_err(io_err)?;
        let read = read_generation(&root, &generation, max_size);
        let swapped = current_generation(&root).ok().as_ref() != Some(&generation);
        match read {
            Ok(source) if !swapped => return Ok(source),
            Err(e) if !swapped || attempt >= GENERATION_ATTEMPTS => return Err(io_err(e)),
            _ if attempt >= GENERATION_ATTEMPTS => {
                return Err(io_err(std::io::Error::other(format!(
                    "the ConfigMap was updated {GENERATION_ATTEMPTS} times while it was being \
                     read; the next run reads it again"
                ))));
            }
            _ => tracing::info!(
                "the ConfigMap volume was updated while it was read; reading the new generation"
            ),
        }
    }
}

/// The directory `..data` points to (a plain directory is its own generation).
fn current_generation(root: &Path) -> std::io::Result<PathBuf> {
    match fs::read_link(root.join(CONFIGMAP_DATA_LINK)) {
        Ok(target) => fs::canonicalize(root.join(target)),
        Err(_) => Ok(root.to_path_buf()),
    }
}

/// Reads one generation's keys. A key whose file vanished while we read is an I/O error of
/// the whole read (the caller checks for a swap), not a rejected key.
fn read_generation(root: &Path, generation: &Path, max_size: u64) -> std::io::Result<Source> {
    let mut keys = Vec::new();
    for entry in fs::read_dir(generation)? {
        keys.push(entry?.file_name().to_string_lossy().into_owned());
    }
    keys.sort();
    let mut source = Source::default();
    for key in keys {
        // `..data`, `..2026_11_24_…` and `..data_tmp` are the volume's own bookkeeping.
        if key.starts_with("..") {
            continue;
        }
        let path = generation.join(&key);
        if fs::symlink_metadata(&path).is_err() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} vanished while it was read", path.display()),
            ));
        }
        source.add(&key, &path, root, max_size);
    }
    if !generation.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} vanished while it was read", generation.display()),
        ));
    }
    Ok(source)
}

/// Reads the paths an operator gave to `validate`: directories are read like a ConfigMap
/// volume, files are taken as single keys named after their file name.
pub fn read_sources(paths: &[PathBuf], max_size: u64) -> Result<Source, SourceError> {
    let mut all = Source::default();
    for path in paths {
        let meta = fs::metadata(path).map_err(|_| SourceError::NotFound(path.clone()))?;
        let part = if meta.is_dir() {
            read_source_dir(path, max_size)?
        } else {
            let key = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let root = fs::canonicalize(parent).map_err(|source| SourceError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
            let mut one = Source::default();
            one.add(&key, path, &root, max_size);
            one
        };
        all.profiles.extend(part.profiles);
        all.skipped.extend(part.skipped);
        all.rejected.extend(part.rejected);
    }
    all.reject_duplicate_keys();
    all.profiles.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(all)
}

impl Source {
    /// The profiles' bytes together: what their ConfigMap's data holds.
    pub fn total_bytes(&self) -> u64 {
        self.profiles.iter().map(|p| p.content.len() as u64).sum()
    }

    /// Checks one key and its file, recording it as a profile, a skip or a rejection.
    fn add(&mut self, key: &str, path: &Path, root: &Path, max_size: u64) {
        if is_manifest_key(key) {
            self.skipped.push(key.to_string());
            return;
        }
        let key_and_file = Key::try_from(key)
            .map_err(|bad| bad.reason)
            .and_then(|key| Ok((key, read_profile(path, root, max_size)?)));
        match key_and_file {
            Ok((key, (path, content))) => self.profiles.push(ProfileFile { key, path, content }),
            Err(reason) => self.rejected.push(Rejection {
                key: key.to_string(),
                reason,
            }),
        }
    }

    /// Two paths given to `validate` can hold the same file name; only one could be written.
    fn reject_duplicate_keys(&mut self) {
        let mut seen = BTreeMap::new();
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.profiles) {
            if seen.insert(p.key.clone(), ()).is_some() {
                self.rejected.push(Rejection {
                    key: p.key.to_string(),
                    reason: "the same file name is given twice".into(),
                });
            } else {
                keep.push(p);
            }
        }
        self.profiles = keep;
    }
}

/// Reads one key's file, refusing anything that is not a small, non-empty UTF-8 regular file
/// inside the source volume.
fn read_profile(path: &Path, root: &Path, max_size: u64) -> Result<(PathBuf, String), String> {
    let real = fs::canonicalize(path).map_err(|e| format!("cannot resolve the file: {e}"))?;
    if !real.starts_with(root) {
        return Err(format!(
            "it is a symlink to {}, outside the source volume {}",
            real.display(),
            root.display()
        ));
    }
    let meta = fs::metadata(&real).map_err(|e| format!("cannot stat the file: {e}"))?;
    if meta.is_dir() {
        return Err("it is a directory, not a file".into());
    }
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() == 0 {
        return Err("the file is empty".into());
    }
    if meta.len() > max_size {
        return Err(format!(
            "the file is {} bytes, over the limit of {max_size} bytes (--max-size)",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    fs::File::open(&real)
        .and_then(|f| f.take(max_size + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > max_size {
        return Err(format!(
            "the file grew over the limit of {max_size} bytes while being read"
        ));
    }
    if bytes.contains(&0) {
        return Err("the file is binary (contains NUL bytes), not a text profile".into());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    Ok((real, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Lays out a directory the way the kubelet lays out a ConfigMap volume.
    fn configmap_volume(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let generation = dir.path().join("..2026_11_24_05_00_00.000000001");
        fs::create_dir(&generation).unwrap();
        for (key, content) in files {
            fs::write(generation.join(key), content).unwrap();
            symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
        }
        symlink("..2026_11_24_05_00_00.000000001", dir.path().join("..data")).unwrap();
        dir
    }

    #[test]
    fn configmap_volume_is_read_through_data_link_without_internals() {
        let dir = configmap_volume(&[("b-prof", "profile b {}\n"), ("a-prof", "profile a {}\n")]);
        let source = read_source_dir(dir.path(), DEFAULT_MAX_SIZE).unwrap();
        let keys: Vec<_> = source.profiles.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["a-prof", "b-prof"]);
        assert!(source.rejected.is_empty());
    }

    #[test]
    fn manifests_are_skipped_not_rejected() {
        let dir = configmap_volume(&[("p", "profile p {}\n"), ("kustomization.yaml", "x: 1\n")]);
        let source = read_source_dir(dir.path(), DEFAULT_MAX_SIZE).unwrap();
        assert_eq!(source.skipped, ["kustomization.yaml"]);
        assert_eq!(source.profiles.len(), 1);
    }

    #[test]
    fn bad_files_are_rejected_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "profile s {}\n").unwrap();
        symlink(outside.path().join("secret"), dir.path().join("escape")).unwrap();
        fs::create_dir(dir.path().join("subdir")).unwrap();
        fs::write(dir.path().join("empty"), "").unwrap();
        fs::write(dir.path().join("binary"), b"profile \0\xff {}").unwrap();
        fs::write(dir.path().join("latin1"), b"profile caf\xe9 {}").unwrap();
        fs::write(dir.path().join("big"), "#".repeat(2048)).unwrap();
        fs::write(dir.path().join(".hidden"), "profile h {}\n").unwrap();
        let source = read_source_dir(dir.path(), 1024).unwrap();
        let reasons: BTreeMap<_, _> = source
            .rejected
            .iter()
            .map(|r| (r.key.as_str(), r.reason.as_str()))
            .collect();
        assert!(reasons["escape"].contains("outside the source volume"));
        assert!(reasons["subdir"].contains("directory"));
        assert!(reasons["empty"].contains("empty"));
        assert!(reasons["binary"].contains("binary"));
        assert!(reasons["latin1"].contains("not UTF-8"));
        assert!(reasons["big"].contains("over the limit of 1024 bytes"));
        assert!(reasons[".hidden"].contains("dot-files"));
        assert!(source.profiles.is_empty());
    }

    #[test]
    fn symlink_inside_the_volume_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real"), "profile r {}\n").unwrap();
        symlink("real", dir.path().join("alias")).unwrap();
        let source = read_source_dir(dir.path(), DEFAULT_MAX_SIZE).unwrap();
        assert_eq!(source.profiles.len(), 2);
    }

    #[test]
    fn same_file_name_given_twice_is_rejected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("p"), "profile p {}\n").unwrap();
        fs::write(b.path().join("p"), "profile q {}\n").unwrap();
        let source = read_sources(&[a.path().to_path_buf(), b.path().to_path_buf()], 1024).unwrap();
        assert_eq!(source.profiles.len(), 1);
        assert_eq!(source.rejected[0].key, "p");
        assert!(source.rejected[0].reason.contains("twice"));
    }

    #[test]
    fn sha256_is_hex_of_content() {
        let p = ProfileFile {
            key: Key::try_from("k").unwrap(),
            path: PathBuf::from("k"),
            content: "abc".into(),
        };
        assert_eq!(
            p.sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
