//! Reboot parity: the node's own parser must be able to read our files too.
//!
//! Our files sit in the node's top-level `/etc/apparmor.d`, and after a reboot the node's own
//! `apparmor_parser` (not ours) loads them before the kubelet starts. The image carries an
//! AppArmor 4.x parser; a node with AppArmor 3.x (AKS Ubuntu 22.04) cannot read 4.x syntax
//! such as `userns,` and would fail to load that file at boot. The node's parser is not
//! something we can run from a scratch image (Azure Linux ships none), so we read the node's
//! `/etc/os-release` and, for distributions known to ship AppArmor 3, also compile every new
//! or changed file with the AppArmor 3 parser the image carries for exactly this check.

use std::path::Path;

use crate::host::host_file;
use crate::host::node_root;

/// Where the node's os-release is, relative to the node root, in the order os-release(5) says
/// to read them.
const NODE_OS_RELEASE: [&str; 2] = ["etc/os-release", "usr/lib/os-release"];

/// The AppArmor userspace generation a distribution release ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeParser {
    /// AppArmor 3.x: files must also compile with a 3.x parser.
    V3 { os: String },
    /// AppArmor 4.x, or a release not known to ship 3.x: the image's parser decides.
    Current { os: String },
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the node's os-release ({tried}): copy needs it to know which AppArmor the \
     node's own boot loads our files with, and refuses to guess. Mount the host's \
     /etc/os-release at <node-root>/etc/os-release (read-only), or declare the node's AppArmor \
     with --node-apparmor 3|4"
)]
pub struct OsReleaseError {
    tried: String,
}

impl crate::exit_code::ExitStatus for OsReleaseError {
    fn exit_code(&self) -> u8 {
        crate::exit_code::INTERNAL
    }
}

impl NodeParser {
    /// A node the operator declared to boot with AppArmor 3 (`--node-apparmor 3`).
    pub fn declared_v3() -> Self {
        NodeParser::V3 {
            os: "a node declared AppArmor 3 (--node-apparmor)".into(),
        }
    }

    /// A node the operator declared to boot with AppArmor 4 (`--node-apparmor 4`).
    pub fn declared_v4() -> Self {
        NodeParser::Current {
            os: "a node declared AppArmor 4 (--node-apparmor)".into(),
        }
    }

    /// What the node boots with, read from `<node_root>/etc/os-release` (else
    /// `<node_root>/usr/lib/os-release`), symlinks resolved inside the node root.
    pub fn detect(node_root: &Path) -> Result<Self, OsReleaseError> {
        let mut tried = Vec::new();
        for rel in NODE_OS_RELEASE {
            let read = node_root::resolve(node_root, Path::new(rel))
                .map_err(|e| e.to_string())
                .and_then(|path| {
                    host_file::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
                });
            match read {
                Ok(text) => return Ok(from_os_release(&text)),
                Err(e) => tried.push(e),
            }
        }
        Err(OsReleaseError {
            tried: tried.join("; "),
        })
    }
}

/// One value of an os-release file, as os-release(5) specifies it: `KEY=value`, the value
/// unquoted or in single or double quotes, with backslash escapes; comments and blank lines
/// are ignored. `None` when the key is absent.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| unquote(v))
}

fn unquote(v: &str) -> String {
    let inner = match v.as_bytes() {
        [q @ (b'"' | b'\''), .., last] if last == q && v.len() >= 2 => &v[1..v.len() - 1],
        _ => v,
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The table: which releases ship AppArmor 3.x userspace.
fn from_os_release(text: &str) -> NodeParser {
    let id = os_release_value(text, "ID").unwrap_or_default();
    let version = os_release_value(text, "VERSION_ID").unwrap_or_default();
    let os = format!("{id} {version}").trim().to_string();
    let (major, minor) = version
        .split_once('.')
        .map_or((version.as_str(), "0"), |(a, b)| (a, b));
    let major: u32 = major.parse().unwrap_or(0);
    let minor: u32 = minor.parse().unwrap_or(0);
    let v3 = match id.as_str() {
        // Ubuntu 22.04 ships AppArmor 3.0; 24.04 ships 4.0 (23.10 was the first 4.0).
        "ubuntu" => major > 0 && (major, minor) < (23, 10),
        // Debian 11 and 12 ship AppArmor 2.13/3.0; trixie (13) ships 4.1.
        "debian" => (11..=12).contains(&major),
        _ => false,
    };
    if v3 {
        NodeParser::V3 { os }
    } else {
        NodeParser::Current { os }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_that_ship_apparmor_3() {
        let os = |id: &str, v: &str| format!("NAME=x\nID={id}\nVERSION_ID=\"{v}\"\n");
        let v3 = |text: &str| matches!(from_os_release(text), NodeParser::V3 { .. });
        assert!(v3(&os("ubuntu", "22.04")));
        assert!(v3(&os("ubuntu", "20.04")));
        assert!(!v3(&os("ubuntu", "24.04")));
        assert!(!v3(&os("ubuntu", "23.10")));
        assert!(v3(&os("debian", "12")));
        assert!(!v3(&os("debian", "13")));
        assert!(!v3(&os("azurelinux", "3.0")));
        assert!(!v3("garbage"));
        assert_eq!(
            from_os_release(&os("ubuntu", "22.04")),
            NodeParser::V3 {
                os: "ubuntu 22.04".into()
            }
        );
        // ID_LIKE and VERSION_CODENAME do not confuse the lookup.
        assert!(v3("ID_LIKE=debian\nID=ubuntu\nVERSION_ID=22.04\n"));
        // Single quotes are as legal as double ones (os-release(5)); comments are skipped.
        assert!(v3("# ID=debian\nID='ubuntu'\nVERSION_ID='22.04'\n"));
        assert!(v3("ID=\"ubuntu\"\nVERSION_ID=\"22\\.04\"\n"));
    }

    #[test]
    fn os_release_is_found_through_ubuntus_relative_link_inside_the_node_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::create_dir_all(root.path().join("usr/lib")).unwrap();
        std::fs::write(
            root.path().join("usr/lib/os-release"),
            "ID=ubuntu\nVERSION_ID=\"22.04\"\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", root.path().join("etc/os-release"))
            .unwrap();
        let found = NodeParser::detect(root.path()).unwrap();
        assert_eq!(
            found,
            NodeParser::V3 {
                os: "ubuntu 22.04".into()
            }
        );
        // An absolute link resolves inside the node root too, never to this container's files.
        std::fs::remove_file(root.path().join("etc/os-release")).unwrap();
        std::os::unix::fs::symlink("/usr/lib/os-release", root.path().join("etc/os-release"))
            .unwrap();
        assert!(matches!(
            NodeParser::detect(root.path()).unwrap(),
            NodeParser::V3 { .. }
        ));
        // Only /usr/lib/os-release (the fallback os-release(5) names).
        std::fs::remove_file(root.path().join("etc/os-release")).unwrap();
        assert!(matches!(
            NodeParser::detect(root.path()).unwrap(),
            NodeParser::V3 { .. }
        ));
    }

    #[test]
    fn an_unreadable_os_release_fails_closed_unless_declared() {
        let root = tempfile::tempdir().unwrap();
        let err = NodeParser::detect(root.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("etc/os-release") && msg.contains("--node-apparmor"),
            "{msg}"
        );
        // A link that leaves nothing to read, a FIFO: the same.
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../nowhere", root.path().join("etc/os-release"))
            .unwrap();
        assert!(NodeParser::detect(root.path()).is_err());
        assert!(matches!(NodeParser::declared_v3(), NodeParser::V3 { .. }));
        assert!(matches!(
            NodeParser::declared_v4(),
            NodeParser::Current { .. }
        ));
    }
}
