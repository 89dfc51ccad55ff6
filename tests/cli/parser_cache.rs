//! The parser's cache layout (`src/apparmor/parser_cache.rs`) against the real parser: these
//! fail when a parser release lays out `--cache-loc` differently from what `copy`'s promotion
//! of its staged compile into `load`'s cache moves.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use apparmor_profile_loader::parser_cache::{self, FEATURES_FILE};

use crate::support::{DEBIAN_FEATURES, real_parser};

/// Compiles `profile` into the cache `cache` with the real parser, as `copy` and `load` do.
fn compile(parser: &Path, cache: &Path, profile: &Path) {
    let status = std::process::Command::new(parser)
        .arg("--kernel-features")
        .arg(DEBIAN_FEATURES)
        .args(["--skip-kernel-load", "--write-cache", "--cache-loc"])
        .arg(cache)
        .arg(profile)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{} failed on {}",
        parser.display(),
        profile.display()
    );
}

#[test]
fn the_real_parser_caches_per_feature_set_and_reads_back_a_merged_entry() {
    let Some(parser) = real_parser() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let (cache, staging) = (d.path().join("cache"), d.path().join("staging"));
    fs::create_dir(&cache).unwrap();
    fs::create_dir(&staging).unwrap();
    for name in ["a", "b"] {
        fs::write(d.path().join(name), format!("profile {name} {{\n}}\n")).unwrap();
    }
    compile(&parser, &cache, &d.path().join("a"));
    compile(&parser, &staging, &d.path().join("b"));

    // One `<hash>.<n>` directory per feature set, the set in `.features`, one entry per file
    // named after it.
    let cached = parser_cache::entries(&cache).unwrap();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let set = cached[0].0.clone();
    let (hash, n) = set.split_once('.').expect("<hash>.<n>");
    assert!(
        !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) && n.parse::<u32>().is_ok(),
        "{set}"
    );
    assert_eq!(cached, [(set.clone(), "a".to_string())]);
    assert!(
        fs::metadata(cache.join(&set).join(FEATURES_FILE))
            .unwrap()
            .len()
            > 0
    );
    assert_eq!(
        parser_cache::entries(&staging).unwrap(),
        [(set.clone(), "b".to_string())],
        "the same feature set, the same directory"
    );

    assert_eq!(parser_cache::merge(&staging, &cache).unwrap(), 1);
    assert_eq!(
        parser_cache::entries(&cache).unwrap(),
        [
            (set.clone(), "a".to_string()),
            (set.clone(), "b".to_string())
        ]
    );
    // The parser takes the merged entry as its own: compiling b again is a cache hit, the
    // entry is not rewritten.
    let meta = |p: &Path| fs::metadata(p).map(|m| (m.ino(), m.mtime_nsec())).unwrap();
    let entry = cache.join(&set).join("b");
    let before = meta(&entry);
    compile(&parser, &cache, &d.path().join("b"));
    assert_eq!(meta(&entry), before);
}
