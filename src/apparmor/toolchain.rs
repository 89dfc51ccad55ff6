//! The fingerprint of the toolchain: everything that shapes compiled policy besides the profile
//! itself and the kernel's feature set (which the parser keys its cache on by itself).
//!
//! That is the parser binary, the pinned policy features (which the parser's cache ignores)
//! and the content of its include tree. Reading and hashing a parser and a few hundred
//! includes costs a noticeable share of a re-run on a small node, and they almost never
//! change, so the content hash is memoized next to the compile cache under a key made of every
//! hashed file's path, size, modification and change time. Any write to a file changes its
//! change time, which no one can set back, so a changed file never matches the memo. A file
//! changed within the clock's resolution of being hashed could, so the memo is only written
//! when every file is older than [`SETTLED`]. Device and inode numbers are left out: each
//! container gets its own overlay mount of the same image, with its own device number.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apparmor::parser::Parser;
use crate::host::atomic_file;
use crate::host::host_file::{self, Links};

/// The memo's file name in the cache directory.
pub const MEMO: &str = "toolchain.json";

/// How old every hashed file must be for its `stat` to stand for its content.
pub const SETTLED: Duration = Duration::from_secs(2);

/// Sub-directories of the include tree that hold no includes (compiled policy, the parser's
/// disable and force-complain links).
const NOT_INCLUDES: &[&str] = &["cache", "disable", "force-complain"];

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Memo {
    /// Hash of the hashed files' paths and `stat`.
    stat: String,
    /// Hash of their paths and content.
    content: String,
}

/// Hex fingerprint of the parser binary, its pinned policy features and the content of every
/// include file it can read: the sub-directories of its base (`abi/`, `abstractions/`,
/// `tunables/`, `local/`, …) and every `--Include` directory. Top-level files of the base are
/// profiles, not includes: the base may be the profile directory itself, whose files change
/// with every ConfigMap update.
///
/// With `memo_dir`, the content hash of the last run there is reused when no file changed.
pub fn fingerprint(parser: &Parser, memo_dir: Option<&Path>) -> io::Result<String> {
    fingerprint_at(parser, memo_dir, SystemTime::now())
}

/// [`fingerprint`], as if the time were `now` (tests move it forward instead of waiting).
pub fn fingerprint_at(
    parser: &Parser,
    memo_dir: Option<&Path>,
    now: SystemTime,
) -> io::Result<String> {
    let files = hashed_files(parser)?;
    let content = match memo_dir {
        None => content_hash(&files)?,
        Some(dir) => memoized_content_hash(&files, dir, now)?,
    };
    let mut hash = Sha256::new();
    hash.update(content.as_bytes());
    hash.update(parser.features.cache_key());
    Ok(hex(&hash.finalize()[..12]))
}

/// One input of the content hash: a tree's root (a marker, so moving a file between trees
/// changes the hash) or a file with its metadata.
enum Item {
    Root(PathBuf),
    File(PathBuf, fs::Metadata),
}

/// The parser binary, then every include file in a stable order.
fn hashed_files(parser: &Parser) -> io::Result<Vec<Item>> {
    let mut items = vec![Item::File(
        parser.binary.clone(),
        fs::metadata(&parser.binary)?,
    )];
    let mut add_tree = |root: &Path, min_depth: usize| -> io::Result<()> {
        items.push(Item::Root(root.to_path_buf()));
        let walk = walkdir::WalkDir::new(root)
            .follow_links(true)
            .min_depth(min_depth)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                e.depth() != 1
                    || !e.file_type().is_dir()
                    || !NOT_INCLUDES.iter().any(|n| e.file_name() == *n)
            });
        for entry in walk {
            let entry = entry.map_err(io::Error::other)?;
            if entry.file_type().is_file() && (min_depth == 0 || entry.depth() > 1) {
                let meta = entry.metadata().map_err(io::Error::other)?;
                items.push(Item::File(entry.into_path(), meta));
            }
        }
        Ok(())
    };
    add_tree(&parser.base, 1)?;
    for dir in &parser.includes {
        add_tree(dir, 0)?;
    }
    Ok(items)
}

/// Hash of the items: each root's path, and each file's path followed by what `file` adds.
fn digest(
    items: &[Item],
    mut file: impl FnMut(&mut Sha256, &Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<String> {
    let mut hash = Sha256::new();
    for item in items {
        match item {
            Item::Root(root) => add_path(&mut hash, root),
            Item::File(path, meta) => {
                add_path(&mut hash, path);
                file(&mut hash, path, meta)?;
            }
        }
    }
    Ok(hex(&hash.finalize()))
}

fn content_hash(items: &[Item]) -> io::Result<String> {
    digest(items, |hash, path, _| {
        hash.update(fs::read(path)?);
        Ok(())
    })
}

fn stat_hash(items: &[Item]) -> io::Result<String> {
    digest(items, |hash, _, m| {
        hash.update(m.size().to_le_bytes());
        for n in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
            hash.update(n.to_le_bytes());
        }
        Ok(())
    })
}

fn memoized_content_hash(items: &[Item], dir: &Path, now: SystemTime) -> io::Result<String> {
    let stat = stat_hash(items)?;
    let remembered = host_file::read(&dir.join(MEMO), Links::Refuse)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Memo>(&bytes).ok());
    if let Some(memo) = remembered.filter(|m| m.stat == stat) {
        return Ok(memo.content);
    }
    let content = content_hash(items)?;
    if settled(items, now) {
        let memo = serde_json::to_vec(&Memo {
            stat,
            content: content.clone(),
        })
        .expect("memo serializes");
        // A memo that cannot be written costs the next run a hash, nothing else.
        if let Err(e) = atomic_file::write_at(dir, MEMO, &memo, 0o644, None) {
            tracing::debug!("cannot write {}: {e}", dir.join(MEMO).display());
        }
    }
    Ok(content)
}

/// Whether every file was last changed well before `now` (ctime covers content and mtime).
fn settled(items: &[Item], now: SystemTime) -> bool {
    let Some(limit) = now
        .checked_sub(SETTLED)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
    else {
        return false;
    };
    items.iter().all(|item| match item {
        Item::Root(_) => true,
        Item::File(_, m) => [(m.ctime(), m.ctime_nsec()), (m.mtime(), m.mtime_nsec())]
            .iter()
            .all(|&(s, ns)| u64::try_from(s).is_ok_and(|s| Duration::new(s, ns as u32) < limit)),
    })
}

fn add_path(hash: &mut Sha256, path: &Path) {
    hash.update(path.as_os_str().as_encoded_bytes());
    hash.update([0]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::apparmor::features::Features;

    /// A stand-in parser binary and include tree under `dir` (content only, never run).
    pub(crate) fn parser(dir: &Path) -> Parser {
        fs::create_dir_all(dir.join("base/abstractions")).unwrap();
        fs::write(dir.join("base/abstractions/base"), "/etc/ld.so.cache r,\n").unwrap();
        fs::write(dir.join("parser"), "binary v1").unwrap();
        Parser {
            binary: dir.join("parser"),
            base: dir.join("base"),
            includes: vec![],
            jobs: 1,
            features: Features::ParserDefault,
            timeout: Duration::from_secs(1),
        }
    }

    fn later() -> SystemTime {
        SystemTime::now() + SETTLED * 10
    }

    #[test]
    fn the_memo_stands_for_the_content_only_while_no_file_changes() {
        let d = tempfile::tempdir().unwrap();
        let p = parser(d.path());
        let memo_dir = d.path().join("cache");
        fs::create_dir(&memo_dir).unwrap();
        let unmemoized = fingerprint(&p, None).unwrap();
        assert_eq!(
            fingerprint_at(&p, Some(&memo_dir), later()).unwrap(),
            unmemoized
        );

        // The memo is what the next run uses: prove it by planting a content hash in it.
        let path = memo_dir.join(MEMO);
        let mut memo: Memo = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        memo.content = "planted".into();
        fs::write(&path, serde_json::to_vec(&memo).unwrap()).unwrap();
        let planted = fingerprint_at(&p, Some(&memo_dir), later()).unwrap();
        assert_ne!(planted, unmemoized, "the memo was not used");

        // Same size, mtime set back: the change time still gives the edit away.
        let include = d.path().join("base/abstractions/base");
        let old_mtime = fs::metadata(&include).unwrap().modified().unwrap();
        fs::write(&include, "/etc/ld.so.cache w,\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&include)
            .unwrap()
            .set_modified(old_mtime)
            .unwrap();
        let edited = fingerprint_at(&p, Some(&memo_dir), later()).unwrap();
        assert_eq!(edited, fingerprint(&p, None).unwrap());
        assert_ne!(edited, unmemoized);
        assert_ne!(edited, planted);

        // A new include file is a new key, too.
        fs::write(d.path().join("base/abstractions/new"), "").unwrap();
        assert_eq!(
            fingerprint_at(&p, Some(&memo_dir), later()).unwrap(),
            fingerprint(&p, None).unwrap()
        );
    }

    #[test]
    fn files_changed_just_now_are_hashed_every_time_and_never_memoized() {
        let d = tempfile::tempdir().unwrap();
        let p = parser(d.path());
        let memo_dir = d.path().join("cache");
        fs::create_dir(&memo_dir).unwrap();
        // "Now" is the moment the parser was written, however slow this machine is today.
        let written = fs::metadata(&p.binary).unwrap().modified().unwrap();
        fingerprint_at(&p, Some(&memo_dir), written).unwrap();
        assert!(
            !memo_dir.join(MEMO).exists(),
            "a file written within {SETTLED:?} may still change within the clock's resolution"
        );
    }

    #[test]
    fn an_unreadable_memo_is_recomputed_and_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = parser(d.path());
        let memo_dir = d.path().join("cache");
        fs::create_dir(&memo_dir).unwrap();
        fs::write(memo_dir.join(MEMO), "{not json").unwrap();
        assert_eq!(
            fingerprint_at(&p, Some(&memo_dir), later()).unwrap(),
            fingerprint(&p, None).unwrap()
        );
        let memo: Memo = serde_json::from_slice(&fs::read(memo_dir.join(MEMO)).unwrap()).unwrap();
        assert_eq!(memo.stat, stat_hash(&hashed_files(&p).unwrap()).unwrap());
    }
}
