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

/// What `copy` checks our files with for the node's own boot: the parser generations the
/// node's release may load them with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeParser {
    /// AppArmor 3.x, or a release this tool does not know: files must also compile with the
    /// image's 3.x parser. `os` says which, for the log.
    V3 { os: String },
    /// AppArmor 4.x: the image's parser decides.
    Current { os: String },
}

#[derive(Debug, thiserror::Error)]
pub enum OsReleaseError {
    #[error(
        "cannot read the node's os-release ({tried}): copy needs it to know which AppArmor the \
         node's own boot loads our files with, and refuses to guess. Mount the host's \
         /etc/os-release at <node-root>/etc/os-release (read-only), or declare the node's \
         AppArmor with --node-apparmor 3|4"
    )]
    Unreadable { tried: String },
    #[error(
        "the node runs {os}, which ships AppArmor {version}: this image carries no parser of \
         that generation, so it cannot prove the node's own boot would load our files. Keep \
         the DaemonSet off such nodes (upgrade them), or declare --node-apparmor 3 to check \
         with AppArmor 3.0 instead"
    )]
    Unsupported { os: String, version: &'static str },
}

impl crate::exit_code::ExitStatus for OsReleaseError {
    fn exit_code(&self) -> u8 {
        match self {
            OsReleaseError::Unreadable { .. } | OsReleaseError::Unsupported { .. } => {
                crate::exit_code::INTERNAL
            }
        }
    }
}

impl NodeParser {
    /// The node's release and its AppArmor, for the log and the node's annotation.
    pub fn os(&self) -> &str {
        match self {
            NodeParser::V3 { os } | NodeParser::Current { os } => os,
        }
    }

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
                Ok(text) => return from_os_release(&text),
                Err(e) => tried.push(e),
            }
        }
        Err(OsReleaseError::Unreadable {
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

/// The AppArmor userspace a release ships, by its os-release: the README's "AKS node images"
/// table. `None`: a release this tool does not know.
fn apparmor_of(text: &str) -> Option<&'static str> {
    let value = |key| os_release_value(text, key).unwrap_or_default();
    let (id, version) = (value("ID"), value("VERSION_ID"));
    let like = value("ID_LIKE");
    let (major, minor) = version
        .split_once('.')
        .map_or((version.as_str(), "0"), |(a, b)| (a, b));
    let release = (
        major.parse::<u32>().ok()?,
        minor.parse::<u32>().unwrap_or(0),
    );
    let ubuntu = |release: (u32, u32)| match release {
        (..=20, _) | (21, ..=3) => "2.13",
        (21, _) | (22, _) | (23, ..=9) => "3.0",
        (23, _) | (24, ..=9) => "4.0",
        _ => "4.1",
    };
    match id.as_str() {
        "ubuntu" => Some(ubuntu(release)),
        "debian" => Some(match release.0 {
            ..=11 => "2.13",
            12 => "3.0",
            _ => "4.1",
        }),
        // Azure Linux 3 ships AppArmor 3.1 (node images from 20251107 on).
        "azurelinux" if release.0 == 3 => Some("3.1"),
        // An Ubuntu derivative: its own version says nothing, the Ubuntu it is built on does.
        _ if like.split_whitespace().any(|l| l == "ubuntu") => {
            match value("UBUNTU_CODENAME").as_str() {
                "focal" => Some("2.13"),
                "jammy" => Some("3.0"),
                "noble" => Some("4.0"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The node's parser generation from its os-release (see [`apparmor_of`]). A release this tool
/// does not know is checked with AppArmor 3 as well (fail closed: a file both generations read
/// loads at boot on either); one that ships AppArmor 2 is refused.
fn from_os_release(text: &str) -> Result<NodeParser, OsReleaseError> {
    let value = |key| os_release_value(text, key).unwrap_or_default();
    let os = format!("{} {}", value("ID"), value("VERSION_ID"))
        .trim()
        .to_string();
    let os = if os.is_empty() {
        "an unnamed OS".to_string()
    } else {
        os
    };
    match apparmor_of(text) {
        Some(version @ "2.13") => Err(OsReleaseError::Unsupported { os, version }),
        Some(version) if version.starts_with('3') => Ok(NodeParser::V3 {
            os: format!("{os} (AppArmor {version})"),
        }),
        Some(version) => Ok(NodeParser::Current {
            os: format!("{os} (AppArmor {version})"),
        }),
        None => Ok(NodeParser::V3 {
            os: format!(
                "{os}, a release this tool does not know (files must compile with AppArmor 3 as \
                 well as 4; declare --node-apparmor 4 to check with 4 only)"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_of_releases_and_their_apparmor() {
        let os = |id: &str, v: &str| format!("NAME=x\nID={id}\nVERSION_ID=\"{v}\"\n");
        let cases = [
            (os("ubuntu", "20.04"), Some("2.13")),
            (os("ubuntu", "22.04"), Some("3.0")),
            (os("ubuntu", "23.10"), Some("4.0")),
            (os("ubuntu", "24.04"), Some("4.0")),
            (os("ubuntu", "25.04"), Some("4.1")),
            (os("debian", "11"), Some("2.13")),
            (os("debian", "12"), Some("3.0")),
            (os("debian", "13"), Some("4.1")),
            (os("azurelinux", "3.0"), Some("3.1")),
            (os("mariner", "2.0"), None),
            ("garbage".to_string(), None),
            // Derivatives: the Ubuntu they are built on decides, not their own version.
            (
                "ID=pop\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=22.04\nUBUNTU_CODENAME=jammy\n".into(),
                Some("3.0"),
            ),
            (
                "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=\"21.3\"\nUBUNTU_CODENAME=jammy\n".into(),
                Some("3.0"),
            ),
            (
                "ID=mint\nID_LIKE=ubuntu\nVERSION_ID=22\nUBUNTU_CODENAME=noble\n".into(),
                Some("4.0"),
            ),
            // ID_LIKE=debian alone says nothing about the version.
            ("ID=raspbian\nID_LIKE=debian\nVERSION_ID=12\n".into(), None),
            // Single quotes are as legal as double ones (os-release(5)); comments are skipped.
            ("# ID=debian\nID='ubuntu'\nVERSION_ID='22.04'\n".into(), Some("3.0")),
            ("ID=\"ubuntu\"\nVERSION_ID=\"22\\.04\"\n".into(), Some("3.0")),
        ];
        for (text, want) in cases {
            assert_eq!(apparmor_of(&text), want, "{text:?}");
        }
    }

    #[test]
    fn generations_checked_per_release() {
        let os = |id: &str, v: &str| format!("ID={id}\nVERSION_ID=\"{v}\"\n");
        let v3 = |text: &str| matches!(from_os_release(text), Ok(NodeParser::V3 { .. }));
        assert!(v3(&os("ubuntu", "22.04")));
        assert!(v3(&os("azurelinux", "3.0")));
        assert!(!v3(&os("ubuntu", "24.04")));
        assert!(!v3(&os("debian", "13")));
        // Unknown: checked with 3 as well, and the log says so.
        match from_os_release(&os("flatcar", "4000")) {
            Ok(NodeParser::V3 { os }) => assert!(os.contains("does not know"), "{os}"),
            other => panic!("{other:?}"),
        }
        // AppArmor 2: no parser of that generation here, refused with what to do.
        let err = from_os_release(&os("ubuntu", "20.04"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AppArmor 2.13") && err.contains("--node-apparmor"),
            "{err}"
        );
        assert_eq!(
            from_os_release(&os("ubuntu", "22.04")).unwrap(),
            NodeParser::V3 {
                os: "ubuntu 22.04 (AppArmor 3.0)".into()
            }
        );
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
                os: "ubuntu 22.04 (AppArmor 3.0)".into()
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
