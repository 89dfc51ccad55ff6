//! Crash-safe file replacement: a reader (the host's `apparmor_parser` at boot, or the next run of
//! this tool) sees either the old file or the new one, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Prefix of every temporary file this tool creates. A dot-file (`apparmor_parser` skips those,
/// so a half-written file is never loaded), and of a fixed length whatever the target's name,
/// so a target name up to the file system's 255 bytes always has a temporary name that fits.
pub const TEMP_PREFIX: &str = ".apparmor-profile-loader.tmp-";

/// Random alphanumeric characters after [`TEMP_PREFIX`]: the name cannot be predicted, so
/// nothing can be planted there in advance.
const TEMP_RANDOM_LEN: usize = 16;

/// Writes `content` to `dir/name` through a temporary file in the same directory, fsyncs it,
/// sets `mode`, and renames it over the target. Call [`sync_dir`] after a batch.
pub fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> std::io::Result<()> {
    write_at(dir, name, content, mode, None)
}

/// [`write`], giving the new file the modification time `mtime` (the parser's cache matches
/// entries to files by mtime) before it takes the target's place.
///
/// The temporary file is created exclusively (`O_CREAT | O_EXCL`: a symlink or any other file
/// already at that name is never followed or reused) under an unpredictable name, so a host
/// directory someone else can write to cannot redirect the write; the rename then puts that
/// regular file, and only it, in the target's place.
pub fn write_at(
    dir: &Path,
    name: &str,
    content: &[u8],
    mode: u32,
    mtime: Option<std::time::SystemTime>,
) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .rand_bytes(TEMP_RANDOM_LEN)
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    let f = tmp.as_file_mut();
    f.write_all(content)?;
    // The umask narrowed the mode at creation; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    if let Some(t) = mtime {
        f.set_modified(t)?;
    }
    f.sync_all()?;
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(dir.join(name)).map(drop).map_err(|e| e.error)
}

/// Whether `path` already holds exactly `content` as a regular file (not through a link) with
/// permission bits `mode`: a writer that leaves such a file alone keeps its modification time.
pub fn holds(path: &Path, content: &[u8], mode: u32) -> bool {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o777 == mode => {
            fs::read(path).is_ok_and(|existing| existing == content)
        }
        _ => false,
    }
}

/// Whether `name` is one of our temporary files: [`TEMP_PREFIX`] then exactly
/// [`TEMP_RANDOM_LEN`] ASCII letters and digits. Nothing else ever matches, so a cleanup
/// ([`crate::host::leftovers`]) never touches a file that is not ours.
pub fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).is_some_and(|rest| {
        rest.len() == TEMP_RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
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
    fn a_file_holds_content_only_as_a_regular_file_with_that_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p");
        assert!(!holds(&p, b"x", 0o644), "missing");
        write(dir.path(), "p", b"x", 0o644).unwrap();
        assert!(holds(&p, b"x", 0o644));
        assert!(!holds(&p, b"y", 0o644), "other content");
        assert!(!holds(&p, b"x", 0o600), "other mode");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(
            !holds(&link, b"x", 0o644),
            "a link, even to the same content"
        );
    }

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
            ".apparmor-profile-loader.tmp-0123456789abcdef",
            ".apparmor-profile-loader.tmp-ABCDEFGHIJKLMNOP",
        ];
        for name in ours {
            assert!(is_temp_name(name), "{name}");
        }
        let theirs = [
            "alpha",
            ".apparmor-profile-loader.json",
            ".apparmor-profile-loader.lock",
            ".apparmor-profile-loader.tmp-",
            ".apparmor-profile-loader.tmp-12-0",
            ".apparmor-profile-loader.tmp-0123456789abcde",
            ".apparmor-profile-loader.tmp-0123456789abcdef0",
            ".apparmor-profile-loader.tmp-0123456789abcde-",
            // An editor's or a package manager's temporary files in /etc/apparmor.d.
            ".usr.bin.man.tmp-1",
            ".usr.sbin.cupsd.tmp-20240101",
            ".alpha.tmp-123",
            "..data",
        ];
        for name in theirs {
            assert!(!is_temp_name(name), "{name}");
        }
    }

    #[test]
    fn a_symlink_planted_at_a_temp_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        // Links at every name a pid-and-counter scheme could pick for this process.
        for n in 0..64 {
            let name = format!("{TEMP_PREFIX}{}-{n}", std::process::id());
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        for i in 0..8 {
            write(dir.path(), &format!("p{i}"), b"new", 0o644).unwrap();
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);
        for i in 0..8 {
            let target = dir.path().join(format!("p{i}"));
            assert!(fs::symlink_metadata(&target).unwrap().is_file());
            assert_eq!(fs::read_to_string(target).unwrap(), "new");
        }
    }
}
