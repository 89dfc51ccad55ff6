//! The parser's cache layout: the one place that knows how `apparmor_parser --write-cache
//! --cache-loc DIR` lays out `DIR`.
//!
//! The parser documents that it writes a cache, not how. AppArmor 3.0 and 4.1 both write one
//! sub-directory per kernel feature set, `<hash>.<n>` (`n` tells apart sets whose hash
//! collides), holding that set in [`FEATURES_FILE`] and one compiled entry per profile file,
//! named after the file. `copy` compiles into a staging cache and promotes it into the cache
//! `load` reads ([`merge`]), which means moving entries within this layout; nothing else here
//! depends on it. `tests/cli/parser_cache.rs` runs the real parser and fails if the layout
//! changes.

use std::fs;
use std::io;
use std::path::Path;

/// The file in a feature-set directory that holds the feature set its entries were compiled
/// for.
pub const FEATURES_FILE: &str = ".features";

/// The compiled entries of a cache as `(feature-set directory, entry)` names, sorted: what the
/// parser finds there. Anything outside a feature-set directory is not an entry.
pub fn entries(cache_loc: &Path) -> io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for set in fs::read_dir(cache_loc)? {
        let set = set?;
        if !set.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(set.path())? {
            let entry = entry?;
            if entry.file_name() != FEATURES_FILE {
                out.push((
                    set.file_name().to_string_lossy().into_owned(),
                    entry.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Moves every compiled entry of the cache `from` into the cache `into`; returns how many.
///
/// A feature-set directory `into` lacks is moved as a whole; one whose [`FEATURES_FILE`] is
/// the same in both is merged entry by entry (an entry of `from` replaces one of the same
/// name); one whose feature set differs is left in `from` (whoever reads `into` then compiles
/// those files itself). `from` is left to the caller.
pub fn merge(from: &Path, into: &Path) -> io::Result<usize> {
    let mut moved = 0;
    for set in fs::read_dir(from)? {
        let set = set?;
        if !set.file_type()?.is_dir() {
            continue;
        }
        let target = into.join(set.file_name());
        if !target.exists() {
            moved += fs::read_dir(set.path())?
                .filter(|e| e.as_ref().map_or(true, |e| e.file_name() != FEATURES_FILE))
                .count();
            fs::rename(set.path(), &target)?;
            continue;
        }
        let same_set = fs::read(set.path().join(FEATURES_FILE)).ok()
            == fs::read(target.join(FEATURES_FILE)).ok();
        if !same_set {
            continue;
        }
        for entry in fs::read_dir(set.path())? {
            let entry = entry?;
            if entry.file_name() != FEATURES_FILE {
                fs::rename(entry.path(), target.join(entry.file_name()))?;
                moved += 1;
            }
        }
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cache: &Path, name: &str, features: &str, entries: &[&str]) {
        let dir = cache.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(FEATURES_FILE), features).unwrap();
        for e in entries {
            fs::write(dir.join(e), format!("policy of {e}")).unwrap();
        }
    }

    #[test]
    fn merge_moves_new_sets_whole_merges_same_sets_and_leaves_conflicting_ones() {
        let d = tempfile::tempdir().unwrap();
        let (from, into) = (d.path().join("from"), d.path().join("into"));
        set(&into, "abc.0", "f1", &["old", "both"]);
        set(&into, "abc.1", "f2", &["x"]);
        set(&from, "abc.0", "f1", &["new", "both"]);
        set(&from, "abc.1", "another f2", &["y"]);
        set(&from, "def.0", "f3", &["z"]);
        fs::write(from.join("stray"), "not an entry").unwrap();
        assert_eq!(merge(&from, &into).unwrap(), 3);
        let names = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(s, e)| (s.to_string(), e.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            entries(&into).unwrap(),
            names(&[
                ("abc.0", "both"),
                ("abc.0", "new"),
                ("abc.0", "old"),
                ("abc.1", "x"),
                ("def.0", "z"),
            ])
        );
        assert_eq!(
            fs::read_to_string(into.join("abc.0/both")).unwrap(),
            "policy of both"
        );
        // The conflicting set stays behind, untouched.
        assert_eq!(entries(&from).unwrap(), names(&[("abc.1", "y")]));
    }
}
