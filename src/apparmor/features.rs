//! Which AppArmor feature set policy is compiled for: the one the node's own boot uses.
//!
//! Our files sit in the node's top-level `/etc/apparmor.d`, so after a reboot the node's
//! `apparmor.service` compiles and loads them itself. What we load must be what it would load.
//! The node's parser compiles for the feature file its `/etc/apparmor/parser.conf` pins
//! (`policy-features=…`, as Debian does), or, without a pin, for the running kernel (securityfs
//! `apparmor/features`) with the parser's built-in default policy features for profiles without
//! an `abi` rule (as Ubuntu does). We do the same, reading the node's
//! `parser.conf` and the pinned file through read-only host mounts; the image's own
//! `parser.conf` never decides it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::host_file::{self, Links};

/// Where the node's parser configuration lives, relative to the node's root.
const NODE_PARSER_CONF: &str = "etc/apparmor/parser.conf";

/// The feature set one parser run compiles for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Features {
    /// The parser's own default: for validation away from a node (`validate`, tests).
    ParserDefault,
    /// The running kernel's features: a node without a pin.
    Kernel { dir: PathBuf },
    /// The node's `parser.conf` pins a policy feature file (`policy-features=`), or a feature
    /// file for both compiling and loading (`features-file=`).
    Pinned {
        file: PathBuf,
        /// Kernel features for loading: the running kernel's, or the pinned file itself when
        /// the node pins `features-file`.
        kernel: Option<PathBuf>,
        /// The pin as the node's `parser.conf` spells it (a host path), for messages.
        pin: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error(
        "the node's {conf} pins {option}={pin}, but {mounted} does not exist in this container: \
         mount the node's {pin} read-only at {mounted} (see manifests/daemonset.yaml)"
    )]
    PinNotMounted {
        conf: PathBuf,
        option: &'static str,
        pin: String,
        mounted: PathBuf,
    },
    #[error(
        "the node's {conf} sets `{option}`, which changes what the node's own parser compiles \
         at boot; this tool does not apply that option, so it could not load what the node \
         would: nothing was changed. Remove the option from the node's parser.conf, or ask for \
         its support"
    )]
    Unsupported { conf: PathBuf, option: String },
    #[error("cannot read the node's parser configuration {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::exit_code::ExitStatus for FeaturesError {
    fn exit_code(&self) -> u8 {
        crate::exit_code::INTERNAL
    }
}

impl Features {
    /// The feature set the node's own boot compiles for: its `parser.conf` pin, else the
    /// running kernel's features, else (no AppArmor here) the parser's default.
    pub fn for_node(node_root: &Path, securityfs: &Path) -> Result<Self, FeaturesError> {
        let kernel_dir = securityfs.join("apparmor").join("features");
        let kernel = kernel_dir.exists().then_some(kernel_dir);
        let conf = node_root.join(NODE_PARSER_CONF);
        let text = match host_file::read_to_string(&conf, Links::Follow) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(FeaturesError::Read { path: conf, source }),
        };
        if let Some(option) = unsupported(&text) {
            return Err(FeaturesError::Unsupported { conf, option });
        }
        match pinned(&text) {
            Some((option, pin)) => {
                let mounted = node_root.join(pin.trim_start_matches('/'));
                if !mounted.exists() {
                    return Err(FeaturesError::PinNotMounted {
                        conf,
                        option,
                        pin,
                        mounted,
                    });
                }
                let kernel = if option == "features-file" {
                    Some(mounted.clone())
                } else {
                    kernel
                };
                Ok(Features::Pinned {
                    file: mounted,
                    kernel,
                    pin,
                })
            }
            None => Ok(kernel.map_or(Features::ParserDefault, |dir| Features::Kernel { dir })),
        }
    }

    /// Adds the parser options that select this feature set.
    pub fn add_args(&self, cmd: &mut Command) {
        match self {
            Features::ParserDefault => {}
            // No pin: the node's parser compiles a profile without an abi rule for its built-in
            // default policy features, not for the kernel's; only the kernel's features are
            // named (so copy, which may not see the default securityfs path, agrees with load).
            Features::Kernel { dir } => {
                cmd.arg("--kernel-features").arg(dir);
            }
            Features::Pinned { file, kernel, .. } => {
                cmd.arg("--policy-features").arg(file);
                if let Some(k) = kernel {
                    cmd.arg("--kernel-features").arg(k);
                }
            }
        }
    }

    /// What the parser's cache does not key on but the compiled policy depends on: the pinned
    /// policy features (the parser keys its cache on the kernel's features only).
    pub fn cache_key(&self) -> Vec<u8> {
        match self {
            Features::ParserDefault => b"default".to_vec(),
            Features::Kernel { .. } => b"kernel".to_vec(),
            Features::Pinned { file, .. } => {
                let mut key = b"pinned:".to_vec();
                key.extend(file.as_os_str().as_encoded_bytes());
                key.push(0);
                fingerprint_tree(file, &mut key);
                key
            }
        }
    }

    /// One line for the logs: what the policy is compiled for, and why.
    pub fn explain(&self) -> String {
        match self {
            Features::ParserDefault => {
                "the parser's default feature set (no node configuration or kernel features \
                 found)"
                    .into()
            }
            Features::Kernel { dir } => format!(
                "the running kernel's features ({}) and the parser's default policy features, \
                 as the node's own boot does: its parser.conf pins none",
                dir.display()
            ),
            Features::Pinned { pin, .. } => format!(
                "the feature set the node's parser.conf pins ({pin}), as the node's own boot does"
            ),
        }
    }
}

/// Options of a `parser.conf` that do not change the policy the node's parser compiles (cache
/// handling, output, parallelism), besides the pins [`pinned`] reads.
const NEUTRAL_OPTIONS: &[&str] = &[
    "write-cache",
    "skip-read-cache",
    "skip-cache",
    "skip-bad-cache",
    "cache-loc",
    "purge-cache",
    "quiet",
    "verbose",
    "jobs",
    "max-jobs",
    "estimated-compile-size",
    "abort-on-error",
    "warn",
    "debug-cache",
];

/// The first option of a `parser.conf` this tool does not apply and that may change what the
/// node's parser compiles (`compile-features`, `kernel-features`, `override-policy-abi`,
/// `Optimize`, `Include`, `base`, `Werror`, anything unknown): refused, never ignored.
fn unsupported(conf: &str) -> Option<String> {
    conf.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let option = line.split(['=', ' ', '\t']).next()?.trim();
            (!option.is_empty()).then_some(option)
        })
        .find(|o| !NEUTRAL_OPTIONS.contains(o) && *o != "policy-features" && *o != "features-file")
        .map(String::from)
}

/// Adds what a pinned feature set is made of to `key`: a file's bytes, or for a directory (a
/// feature tree, as securityfs lays it out) every entry's relative path and every file's bytes,
/// in a stable order. Links are not followed; what cannot be read adds its error instead, so it
/// never hashes as silently empty.
fn fingerprint_tree(root: &Path, key: &mut Vec<u8>) {
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        match entry {
            Ok(e) => {
                let rel = e.path().strip_prefix(root).unwrap_or(e.path());
                key.extend(rel.as_os_str().as_encoded_bytes());
                key.push(0);
                if e.file_type().is_file() {
                    match host_file::read(e.path(), Links::Refuse) {
                        Ok(bytes) => {
                            key.extend((bytes.len() as u64).to_le_bytes());
                            key.extend(bytes);
                        }
                        Err(err) => key.extend(format!("unreadable: {err}").into_bytes()),
                    }
                }
            }
            Err(err) => key.extend(format!("unreadable: {err}").into_bytes()),
        }
    }
}

/// The last `policy-features` or `features-file` setting of a `parser.conf` (the parser
/// reads the file as long options without dashes: `option=value` or `option value`).
fn pinned(conf: &str) -> Option<(&'static str, String)> {
    let mut found = None;
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let (option, value) = match line.split_once(['=', ' ', '\t']) {
            Some((o, v)) => (o.trim(), v.trim()),
            None => continue,
        };
        let option = match option {
            "policy-features" => "policy-features",
            "features-file" => "features-file",
            _ => continue,
        };
        if !value.is_empty() {
            found = Some((option, value.to_string()));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_like_the_parser_reads_them() {
        let debian = "# comment\n## policy-features=/old\npolicy-features=/usr/share/apparmor-features/features\n";
        assert_eq!(
            pinned(debian),
            Some((
                "policy-features",
                "/usr/share/apparmor-features/features".into()
            ))
        );
        assert_eq!(
            pinned("features-file /f\n"),
            Some(("features-file", "/f".into()))
        );
        assert_eq!(pinned("#policy-features=/x\nwrite-cache\n"), None);
        assert_eq!(pinned(""), None);
        assert_eq!(pinned("policy-features=\n"), None);
        // The last setting wins, as with repeated command-line options.
        assert_eq!(
            pinned("policy-features=/a\npolicy-features=/b\n")
                .unwrap()
                .1,
            "/b"
        );
    }

    fn node(conf: Option<&str>, pinned_file: Option<&str>, kernel: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("host");
        std::fs::create_dir_all(root.join("etc/apparmor")).unwrap();
        if let Some(c) = conf {
            std::fs::write(root.join(NODE_PARSER_CONF), c).unwrap();
        }
        if let Some(f) = pinned_file {
            let p = root.join(f.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "policy {}\n").unwrap();
        }
        if kernel {
            std::fs::create_dir_all(dir.path().join("security/apparmor/features")).unwrap();
        }
        dir
    }

    #[test]
    fn a_pinned_node_compiles_for_its_pin_an_unpinned_one_for_its_kernel() {
        let d = node(
            Some("policy-features=/usr/share/f\n"),
            Some("/usr/share/f"),
            true,
        );
        let f = Features::for_node(&d.path().join("host"), &d.path().join("security")).unwrap();
        assert_eq!(
            f,
            Features::Pinned {
                file: d.path().join("host/usr/share/f"),
                kernel: Some(d.path().join("security/apparmor/features")),
                pin: "/usr/share/f".into(),
            }
        );

        let d = node(Some("# nothing pinned\n"), None, true);
        let f = Features::for_node(&d.path().join("host"), &d.path().join("security")).unwrap();
        assert_eq!(
            f,
            Features::Kernel {
                dir: d.path().join("security/apparmor/features")
            }
        );
        let mut cmd = Command::new("x");
        f.add_args(&mut cmd);
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // Unpinned: the parser's default policy features, as the node's own parser uses.
        assert!(!args.iter().any(|a| a == "--policy-features"), "{args:?}");
        assert!(args.iter().any(|a| a == "--kernel-features"), "{args:?}");

        let d = node(None, None, false);
        let f = Features::for_node(&d.path().join("host"), &d.path().join("security")).unwrap();
        assert_eq!(f, Features::ParserDefault);
    }

    #[test]
    fn options_that_change_the_compile_are_refused_not_ignored() {
        for conf in [
            "compile-features=/x\n",
            "kernel-features /x\n",
            "override-policy-abi=/x\n",
            "Optimize=no-expr-simplify\n",
            "Include=/etc/other\n",
            "something-new\n",
        ] {
            let d = node(Some(conf), None, true);
            let err = Features::for_node(&d.path().join("host"), &d.path().join("security"))
                .unwrap_err()
                .to_string();
            let option = conf.split(['=', ' ', '\n']).next().unwrap();
            assert!(err.contains(&format!("`{option}`")), "{conf:?}: {err}");
        }
        // Debian's and Ubuntu's own files: comments, the pin, cache options.
        let d = node(
            Some(
                "## Turn creating/updating of the cache on by default\n#write-cache\nwrite-cache\n# Optimize=no-expr-simplify\npolicy-features=/usr/share/f\n",
            ),
            Some("/usr/share/f"),
            true,
        );
        assert!(Features::for_node(&d.path().join("host"), &d.path().join("security")).is_ok());
    }

    #[test]
    fn a_pinned_directory_is_fingerprinted_by_its_content() {
        let d = tempfile::tempdir().unwrap();
        let tree = d.path().join("features");
        std::fs::create_dir_all(tree.join("file")).unwrap();
        std::fs::write(tree.join("file/mask"), "create read write\n").unwrap();
        let pinned = |file: &Path| Features::Pinned {
            file: file.to_path_buf(),
            kernel: None,
            pin: "/f".into(),
        };
        let before = pinned(&tree).cache_key();
        std::fs::write(tree.join("file/mask"), "create read write exec\n").unwrap();
        let changed = pinned(&tree).cache_key();
        assert_ne!(before, changed, "a changed file in the pinned directory");
        std::fs::create_dir_all(tree.join("network")).unwrap();
        assert_ne!(changed, pinned(&tree).cache_key(), "a new entry");
        // A pinned file still hashes by its bytes.
        std::fs::write(d.path().join("one"), "a").unwrap();
        let a = pinned(&d.path().join("one")).cache_key();
        std::fs::write(d.path().join("one"), "b").unwrap();
        assert_ne!(a, pinned(&d.path().join("one")).cache_key());
    }

    #[test]
    fn a_pin_that_is_not_mounted_is_an_error_naming_both_paths() {
        let d = node(Some("policy-features=/usr/share/f\n"), None, true);
        let err = Features::for_node(&d.path().join("host"), &d.path().join("security"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pins policy-features=/usr/share/f"), "{err}");
        assert!(err.contains("host/usr/share/f does not exist"), "{err}");
    }
}
