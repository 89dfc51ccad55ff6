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

use std::os::unix::ffi::OsStrExt;

use crate::apparmor::parser_conf;
use crate::host::host_file;
use crate::host::node_root;

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
        "the node's {conf} sets `{option}`{detail}, which changes what the node's own parser \
         compiles at boot; this tool does not apply that option, so it could not load what the node \
         would: nothing was changed. Remove the option from the node's parser.conf, or ask for \
         its support"
    )]
    Unsupported {
        conf: PathBuf,
        option: String,
        /// Where the option is when nobody reading the file would see it as one.
        detail: String,
    },
    #[error(
        "the node's {conf} sets `{option}` without a value, and the node's own parser stops \
         with a usage error there at boot (loading nothing): nothing was changed. Give the \
         option a value or remove it from the node's parser.conf"
    )]
    NoValue { conf: PathBuf, option: String },
    #[error(
        "the node's {conf} pins {pin}, and {path} in it is {what}, not a regular file or \
         directory: the parser would {consequence}. Nothing was changed; fix the node's pinned \
         feature set"
    )]
    PinNotRegular {
        conf: PathBuf,
        pin: String,
        path: PathBuf,
        what: &'static str,
        consequence: &'static str,
    },
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
        let shown = node_root.join(NODE_PARSER_CONF);
        let read = node_root::resolve(node_root, Path::new(NODE_PARSER_CONF))
            .and_then(|conf| host_file::read(&conf));
        let bytes = match read {
            Ok(bytes) => bytes,
            // No parser.conf: nothing pinned. A link to one that is not mounted here is not
            // "none": the node's parser reads it, so it is an error naming the path.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&shown).is_err() =>
            {
                Vec::new()
            }
            Err(source) => {
                return Err(FeaturesError::Read {
                    path: shown,
                    source,
                });
            }
        };
        let conf = ParserConf::read(&bytes).map_err(|e| e.with_conf(&shown))?;
        match conf.pin {
            Some((option, pin)) => {
                let pin_path = Path::new(std::ffi::OsStr::from_bytes(&pin));
                let pin = String::from_utf8_lossy(&pin).into_owned();
                let mounted = node_root::resolve(node_root, pin_path).unwrap_or_else(|_| {
                    node_root.join(pin_path.strip_prefix("/").unwrap_or(pin_path))
                });
                if !mounted.exists() {
                    return Err(FeaturesError::PinNotMounted {
                        conf: shown,
                        option,
                        pin,
                        mounted,
                    });
                }
                if let Some((path, what, consequence)) = not_regular(&mounted) {
                    return Err(FeaturesError::PinNotRegular {
                        conf: shown,
                        pin: format!("{option}={pin}"),
                        path,
                        what,
                        consequence,
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

    /// Whether this is a node's feature set (its kernel's or its pin), not the parser's default:
    /// only then does "this kernel does not enforce that rule" mean something.
    pub fn is_node_specific(&self) -> bool {
        !matches!(self, Features::ParserDefault)
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

/// What the node's `parser.conf` means for the policy its parser compiles, read exactly as the
/// parser reads it ([`parser_conf`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct ParserConf {
    /// The last `policy-features` or `features-file` setting (the last one wins, as with
    /// repeated command-line options), with its value as bytes.
    pin: Option<(&'static str, Vec<u8>)>,
}

/// Why a `parser.conf` is refused, before the path to name is known.
#[derive(Debug, PartialEq, Eq)]
enum ConfRefusal {
    Unsupported { option: String, detail: String },
    NoValue(String),
}

impl ConfRefusal {
    fn with_conf(self, conf: &Path) -> FeaturesError {
        let conf = conf.to_path_buf();
        match self {
            ConfRefusal::Unsupported { option, detail } => FeaturesError::Unsupported {
                conf,
                option,
                detail,
            },
            ConfRefusal::NoValue(option) => FeaturesError::NoValue { conf, option },
        }
    }
}

impl ParserConf {
    /// The pin, or the first option this tool does not apply and that may change what the
    /// node's parser compiles (`compile-features`, `kernel-features`, `override-policy-abi`,
    /// `Optimize`, `Include`, `Complain`, `base`, `Werror`, anything unknown): refused, never
    /// ignored. An option found in the middle of a long line (the parser reads 255-byte pieces)
    /// is named with where it starts, since nobody reading the file sees it as an option.
    fn read(bytes: &[u8]) -> Result<Self, ConfRefusal> {
        let mut conf = ParserConf::default();
        for option in parser_conf::options(bytes) {
            let name = option.name_lossy();
            let pin = match name.as_str() {
                "policy-features" => "policy-features",
                "features-file" => "features-file",
                n if NEUTRAL_OPTIONS.contains(&n) => continue,
                _ => {
                    let detail = if option.mid_line {
                        format!(
                            " (at byte {}, inside a line longer than the {} bytes the parser \
                             reads at a time, so it reads this as an option: shorten that line)",
                            option.offset,
                            parser_conf::PIECE_LEN
                        )
                    } else {
                        String::new()
                    };
                    return Err(ConfRefusal::Unsupported {
                        option: name,
                        detail,
                    });
                }
            };
            if option.value.is_empty() {
                return Err(ConfRefusal::NoValue(name));
            }
            conf.pin = Some((pin, option.value));
        }
        Ok(conf)
    }
}

/// The first entry of a pinned feature set (a file, or a tree as securityfs lays it out) that
/// is not a regular file or directory, with what it is and what the parser would do with it:
/// a FIFO would block every parser run (and the run lock) until the parser timeout.
fn not_regular(pin: &Path) -> Option<(PathBuf, &'static str, &'static str)> {
    use std::os::unix::fs::FileTypeExt;
    for entry in walkdir::WalkDir::new(pin).follow_links(false) {
        let entry = match entry {
            Ok(e) => e,
            Err(_) => return Some((pin.to_path_buf(), "unreadable", "fail to read it")),
        };
        let kind = entry.file_type();
        if kind.is_file() || kind.is_dir() {
            continue;
        }
        let consequence = if kind.is_fifo() {
            "block on it until --parser-timeout, on every run"
        } else if kind.is_symlink() {
            "follow it out of the feature set"
        } else {
            "read something that is not a feature set"
        };
        return Some((entry.into_path(), host_file::what_it_is(kind), consequence));
    }
    None
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
                    match host_file::read(e.path()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pin_of(conf: &[u8]) -> Result<Option<(&'static str, String)>, ConfRefusal> {
        ParserConf::read(conf).map(|c| {
            c.pin
                .map(|(o, v)| (o, String::from_utf8_lossy(&v).into_owned()))
        })
    }

    #[test]
    fn pins_are_read_like_the_parser_reads_them() {
        let debian = b"# comment\n## policy-features=/old\npolicy-features=/usr/share/apparmor-features/features\n";
        assert_eq!(
            pin_of(debian),
            Ok(Some((
                "policy-features",
                "/usr/share/apparmor-features/features".into()
            )))
        );
        assert_eq!(
            pin_of(b"features-file /f\n"),
            Ok(Some(("features-file", "/f".into())))
        );
        assert_eq!(pin_of(b"#policy-features=/x\nwrite-cache\n"), Ok(None));
        assert_eq!(pin_of(b""), Ok(None));
        // The parser stops with a usage error on an option that lacks its value.
        assert_eq!(
            pin_of(b"policy-features=\n"),
            Err(ConfRefusal::NoValue("policy-features".into()))
        );
        // A `#` inside a value is part of it, as the parser reads it.
        assert_eq!(
            pin_of(b"policy-features=/f # old\n").unwrap().unwrap().1,
            "/f # old"
        );
        // The last setting wins, as with repeated command-line options.
        assert_eq!(
            pin_of(b"policy-features=/a\npolicy-features=/b\n")
                .unwrap()
                .unwrap()
                .1,
            "/b"
        );
        // Latin-1 comments are comments: they never wedge a node.
        assert_eq!(pin_of(b"# Sch\xf6n\nwrite-cache\n"), Ok(None));
    }

    #[test]
    fn an_option_after_byte_255_of_a_comment_line_is_refused() {
        for option in ["Complain", "Include=/etc/x", "policy-features=/elsewhere"] {
            let mut conf = vec![b'#'];
            conf.extend([b' '; parser_conf::PIECE_LEN - 1]);
            conf.extend(option.as_bytes());
            conf.push(b'\n');
            match pin_of(&conf) {
                Err(ConfRefusal::Unsupported { option: o, detail }) => {
                    assert!(option.starts_with(&o), "{o}");
                    assert!(detail.contains("at byte 255"), "{detail}");
                }
                // A pin hidden there is a pin, as the parser reads it.
                Ok(Some((_, pin))) => assert_eq!(pin, "/elsewhere"),
                other => panic!("{option}: {other:?}"),
            }
        }
    }

    fn node(conf: Option<&str>, pinned_file: Option<&str>, kernel: bool) -> tempfile::TempDir {
        node_bytes(conf.map(str::as_bytes), pinned_file, kernel)
    }

    fn node_bytes(
        conf: Option<&[u8]>,
        pinned_file: Option<&str>,
        kernel: bool,
    ) -> tempfile::TempDir {
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

    #[test]
    fn a_fifo_in_the_pinned_feature_set_is_refused_at_once() {
        let d = node(Some("policy-features=/usr/share/f\n"), None, true);
        let host = d.path().join("host");
        std::fs::create_dir_all(host.join("usr/share/f/file")).unwrap();
        let fifo = host.join("usr/share/f/file/mask");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = Features::for_node(&host, &d.path().join("security"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a FIFO") && err.contains("file/mask"), "{err}");
    }

    #[test]
    fn a_linked_parser_conf_and_pin_resolve_inside_the_node_root() {
        // parser.conf is an absolute link: on the node it names the node's file, not ours.
        let d = node(None, Some("/usr/share/f"), true);
        let host = d.path().join("host");
        std::fs::create_dir_all(host.join("usr/share/apparmor")).unwrap();
        std::fs::write(
            host.join("usr/share/apparmor/parser.conf"),
            "policy-features=/pin\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/usr/share/apparmor/parser.conf",
            host.join(NODE_PARSER_CONF),
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/share/f", host.join("pin")).unwrap();
        let f = Features::for_node(&host, &d.path().join("security")).unwrap();
        assert!(
            matches!(&f, Features::Pinned { file, .. } if *file == host.join("usr/share/f")),
            "{f:?}"
        );
    }

    #[test]
    fn a_parser_conf_linked_to_a_file_not_mounted_here_is_an_error_not_an_unpinned_node() {
        let d = node(None, None, true);
        let host = d.path().join("host");
        std::os::unix::fs::symlink(
            "/usr/share/apparmor/parser.conf",
            host.join(NODE_PARSER_CONF),
        )
        .unwrap();
        let err = Features::for_node(&host, &d.path().join("security"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("etc/apparmor/parser.conf"), "{err}");
    }

    #[test]
    fn a_non_utf8_comment_does_not_wedge_the_node() {
        let d = node_bytes(Some(b"# \xe9t\xe9\nwrite-cache\n"), None, true);
        let f = Features::for_node(&d.path().join("host"), &d.path().join("security")).unwrap();
        assert!(matches!(f, Features::Kernel { .. }), "{f:?}");
    }
}
