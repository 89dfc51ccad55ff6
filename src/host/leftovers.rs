//! The temporary files a killed run of ours (`kill -9`, OOM, a node rebooted mid-run) left in a
//! host directory: found by a name pattern only this tool's files match, and removed if, and only
//! if, they are regular files.
//!
//! Which names are ours is the writer's to say (`atomic_file` for its temporary files,
//! `apparmor::stub` for its stubs); this module only removes. Call it under the run lock
//! (`lock::RunLock`), so that no run of ours is writing such a file at the same moment.

use std::fs;
use std::path::{Path, PathBuf};

use crate::host::atomic_file;

/// Removes the regular files in `dir` whose names `is_ours` claims. A directory, a symlink or
/// anything else at such a name is not a file we wrote: it is left alone, and a link is never
/// followed (removing a name removes the entry itself, never its target). A missing directory
/// has nothing to clean. Returns the files removed, sorted.
pub fn remove(dir: &Path, is_ours: impl Fn(&str) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        // The entry's own type (`lstat`'s, not the target's of a link).
        let ours = entry.file_name().to_str().is_some_and(&is_ours) && entry.file_type()?.is_file();
        if ours {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed.push(entry.path()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if !removed.is_empty() {
        atomic_file::sync_dir(dir)?;
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_the_pattern_claims_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let keep = [
            "alpha",
            ".apparmor-profile-loader.json",
            ".hidden",
            "x.tmp-1",
            ".usr.bin.man.tmp-1",
            ".usr.sbin.cupsd.tmp-20240101",
        ];
        for name in keep {
            fs::write(dir.path().join(name), "keep").unwrap();
        }
        let ours = ".apparmor-profile-loader.tmp-0123456789abcdef";
        fs::write(dir.path().join(ours), "half").unwrap();
        // A directory or a symlink that happens to match is not a file we wrote: left alone.
        fs::create_dir(
            dir.path()
                .join(".apparmor-profile-loader.tmp-dirdirdirdirdird"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "alpha",
            dir.path()
                .join(".apparmor-profile-loader.tmp-linklinklinklink"),
        )
        .unwrap();
        let removed = remove(dir.path(), atomic_file::is_temp_name).unwrap();
        let removed: Vec<_> = removed.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(removed, [ours]);
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        want.push(".apparmor-profile-loader.tmp-dirdirdirdirdird".into());
        want.push(".apparmor-profile-loader.tmp-linklinklinklink".into());
        want.sort();
        assert_eq!(left, want);
        assert_eq!(
            fs::read_to_string(dir.path().join("alpha")).unwrap(),
            "keep"
        );
        assert!(
            remove(&dir.path().join("missing"), |_| true)
                .unwrap()
                .is_empty()
        );
    }
}
