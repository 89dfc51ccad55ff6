//! Crash-safe file replacement: a reader (the host's `apparmor_parser` at boot, or the next run of
//! this tool) sees either the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `content` to `dir/name` through a dot-named temporary file in the same directory
/// (dot-files are skipped by `apparmor_parser`, so a half-written file is never loaded), fsyncs
/// it, sets `mode`, and renames it over the target. Call [`sync_dir`] after a batch.
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
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
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
        // A directory in place of the target makes the rename fail.
        fs::create_dir(dir.path().join("q")).unwrap();
        fs::write(dir.path().join("q/x"), "").unwrap();
        assert!(write(dir.path(), "q", b"new", 0o644).is_err());
        assert_eq!(fs::read_to_string(dir.path().join("p")).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
