//! The compiled-policy cache shared by `copy` and `load`, so a fresh node compiles once.
//!
//! `apparmor_parser` reuses a cache entry by file name and modification time only: it does
//! not notice a changed include whose mtime is old (image layers and packages carry old
//! mtimes), nor a different parser. So the cache lives in a directory named after the
//! [`toolchain`] fingerprint: the parser binary, its pinned features and the content of its
//! include tree. A new image gets a new, empty directory; the old ones are pruned.
//!
//! `copy` compiles into a staging directory and promotes the entries only once the files they
//! were compiled from are on disk, so the cache never holds policy for content that is not
//! (or no longer) in the profile directory.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::apparmor::parser::Parser;
use crate::apparmor::parser_cache;
use crate::apparmor::toolchain;
use crate::host::NEVER_WRITABLE_BY_OTHERS;

/// Sub-directory of the cache directory that holds one directory per fingerprint.
const POLICY_DIR: &str = "policy";
/// Where `copy` compiles before it promotes.
const STAGING_DIR: &str = "staging";

/// The cache directory for one parser and include tree.
#[derive(Debug, Clone)]
pub struct CompileCache {
    /// `<cache-dir>/policy/<fingerprint>`: pass to the parser as `--cache-loc`.
    pub dir: PathBuf,
    /// The fingerprint of the parser, include tree and feature set.
    pub toolchain: String,
    /// `<cache-dir>/staging/<fingerprint>`.
    staging: PathBuf,
}

impl CompileCache {
    /// Opens (creating) the cache for this parser under `cache_dir`, pruning the directories of
    /// other fingerprints (older images).
    ///
    /// The cache directory is on the host, so what is in it is not trusted: links are never
    /// followed (a link at one of our own names is removed, not its target), and only
    /// directories named like a fingerprint are pruned; anything else is left alone.
    pub fn open(cache_dir: &Path, parser: &Parser) -> io::Result<Self> {
        fs::create_dir_all(cache_dir)?;
        not_writable_by_others(cache_dir)?;
        let root = cache_dir.join(POLICY_DIR);
        real_dir(&root)?;
        let id = toolchain::fingerprint(parser)?;
        for entry in fs::read_dir(&root)? {
            let entry = entry?;
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n != id && is_fingerprint(n));
            // `file_type` does not follow links; `remove_dir_all` never follows one inside.
            if ours && entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            }
        }
        let dir = root.join(&id);
        real_dir(&dir)?;
        // Staging left by a crashed copy is never promoted.
        let staging_root = cache_dir.join(STAGING_DIR);
        remove_our_name(&staging_root)?;
        Ok(Self {
            dir,
            staging: staging_root.join(&id),
            toolchain: id,
        })
    }

    /// An empty staging directory for `copy`'s compile; dropped unpromoted, it is discarded.
    pub fn staging(&self) -> io::Result<Staging<'_>> {
        if let Some(root) = self.staging.parent() {
            real_dir(root)?;
        }
        real_dir(&self.staging)?;
        Ok(Staging {
            cache: self,
            settled: false,
        })
    }
}

/// `copy`'s compile, staged: promoted into the cache once the files it was compiled from are on
/// disk, discarded when dropped unpromoted (copy failed: nothing it compiled may be reused).
#[must_use = "a staging directory dropped unpromoted is discarded"]
pub struct Staging<'a> {
    cache: &'a CompileCache,
    /// Promotion was attempted: the drop leaves the directory alone.
    settled: bool,
}

impl Staging<'_> {
    /// The directory to pass to the parser (`Cache::Refresh`).
    pub fn path(&self) -> &Path {
        &self.cache.staging
    }

    /// Moves every staged entry into the cache (call once the compiled files are on disk), as
    /// the parser's cache layout allows ([`parser_cache::merge`]: a staged feature set that
    /// conflicts with the cache's is dropped, and `load` then compiles those files itself).
    pub fn promote(mut self) -> io::Result<usize> {
        self.settled = true;
        let (staging, dir) = (&self.cache.staging, &self.cache.dir);
        if !staging.exists() {
            return Ok(0);
        }
        let promoted = parser_cache::merge(staging, dir)?;
        fs::remove_dir_all(staging)?;
        Ok(promoted)
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = fs::remove_dir_all(&self.cache.staging);
        }
    }
}

/// Whether a name is one of our fingerprint directories ([`toolchain::fingerprint`]: 24
/// lowercase hex digits).
fn is_fingerprint(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes `path`, one of our own names in the cache directory, a real directory that only its
/// owner can write: whatever else is there (a symlink, a file, a FIFO) is removed first, a link
/// without touching its target.
fn real_dir(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return not_writable_by_others(path),
        Ok(_) => {
            tracing::warn!(path = %path.display(),
                "{} is not a directory (a link or a file someone put there); removing it, \
                 without following it", path.display());
            fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::DirBuilder::new().mode(0o755).create(path)?;
    not_writable_by_others(path)
}

/// Takes write for group and others away from a directory of ours (made under a lax umask by
/// an earlier version, or by hand): a chmod, which no umask changes.
fn not_writable_by_others(path: &Path) -> io::Result<()> {
    let mode = fs::symlink_metadata(path)?.permissions().mode();
    if mode & NEVER_WRITABLE_BY_OTHERS != 0 {
        tracing::warn!(path = %path.display(), "{} was writable by group or others (mode {:o}); \
            taking that away", path.display(), mode & 0o7777);
        fs::set_permissions(
            path,
            fs::Permissions::from_mode(mode & 0o7777 & !NEVER_WRITABLE_BY_OTHERS),
        )?;
    }
    Ok(())
}

/// Removes whatever is at `path`, one of our own names: a directory with its content, anything
/// else (a link included, never its target) as a file.
fn remove_our_name(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apparmor::features::Features;
    use crate::apparmor::toolchain::tests::parser;
    use std::time::Duration;

    #[test]
    fn a_changed_include_or_parser_gets_a_new_cache_and_the_old_one_is_pruned() {
        let d = tempfile::tempdir().unwrap();
        let p = parser(d.path());
        let cache_dir = d.path().join("cache");
        let first = CompileCache::open(&cache_dir, &p).unwrap();
        fs::write(first.dir.join("entry"), "compiled").unwrap();
        // Same inputs: same directory, entries kept.
        let again = CompileCache::open(&cache_dir, &p).unwrap();
        assert_eq!(again.dir, first.dir);
        assert!(again.dir.join("entry").exists());

        // Same bytes of the profile, but an include changed with an OLD mtime: new directory.
        let include = d.path().join("base/abstractions/base");
        fs::write(&include, "/etc/ld.so.cache r,\n/etc/passwd r,\n").unwrap();
        let old = fs::File::options().write(true).open(&include).unwrap();
        old.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        let changed = CompileCache::open(&cache_dir, &p).unwrap();
        assert_ne!(changed.dir, first.dir);
        assert!(!first.dir.exists(), "the old fingerprint is pruned");

        // A profile at the top of the base (the base may be the profile directory) is not an
        // include: adding or changing one keeps the cache.
        fs::write(d.path().join("base/some-profile"), "profile p {}\n").unwrap();
        assert_eq!(CompileCache::open(&cache_dir, &p).unwrap().dir, changed.dir);

        // Another pinned policy feature set: the parser's cache would serve the old policy.
        fs::write(d.path().join("pin"), "policy {}\n").unwrap();
        let mut pinned = p.clone();
        pinned.features = Features::Pinned {
            file: d.path().join("pin"),
            kernel: None,
            pin: "/pin".into(),
        };
        let pinned_dir = CompileCache::open(&cache_dir, &pinned).unwrap().dir;
        assert_ne!(pinned_dir, changed.dir);
        fs::write(d.path().join("pin"), "policy { file {} }\n").unwrap();
        assert_ne!(
            CompileCache::open(&cache_dir, &pinned).unwrap().dir,
            pinned_dir
        );

        fs::write(d.path().join("parser"), "binary v2").unwrap();
        assert_ne!(CompileCache::open(&cache_dir, &p).unwrap().dir, changed.dir);
    }

    #[test]
    fn staged_entries_reach_the_cache_only_when_promoted() {
        let d = tempfile::tempdir().unwrap();
        let p = parser(d.path());
        let cache = CompileCache::open(&d.path().join("cache"), &p).unwrap();
        let stage = |file: &str, content: &str| {
            let staging = cache.staging().unwrap();
            let set = staging.path().join("abc.0");
            fs::create_dir_all(&set).unwrap();
            fs::write(set.join(".features"), "f").unwrap();
            fs::write(set.join(file), content).unwrap();
            staging
        };
        drop(stage("k1", "policy"));
        assert!(!cache.dir.join("abc.0").exists());
        assert!(!cache.staging.exists(), "dropped unpromoted: discarded");

        assert_eq!(stage("k1", "policy").promote().unwrap(), 1);
        assert_eq!(fs::read(cache.dir.join("abc.0/k1")).unwrap(), b"policy");

        // A second promotion merges into the same feature set.
        assert_eq!(stage("k2", "policy2").promote().unwrap(), 1);
        assert!(cache.dir.join("abc.0/k1").exists() && cache.dir.join("abc.0/k2").exists());

        // Staging left by a crash (never dropped) is dropped when the cache is opened again.
        std::mem::forget(stage("k3", "half"));
        let reopened = CompileCache::open(&d.path().join("cache"), &p).unwrap();
        assert_eq!(reopened.staging().unwrap().promote().unwrap(), 0);
        assert!(!reopened.dir.join("abc.0/k3").exists());
    }

    #[test]
    fn pruning_never_follows_a_link_and_leaves_what_is_not_ours() {
        let d = tempfile::tempdir().unwrap();
        let p = parser(d.path());
        let cache_dir = d.path().join("cache");
        // Someone else's tree, with sub-directories named like our fingerprints.
        let victim = d.path().join("victim");
        let their_dir = victim.join("0123456789abcdef01234567");
        fs::create_dir_all(&their_dir).unwrap();
        fs::write(their_dir.join("data"), "precious").unwrap();
        fs::create_dir_all(&cache_dir).unwrap();
        std::os::unix::fs::symlink(&victim, cache_dir.join("policy")).unwrap();
        std::os::unix::fs::symlink(&victim, cache_dir.join("staging")).unwrap();
        let cache = CompileCache::open(&cache_dir, &p).unwrap();
        assert_eq!(
            fs::read_to_string(their_dir.join("data")).unwrap(),
            "precious"
        );
        assert!(
            fs::symlink_metadata(cache_dir.join("policy"))
                .unwrap()
                .is_dir()
        );
        assert!(cache.dir.starts_with(cache_dir.join("policy")));
        let _staging = cache.staging().unwrap();
        assert!(
            fs::symlink_metadata(cache_dir.join("staging"))
                .unwrap()
                .is_dir()
        );

        // A stray file, a link and a foreign directory inside policy/ stay; every run works.
        let policy = cache_dir.join("policy");
        fs::write(policy.join("stray"), "x").unwrap();
        fs::write(policy.join("fedcba9876543210fedcba98"), "a file, not ours").unwrap();
        std::os::unix::fs::symlink(&their_dir, policy.join("00000000000000000000000a")).unwrap();
        fs::create_dir(policy.join("notes")).unwrap();
        for _ in 0..2 {
            CompileCache::open(&cache_dir, &p).unwrap();
        }
        for kept in [
            "stray",
            "fedcba9876543210fedcba98",
            "00000000000000000000000a",
            "notes",
        ] {
            assert!(fs::symlink_metadata(policy.join(kept)).is_ok(), "{kept}");
        }
        assert_eq!(
            fs::read_to_string(their_dir.join("data")).unwrap(),
            "precious"
        );
    }
}
