//! Crash-safe file replacement: a reader (the host's `apparmor_parser` at boot, or the next run of
//! this tool) sees either the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temporary file this tool creates. A dot-file (`apparmor_parser` skips those,
/// so a half-written file is never loaded), and of a fixed length whatever the target's name,
/// so a target name up to the file system's 255 bytes always has a temporary name that fits.
pub const TEMP_PREFIX: &str = ".apparmor-profile-loader.tmp-";

/// Distinguishes the temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `content` to `dir/name` through a temporary file in the same directory
/// (`<TEMP_PREFIX><pid>-<n>`), fsyncs it, sets `mode`, and renames it over the target. Call
/// [`sync_dir`] after a batch.
pub fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> std::io::Result<()> {
    write_at(dir, name, content, mode, None)
}

/// [`write`], giving the new file the modification time `mtime` (the parser's cache matches
/// entries to files by mtime) before it takes the target's place.
pub fn write_at(
    dir: &Path,
    name: &str,
    content: &[u8],
    mode: u32,
    mtime: Option<std::time::SystemTime>,
) -> std::io::Result<()> {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(t) = mtime {
            f.set_modified(t)?;
        }
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether `name` is one of our temporary files: [`TEMP_PREFIX`] then `<pid>-<n>`, or the
/// form earlier versions used, `.<name>.tmp-<pid>` (the name a valid ConfigMap key). Nothing
/// else ever matches, so a cleanup never touches a file that is not ours.
pub fn is_temp_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
        return rest
            .split_once('-')
            .is_some_and(|(pid, n)| digits(pid) && digits(n));
    }
    name.strip_prefix('.')
        .and_then(|rest| rest.rsplit_once(".tmp-"))
        .is_some_and(|(target, pid)| {
            // Records (`.apparmor-profile-loader.json`, `loaded.json`) were written the same
            // way; both names without their dot are valid keys.
            digits(pid) && crate::profile_files::validate_key(target).is_ok()
        })
}

/// Removes the temporary files a crashed run (`kill -9`, OOM, node power loss) left in `dir`,
/// and only those ([`is_temp_name`]). Call it only while holding the run lock, so no run of
/// ours is writing one at the same moment. A missing directory has nothing to clean. Returns
/// the files removed.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let is_ours =
            entry.file_name().to_str().is_some_and(is_temp_name) && entry.file_type()?.is_file();
        if is_ours {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed.push(entry.path()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    removed.sort();
    Ok(removed)
}

/// Makes renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_content_with_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("p"), "old").unwrap();
        write(dir.path(), "p", b"new", 0o644).unwrap();
        sync_dir(dir.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("p")).unwrap(), "new");
        assert_eq!(
            fs::metadata(dir.path().join("p")).unwrap().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn failure_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("p"), "old").unwrap();
        // A non-empty directory in place of the target makes the rename fail: the target is
        // still that directory with its content, and no temporary file is left behind.
        fs::create_dir(dir.path().join("q")).unwrap();
        fs::write(dir.path().join("q/x"), "inner").unwrap();
        assert!(write(dir.path(), "q", b"new", 0o644).is_err());
        assert!(dir.path().join("q").is_dir());
        assert_eq!(fs::read_to_string(dir.path().join("q/x")).unwrap(), "inner");
        assert_eq!(fs::read_to_string(dir.path().join("p")).unwrap(), "old");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["p", "q"]);
    }

    #[test]
    fn temp_names_do_not_depend_on_the_target_name() {
        let dir = tempfile::tempdir().unwrap();
        let longest = "k".repeat(255);
        write(dir.path(), &longest, b"x", 0o644).unwrap();
        assert_eq!(fs::read(dir.path().join(&longest)).unwrap(), b"x");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_name_pattern_matches_only_our_files() {
        let ours = [
            ".apparmor-profile-loader.tmp-12-0",
            ".apparmor-profile-loader.tmp-4194304-18446744073709551615",
            ".alpha.tmp-123",
            ".k8s-nginx.tmp-1",
            ".apparmor-profile-loader.json.tmp-77",
            ".loaded.json.tmp-77",
        ];
        for name in ours {
            assert!(is_temp_name(name), "{name}");
        }
        let theirs = [
            "alpha",
            ".apparmor-profile-loader.json",
            ".apparmor-profile-loader.lock",
            ".apparmor-profile-loader.tmp-",
            ".apparmor-profile-loader.tmp-12",
            ".apparmor-profile-loader.tmp-12-x",
            ".apparmor-profile-loader.tmp-a-1",
            ".alpha.tmp-",
            ".alpha.tmp-12a",
            ".alpha.tmp",
            "alpha.tmp-123",
            "..data",
            ".bad name.tmp-1",
            "..x.tmp-1",
            ".tmp-1",
        ];
        for name in theirs {
            assert!(!is_temp_name(name), "{name}");
        }
    }

    #[test]
    fn stale_temps_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let keep = [
            "alpha",
            ".apparmor-profile-loader.json",
            ".hidden",
            "x.tmp-1",
        ];
        for name in keep {
            fs::write(dir.path().join(name), "keep").unwrap();
        }
        for name in [".apparmor-profile-loader.tmp-99-3", ".alpha.tmp-99"] {
            fs::write(dir.path().join(name), "half").unwrap();
        }
        // A directory that happens to match is not a file we wrote: left alone.
        fs::create_dir(dir.path().join(".beta.tmp-5")).unwrap();
        let removed = remove_stale_temps(dir.path()).unwrap();
        let removed: Vec<_> = removed.iter().map(|p| p.file_name().unwrap()).collect();
        assert_eq!(
            removed,
            [".alpha.tmp-99", ".apparmor-profile-loader.tmp-99-3"]
        );
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".apparmor-profile-loader.json",
                ".beta.tmp-5",
                ".hidden",
                "alpha",
                "x.tmp-1"
            ]
        );
        assert!(
            remove_stale_temps(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }
}
