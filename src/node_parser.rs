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

use crate::host_file::{self, Links};

/// Where the node's os-release is mounted, relative to the node root.
const NODE_OS_RELEASE: &str = "etc/os-release";

/// The AppArmor userspace generation a distribution release ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeParser {
    /// AppArmor 3.x: files must also compile with a 3.x parser.
    V3 { os: String },
    /// AppArmor 4.x, or a release not known to ship 3.x: the image's parser decides.
    Current { os: String },
    /// No os-release: nothing known about the node.
    Unknown,
}

impl NodeParser {
    /// Reads `<node_root>/etc/os-release`.
    pub fn detect(node_root: &Path) -> Self {
        match host_file::read_to_string(&node_root.join(NODE_OS_RELEASE), Links::Follow) {
            Ok(text) => from_os_release(&text),
            Err(_) => NodeParser::Unknown,
        }
    }
}

/// The table: which releases ship AppArmor 3.x userspace.
fn from_os_release(text: &str) -> NodeParser {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let id = field("ID");
    let version = field("VERSION_ID");
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
    }
}
