//! Paths of the node's own files, seen through read-only mounts under a node root in this
//! container (`<node-root>/etc/os-release`, `<node-root>/etc/apparmor/parser.conf`, a pinned
//! feature file). A symlink among them means what it means on the node: `/etc/os-release ->
//! ../usr/lib/os-release` on Ubuntu, an absolute link, or a linked `/etc` itself. So every
//! component is resolved inside the node root, never through this container's own files and
//! never out of the root.

use std::io;
use std::path::{Component, Path, PathBuf};

/// How many symlinks are followed, inside the node root, to reach one file.
const MAX_LINKS: usize = 16;

/// Resolves `node_path` (a path on the node, absolute or relative to its `/`) under `root` the
/// way the node would resolve it under `/`: every component that is a symlink (absolute or
/// relative) is followed inside `root`, and `..` stops at `root`. Returns the path in this
/// container, whose components are no longer links; it need not exist (the caller's open says
/// so, naming it).
pub fn resolve(root: &Path, node_path: &Path) -> io::Result<PathBuf> {
    let mut pending: Vec<PathBuf> = components_reversed(node_path);
    let mut inside = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part.as_os_str() == ".." {
            inside.pop();
            continue;
        }
        let candidate = inside.join(&part);
        let in_container = root.join(&candidate);
        match std::fs::symlink_metadata(&in_container) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "{}: more than {MAX_LINKS} symbolic links on the node's path {}",
                        in_container.display(),
                        node_path.display()
                    )));
                }
                let target = std::fs::read_link(&in_container)?;
                if target.is_absolute() {
                    inside = PathBuf::new();
                }
                pending.extend(components_reversed(&target));
            }
            Ok(_) => inside = candidate,
            // Missing: the rest cannot be a link either; the caller's open names the path.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                inside = candidate;
                while let Some(rest) = pending.pop() {
                    if rest.as_os_str() == ".." {
                        inside.pop();
                    } else {
                        inside.push(rest);
                    }
                }
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", in_container.display()),
                ));
            }
        }
    }
    Ok(root.join(inside))
}

/// The normal components and `..` of a path, last first (a stack to pop from); `/` and `.`
/// are dropped.
fn components_reversed(path: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.path().join("real-etc/apparmor")).unwrap();
        std::fs::write(root.path().join("usr/lib/os-release"), "ID=x\n").unwrap();
        root
    }

    #[test]
    fn links_anywhere_on_the_path_resolve_inside_the_root() {
        let root = tree();
        let r = root.path();
        // A linked /etc (absolute target), then Ubuntu's relative os-release link under it.
        symlink("/real-etc", r.join("etc")).unwrap();
        symlink("../usr/lib/os-release", r.join("real-etc/os-release")).unwrap();
        assert_eq!(
            resolve(r, Path::new("/etc/os-release")).unwrap(),
            r.join("usr/lib/os-release")
        );
        // An absolute link to a file this container has too (/etc/hostname) stays in the root.
        symlink("/etc/hostname", r.join("real-etc/apparmor/parser.conf")).unwrap();
        assert_eq!(
            resolve(r, Path::new("etc/apparmor/parser.conf")).unwrap(),
            r.join("real-etc/hostname")
        );
        // `..` never climbs out of the root.
        symlink("../../../../../usr/lib/os-release", r.join("real-etc/up")).unwrap();
        assert_eq!(
            resolve(r, Path::new("/etc/up")).unwrap(),
            r.join("usr/lib/os-release")
        );
        // A missing file resolves to where it would be.
        assert_eq!(
            resolve(r, Path::new("/etc/missing/x")).unwrap(),
            r.join("real-etc/missing/x")
        );
    }

    #[test]
    fn a_link_loop_is_an_error_not_a_hang() {
        let root = tree();
        symlink("/b", root.path().join("a")).unwrap();
        symlink("/a", root.path().join("b")).unwrap();
        let err = resolve(root.path(), Path::new("/a/x")).unwrap_err();
        assert!(err.to_string().contains("symbolic links"), "{err}");
    }
}
