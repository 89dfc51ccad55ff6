//! The kernel's AppArmor interface: is AppArmor on, and which profiles are loaded in which mode.
//!
//! This is the ground truth `load` checks against. `apparmor_parser` exits 0 when it skips a
//! disabled profile and keeps going past a failed file, so only the kernel's own list proves
//! that a profile is in force.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::apparmor::mode::Mode;
use crate::exit_code::{self, ExitStatus};

/// Default mount point of securityfs on a node (and where the DaemonSet mounts it).
pub const DEFAULT_SECURITYFS: &str = "/sys/kernel/security";
/// The AppArmor module's switch; `Y` when AppArmor is the active LSM.
pub const DEFAULT_ENABLED_FILE: &str = "/sys/module/apparmor/parameters/enabled";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "AppArmor is not available on this node: {file} does not exist, so the kernel has no \
         AppArmor module. Run this DaemonSet only on node pools whose OS enables AppArmor \
         (e.g. AKS Ubuntu; Azure Linux uses SELinux instead) via its nodeSelector"
    )]
    NoModule { file: PathBuf },
    #[error(
        "AppArmor is disabled on this node: {file} reads {value:?}, expected \"Y\". Boot the node \
         with `apparmor=1 security=apparmor` or keep this DaemonSet off nodes without AppArmor"
    )]
    Disabled { file: PathBuf, value: String },
    #[error(
        "AppArmor's securityfs is not reachable: {path} does not exist. Mount the host's \
         /sys/kernel/security into this container (hostPath) or pass --securityfs"
    )]
    NotMounted { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExitStatus for KernelError {
    fn exit_code(&self) -> u8 {
        match self {
            KernelError::NoModule { .. }
            | KernelError::Disabled { .. }
            | KernelError::NotMounted { .. } => exit_code::APPARMOR_UNAVAILABLE,
            // AppArmor is on, but reading its interface failed: not "unavailable".
            KernelError::Io { .. } => exit_code::INTERNAL,
        }
    }
}

/// This boot's random id (not namespaced: a container reads the node's).
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The kernel interface as seen from this container.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub securityfs: PathBuf,
    pub enabled_file: PathBuf,
    /// Where this boot's id is read ([`DEFAULT_BOOT_ID_FILE`]; unit tests point it elsewhere).
    pub boot_id_file: PathBuf,
}

impl Kernel {
    pub fn new(securityfs: &Path, enabled_file: &Path) -> Self {
        Self {
            securityfs: securityfs.to_path_buf(),
            enabled_file: enabled_file.to_path_buf(),
            boot_id_file: PathBuf::from(DEFAULT_BOOT_ID_FILE),
        }
    }

    /// This boot's id, to tell whether policy seen earlier can still be in the kernel (nothing
    /// loaded survives a reboot). `None` when it cannot be read: then nothing is proven by it.
    pub fn boot_id(&self) -> Option<String> {
        let id = fs::read_to_string(&self.boot_id_file).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_string())
    }

    fn profiles_file(&self) -> PathBuf {
        self.securityfs.join("apparmor").join("profiles")
    }

    /// Refuses, with a message that says what to do, when profiles cannot be loaded here.
    pub fn ensure_enabled(&self) -> Result<(), KernelError> {
        let value = match fs::read_to_string(&self.enabled_file) {
            Ok(v) => v.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KernelError::NoModule {
                    file: self.enabled_file.clone(),
                });
            }
            Err(source) => {
                return Err(KernelError::Io {
                    path: self.enabled_file.clone(),
                    source,
                });
            }
        };
        if value != "Y" {
            return Err(KernelError::Disabled {
                file: self.enabled_file.clone(),
                value,
            });
        }
        if !self.profiles_file().exists() {
            return Err(KernelError::NotMounted {
                path: self.profiles_file(),
            });
        }
        Ok(())
    }

    /// The kernel's hash of each loaded profile's policy (securityfs
    /// `apparmor/policy/profiles/<name>.<n>/sha1`, children nested below their parent in
    /// `profiles/`), by full profile name (`parent//child`); empty when the kernel keeps no
    /// hashes (`apparmor.hash_policy=0`).
    pub fn policy_hashes(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let root = self
            .securityfs
            .join("apparmor")
            .join("policy")
            .join("profiles");
        collect_hashes(&root, None, &mut out);
        out
    }

    /// The loaded profiles, or `None` when AppArmor is not running here at all (no module, or
    /// disabled, and securityfs shows no profile list): then nothing is loaded that could be
    /// harmed. The list is read whenever securityfs has it, whatever the enabled file says.
    pub fn loaded_profiles_if_running(
        &self,
    ) -> Result<Option<BTreeMap<String, Mode>>, KernelError> {
        match self.loaded_profiles() {
            Ok(loaded) => Ok(Some(loaded)),
            Err(e) => match self.ensure_enabled() {
                Err(KernelError::NoModule { .. } | KernelError::Disabled { .. })
                    if !self.has_profile_list() =>
                {
                    Ok(None)
                }
                _ => Err(e),
            },
        }
    }

    /// Whether securityfs shows a profile list at all (AppArmor is running).
    fn has_profile_list(&self) -> bool {
        std::fs::symlink_metadata(self.profiles_file()).is_ok()
    }

    /// The loaded profiles and their modes, e.g. `k8s-nginx` → `enforce`. Keyed by the names
    /// as the kernel lists them: other people's profiles are there too, under names this tool
    /// would never load.
    pub fn loaded_profiles(&self) -> Result<BTreeMap<String, Mode>, KernelError> {
        let path = self.profiles_file();
        let text = fs::read_to_string(&path).map_err(|source| KernelError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(parse_profiles(&text))
    }
}

/// Reads the hashes under one `profiles/` directory. A profile's `name` file holds its own
/// name only (a child's is `kid`, not `p//kid`), so a child's full name is its parent's, `//`,
/// and its own.
fn collect_hashes(dir: &Path, parent: Option<&str>, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(name) = fs::read_to_string(path.join("name")) else {
            continue;
        };
        let name = name.strip_suffix('\n').unwrap_or(&name);
        let full = match parent {
            Some(parent) => format!("{parent}//{name}"),
            None => name.to_string(),
        };
        if let Ok(sha1) = fs::read_to_string(path.join("sha1")) {
            let sha1 = sha1.trim();
            if !sha1.is_empty() {
                out.insert(full.clone(), sha1.to_string());
            }
        }
        collect_hashes(&path.join("profiles"), Some(&full), out);
    }
}

/// Parses the kernel's `profiles` file: one `name (mode)` per line; names may contain spaces
/// and parentheses, the mode is always the last parenthesised word (kept as printed when it is
/// not one this tool names: [`Mode::Other`]).
pub fn parse_profiles(text: &str) -> BTreeMap<String, Mode> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end();
            let open = line.rfind(" (")?;
            let mode = line[open + 2..].strip_suffix(')')?;
            Some((line[..open].to_string(), Mode::from(mode)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_hashes_are_read_by_name_children_included() {
        let (dir, k) = fake(Some("Y"), true);
        let p = dir.path().join("security/apparmor/policy/profiles/p.1");
        // As the kernel lays it out: a child's directory under its parent's `profiles/`, its
        // `name` file with its own name only.
        for (d, name, sha) in [
            (p.clone(), "p", "aa"),
            (p.join("profiles/kid.3"), "kid", "bb"),
            (p.join("profiles/kid.3/profiles/a_b.4"), "a\\b", "cc"),
        ] {
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("name"), format!("{name}\n")).unwrap();
            fs::write(d.join("sha1"), format!("{sha}\n")).unwrap();
        }
        let hashes = k.policy_hashes();
        assert_eq!(hashes["p"], "aa");
        assert_eq!(hashes["p//kid"], "bb");
        assert_eq!(hashes["p//kid//a\\b"], "cc");
        assert_eq!(hashes.len(), 3);
    }

    #[test]
    fn profiles_file_is_parsed() {
        let text = "k8s-nginx (enforce)\n/usr/bin/man (complain)\nodd (name) (kill)\n\
                    p//hat (enforce)\nasking (prompt)\ngarbage\n";
        let p = parse_profiles(text);
        assert_eq!(p["k8s-nginx"], Mode::Enforce);
        assert_eq!(p["/usr/bin/man"], Mode::Complain);
        assert_eq!(p["odd (name)"], Mode::Kill);
        assert_eq!(p["p//hat"], Mode::Enforce);
        assert_eq!(p["asking"], Mode::Other("prompt".into()));
        assert_eq!(p.len(), 5);
    }

    fn fake(enabled: Option<&str>, mounted: bool) -> (tempfile::TempDir, Kernel) {
        let dir = tempfile::tempdir().unwrap();
        let enabled_file = dir.path().join("enabled");
        if let Some(v) = enabled {
            fs::write(&enabled_file, v).unwrap();
        }
        let sfs = dir.path().join("security");
        if mounted {
            fs::create_dir_all(sfs.join("apparmor")).unwrap();
            fs::write(sfs.join("apparmor/profiles"), "").unwrap();
        }
        let k = Kernel::new(&sfs, &enabled_file);
        (dir, k)
    }

    #[test]
    fn the_list_is_read_whenever_securityfs_has_it_and_is_none_only_without_apparmor() {
        // No module, or disabled, and no list: nothing is loaded.
        for enabled in [None, Some("N\n")] {
            let (_d, k) = fake(enabled, false);
            assert!(
                k.loaded_profiles_if_running().unwrap().is_none(),
                "{enabled:?}"
            );
        }
        // A list, whatever the enabled file says, is read.
        let (d, k) = fake(Some("N\n"), true);
        fs::write(d.path().join("security/apparmor/profiles"), "p (enforce)\n").unwrap();
        let listed = k.loaded_profiles_if_running().unwrap().unwrap();
        assert_eq!(listed["p"], Mode::Enforce);
        // Enabled, but no list to read: an error, never "nothing loaded".
        let (_d, k) = fake(Some("Y\n"), false);
        assert!(matches!(
            k.loaded_profiles_if_running(),
            Err(KernelError::Io { .. })
        ));
    }

    #[test]
    fn enabled_checks_name_the_file_read() {
        let (_d, k) = fake(Some("Y\n"), true);
        k.ensure_enabled().unwrap();

        let (_d, k) = fake(Some("N\n"), true);
        let msg = k.ensure_enabled().unwrap_err().to_string();
        assert!(
            msg.contains("disabled") && msg.contains("enabled reads \"N\""),
            "{msg}"
        );

        let (_d, k) = fake(None, true);
        let msg = k.ensure_enabled().unwrap_err().to_string();
        assert!(
            msg.contains("does not exist") && msg.contains("SELinux"),
            "{msg}"
        );

        let (_d, k) = fake(Some("Y"), false);
        let msg = k.ensure_enabled().unwrap_err().to_string();
        assert!(
            msg.contains("securityfs") && msg.contains("apparmor/profiles"),
            "{msg}"
        );
    }
}
