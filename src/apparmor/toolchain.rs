//! The fingerprint of the toolchain: everything that shapes compiled policy besides the profile
//! itself and the kernel's feature set (which the parser keys its cache on by itself).
//!
//! That is the parser binary, the pinned policy features (which the parser's cache ignores)
//! and the content of its include tree, hashed afresh by every step: for the parser and its
//! ~150 includes that is about 2 ms.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::apparmor::parser::Parser;

/// Sub-directories of the include tree that hold no includes (compiled policy, the parser's
/// disable and force-complain links).
const NOT_INCLUDES: &[&str] = &["cache", "disable", "force-complain"];

/// Hex fingerprint of the parser binary, its pinned policy features and the content of every
/// include file it can read: the sub-directories of its base (`abi/`, `abstractions/`,
/// `tunables/`, `local/`, …) and every `--Include` directory. Top-level files of the base are
/// profiles, not includes: the base may be the profile directory itself, whose files change
/// with every ConfigMap update.
///
pub fn fingerprint(parser: &Parser) -> io::Result<String> {
    let content = content_hash(&hashed_files(parser)?)?;
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
    use std::time::Duration;

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
}
