//! Command-line interface. Every flag has an `APPARMOR_LOADER_…` environment twin so the
//! DaemonSet can configure containers with `env:`; `--help` is the reference.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::apparmor::kernel::{DEFAULT_ENABLED_FILE, DEFAULT_SECURITYFS};
use crate::kube::taint::{AUTOSCALER_GATE_TAINT, GATE_TAINT, Taint};
use crate::logging::LogFormat;

/// Loads AppArmor profiles from a ConfigMap onto a Kubernetes node before any workload can be
/// scheduled there.
///
/// New nodes carry the taint WaitingForAppArmorProfiles=true:NoSchedule. The DaemonSet's pod
/// runs `copy`, `load` and `untaint` as init containers and `pause` as its only container. Any
/// invalid or unproven profile stops the sequence with a non-zero exit code, so the taint stays
/// and the kubelet retries; the exit code (listed below) says which kind of failure it was.
///
/// The executable is also a multicall binary: a link named `copy`, `load`, `untaint`, `pause`
/// or `validate` runs that step.
#[derive(Debug, Parser)]
#[command(
    name = "apparmor-loader",
    version,
    verbatim_doc_comment,
    after_help = crate::exit_code::help()
)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "APPARMOR_LOADER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info`, `debug` or `apparmor_profile_loader=debug,kube=info`.
    #[arg(
        long,
        env = "APPARMOR_LOADER_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: String,

    /// This node's name (downward API `spec.nodeName`). Required by `untaint`; every log line
    /// carries it.
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the ConfigMap's profiles and write them atomically into the host profile
    /// directory; remove the files this tool wrote earlier that left the ConfigMap.
    ///
    /// Nothing is written unless every key is a valid file name and every profile compiles.
    /// Files the tool did not write are never replaced or removed; a key that clashes with one
    /// is refused. Keys ending in .yaml or .yml are skipped with a warning.
    Copy(CopyArgs),
    /// Compile, load and verify the profiles `copy` wrote; never unload anything, because the
    /// kernel unconfines every process of an unloaded profile.
    ///
    /// Every profile is compiled before the kernel is touched; all are loaded in one
    /// `apparmor_parser --replace` call with a compile cache; the kernel's own profile list must
    /// then show every profile in the mode its flags ask for. A profile that left the ConfigMap
    /// is retired: kept loaded, as last loaded, until the node reboots (its file is gone), and
    /// ours, hats and children included, while the kernel holds that very policy in this boot.
    /// A hat or child profile its parent no longer defines is neutralised: replaced by an empty
    /// deny-everything profile of exactly the same name, proven by the kernel's policy hash, so
    /// nobody can enter it with its old rules and the processes inside stay confined.
    Load(LoadArgs),
    /// Remove the gate taint(s) from this node (NODE_NAME) through the Kubernetes API.
    ///
    /// Uses a JSON Patch that tests each taint before removing it, so concurrent changes to
    /// the node's other taints are never lost; conflicts are re-read, transient errors retried
    /// with backoff until --timeout.
    Untaint(UntaintArgs),
    /// Sleep until SIGTERM or SIGINT, then exit 0. Needs no privilege.
    Pause,
    /// Check profile files or directories the way `copy` and `load` would, without a kernel
    /// or a cluster. Run it in CI before `kubectl create configmap`.
    Validate(ValidateArgs),
}

/// How to run `apparmor_parser`.
#[derive(Debug, Clone, Args)]
pub struct ParserArgs {
    /// The apparmor_parser executable: a path, or a name looked up on PATH, then in /usr/sbin
    /// and /sbin.
    #[arg(
        long,
        env = "APPARMOR_LOADER_PARSER",
        default_value = "apparmor_parser"
    )]
    pub parser: String,

    /// Base directory for `#include <…>` (abstractions/, tunables/, abi/). In the image this is
    /// the image's own tree, shipped with the same parser version.
    #[arg(long, env = "APPARMOR_LOADER_BASE", default_value = "/etc/apparmor.d")]
    pub base: PathBuf,

    /// Extra include search directory; repeat the flag or separate with commas.
    #[arg(long, env = "APPARMOR_LOADER_INCLUDE", value_delimiter = ',')]
    pub include: Vec<PathBuf>,

    /// Parallel compile jobs [default: the number of CPUs].
    #[arg(long, env = "APPARMOR_LOADER_JOBS")]
    pub jobs: Option<usize>,

    /// Kill a parser run that takes longer than this (e.g. 90s, 5m) and fail with exit 3
    /// naming the files it was compiling. A small profile with many nested `**` globs can
    /// keep the parser busy for hours; progress is logged every 30 s meanwhile.
    #[arg(long, env = "APPARMOR_LOADER_PARSER_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub parser_timeout: Duration,
}

/// The node as `copy` and `load` see it: its kernel interface and its own AppArmor
/// configuration, both mounted read-only.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Where securityfs is mounted (the kernel's profile list and feature set).
    #[arg(long, env = "APPARMOR_LOADER_SECURITYFS", default_value = DEFAULT_SECURITYFS)]
    pub securityfs: PathBuf,

    /// The file that says whether AppArmor is enabled (`Y`).
    #[arg(long, env = "APPARMOR_LOADER_ENABLED_FILE", default_value = DEFAULT_ENABLED_FILE)]
    pub enabled_file: PathBuf,

    /// Where the node's root is mounted, read-only and in part: policy is compiled for the
    /// feature set the node's own boot uses, the one its <ROOT>/etc/apparmor/parser.conf pins
    /// (policy-features=…, read from under <ROOT>), else the running kernel's.
    #[arg(long, env = "APPARMOR_LOADER_NODE_ROOT", default_value = "/host")]
    pub node_root: PathBuf,
}

/// The profile directory shared by `copy` (writes) and `load` (reads).
#[derive(Debug, Clone, Args)]
pub struct ProfileDirArgs {
    /// Host profile directory, mounted into the container (`copy` writes it, `load` only reads
    /// it). The default is the host's /etc/apparmor.d, whose top-level files the host loads
    /// itself at every boot.
    #[arg(
        long,
        env = "APPARMOR_LOADER_DEST",
        default_value = "/host/etc/apparmor.d"
    )]
    pub dest: PathBuf,

    /// How long to wait for another run holding the profile directory (a maxSurge rollout, a
    /// second install, a manual run) before giving up with exit 1: e.g. 30s, 2m; at most 24h.
    #[arg(long, env = "APPARMOR_LOADER_LOCK_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub lock_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// The ConfigMap volume (keys are symlinks through `..data`, read as one generation).
    #[arg(
        long,
        env = "APPARMOR_LOADER_SOURCE",
        default_value = "/etc/apparmor-profiles-src"
    )]
    pub source: PathBuf,

    #[command(flatten)]
    pub profile_dir: ProfileDirArgs,

    /// Largest accepted profile file, in bytes.
    #[arg(long, env = "APPARMOR_LOADER_MAX_SIZE", default_value_t = crate::profile::source::DEFAULT_MAX_SIZE)]
    pub max_size: u64,

    /// The compile cache directory `load` uses (its --cache-dir). With it, copy's validating
    /// compile is the node's only one: load then finds every profile in the cache. Without
    /// it, copy only validates and load compiles again.
    #[arg(long, env = "APPARMOR_LOADER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Private scratch directory: the ConfigMap is compiled from a snapshot written here.
    #[arg(long, env = "APPARMOR_LOADER_SCRATCH_DIR", default_value = "/tmp")]
    pub scratch_dir: PathBuf,

    /// Claim profile names the kernel already has from someone else (a distribution
    /// profile, one loaded by hand). Off by default: the node's next boot, and load, would
    /// replace them, reconfining every process that uses them.
    #[arg(long, env = "APPARMOR_LOADER_ADOPT_LOADED")]
    pub adopt_loaded: bool,

    /// Which AppArmor userspace the node's own boot loads our files with. `auto` reads
    /// <NODE_ROOT>/etc/os-release (else <NODE_ROOT>/usr/lib/os-release; links followed inside
    /// <NODE_ROOT>) and fails (exit 1) when neither can be read, rather than guess; `3` or `4`
    /// declares it, for nodes whose os-release is not mounted.
    #[arg(
        long,
        env = "APPARMOR_LOADER_NODE_APPARMOR",
        value_enum,
        default_value = "auto"
    )]
    pub node_apparmor: NodeAppArmor,

    /// The AppArmor 3 parser for reboot parity: on a node whose <NODE_ROOT>/etc/os-release
    /// names a release that ships AppArmor 3 (Ubuntu 22.04, Debian 12), every new or changed
    /// file must also compile with it, or the node's own boot would fail to load it.
    #[arg(
        long,
        env = "APPARMOR_LOADER_V3_PARSER",
        default_value = "/usr/lib/apparmor-profile-loader/apparmor_parser-3"
    )]
    pub v3_parser: PathBuf,

    /// Include tree of the AppArmor 3 parser (abi/, abstractions/, tunables/).
    #[arg(
        long,
        env = "APPARMOR_LOADER_V3_BASE",
        default_value = "/usr/lib/apparmor-profile-loader/apparmor.d-3"
    )]
    pub v3_base: PathBuf,

    #[command(flatten)]
    pub node: NodeArgs,

    #[command(flatten)]
    pub parser: ParserArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub profile_dir: ProfileDirArgs,

    /// Writable host directory for the compile cache and the record of loaded profiles (a
    /// dedicated one, not the distribution's cache).
    #[arg(
        long,
        env = "APPARMOR_LOADER_CACHE_DIR",
        default_value = "/host/var/cache/apparmor-profile-loader"
    )]
    pub cache_dir: PathBuf,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Also replace loaded profiles that our records (what copy claimed, what load loaded)
    /// do not list: someone else's. Off by default: replacing them reconfines every process
    /// that uses them.
    #[arg(long, env = "APPARMOR_LOADER_ADOPT_LOADED")]
    pub adopt_loaded: bool,

    /// After a verified load, write what was loaded (each profile with its file's SHA-256, the
    /// retired ones) to this pod-local file, for `untaint` to label the node. Unset: no report.
    #[arg(long, env = "APPARMOR_LOADER_NODE_REPORT")]
    pub node_report: Option<PathBuf>,

    #[command(flatten)]
    pub parser: ParserArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UntaintArgs {
    /// Gate taint to remove, as KEY[=VALUE]:EFFECT. Repeat the flag or separate with commas.
    /// Every taint with one of these keys is removed: one with another value or effect (a near
    /// miss) gates the node just the same, so it goes too, with a warning naming it.
    #[arg(
        long = "taint",
        env = "APPARMOR_LOADER_TAINTS",
        value_delimiter = ',',
        default_values_t = default_taints(),
        value_parser = parse_taint,
    )]
    pub taints: Vec<Taint>,

    /// Kubeconfig to use instead of the in-cluster service account (for tests and debugging).
    #[arg(long, env = "APPARMOR_LOADER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Give up (exit 6, the kubelet restarts the container) after this long: e.g. 90s, 5m, 1h;
    /// at most 24h.
    #[arg(long, env = "APPARMOR_LOADER_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// What `load` reported it loaded (its --node-report, a pod-local file). When set, the node
    /// gets one label `<PREFIX>/<profile>` per loaded profile (a 12-character digest of its
    /// file) and the annotation `<PREFIX>/profiles` (every profile's full digest, the retired
    /// ones, the loader's version), in the same patch that removes the taint; labels of
    /// profiles that left are removed. A missing or unreadable report is exit 1, taint kept.
    #[arg(long, env = "APPARMOR_LOADER_NODE_REPORT")]
    pub node_report: Option<PathBuf>,

    /// Prefix (a DNS subdomain) of the node labels and annotation. The admission policy allows
    /// the loader to change labels and the annotation under this prefix only: change both
    /// together. Domains Kubernetes and AKS reserve (kubernetes.io, k8s.io,
    /// kubernetes.azure.com and their subdomains) are refused. A label under the prefix is
    /// removed only when the node's annotation says an earlier untaint wrote it.
    #[arg(
        long,
        env = "APPARMOR_LOADER_LABEL_PREFIX",
        default_value = crate::profile::node_labels::DEFAULT_PREFIX,
    )]
    pub label_prefix: crate::profile::node_labels::LabelPrefix,

    /// Also set the node condition AppArmorProfilesLoaded=True (reason ProfilesLoaded, the
    /// loaded set's digest in its message) through nodes/status, before the taint goes: the
    /// signal a node-readiness-controller NodeReadinessRule waits for. Needs --node-report,
    /// patch on nodes/status (the component manifests/node-condition) and the admission policy,
    /// which lets the loader change only this condition of its own node.
    #[arg(
        long,
        env = "APPARMOR_LOADER_NODE_CONDITION",
        requires = "node_report",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
    )]
    pub node_condition: bool,

    /// Before the first write to the node, prove that the admission policy confines this
    /// loader: send a dry-run patch that adds a label outside any prefix it may use, which the
    /// policy must refuse. If the API server would accept it (no policy, no binding, or a
    /// ServiceAccount renamed so that the policy does not judge it), nothing is written, the
    /// taint stays and untaint exits 6 saying so. Set by
    /// manifests/daemonset.yaml (and by the chart while admissionPolicy.enabled); one extra
    /// request, none when there is nothing to write.
    #[arg(
        long,
        env = "APPARMOR_LOADER_REQUIRE_ADMISSION_POLICY",
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
    )]
    pub require_admission_policy: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Profile files, or directories read like a ConfigMap volume (top level only).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Largest accepted profile file, in bytes.
    #[arg(long, env = "APPARMOR_LOADER_MAX_SIZE", default_value_t = crate::profile::source::DEFAULT_MAX_SIZE)]
    pub max_size: u64,

    #[command(flatten)]
    pub parser: ParserArgs,
}

fn default_taints() -> Vec<Taint> {
    [GATE_TAINT, AUTOSCALER_GATE_TAINT]
        .iter()
        .map(|t| t.parse().expect("built-in taints are valid"))
        .collect()
}

fn parse_taint(s: &str) -> Result<Taint, String> {
    s.parse()
}

/// Longest duration any flag accepts. Every timeout here bounds a step a node waits on; a day is
/// already far past any sane value, and a bound keeps `Instant + duration` from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses `500ms`, `90s`, `5m`, `1h`, or a bare number of seconds, greater than zero and at
/// most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 5m, 1h"))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    };
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => secs(1)?,
        "m" => secs(60)?,
        "h" => secs(3600)?,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be greater than zero"));
    }
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is too large: at most 24h"));
    }
    Ok(d)
}

/// The subcommands a link name may select (busybox style).
const APPLETS: &[&str] = &["copy", "load", "untaint", "pause", "validate"];

/// Rewrites `copy --flag` invoked through a link named `copy` into
/// `apparmor-loader copy --flag`, so clap sees one grammar.
pub fn args_with_applet(mut args: Vec<OsString>) -> Vec<OsString> {
    let applet = args
        .first()
        .and_then(|a0| Path::new(a0).file_name())
        .and_then(|n| n.to_str())
        .filter(|n| APPLETS.contains(n))
        .map(OsString::from);
    if let Some(applet) = applet {
        args[0] = "apparmor-loader".into();
        args.insert(1, applet);
    }
    args
}

/// What `--node-apparmor` declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeAppArmor {
    /// Read the node's os-release (mounted under the node root) and look the release up.
    Auto,
    /// The node boots with AppArmor 3 userspace: files must also compile with a 3.x parser.
    #[value(name = "3")]
    V3,
    /// The node boots with AppArmor 4 userspace: the image's parser decides.
    #[value(name = "4")]
    V4,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use proptest::prelude::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("90", Duration::from_secs(90)),
            ("90s", Duration::from_secs(90)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("24h", MAX_DURATION),
            ("1440m", MAX_DURATION),
            ("86400", MAX_DURATION),
            ("86400000ms", MAX_DURATION),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s).unwrap(), d, "{s}");
        }
        for bad in ["", "m", "5x", "-5s", "0s", "1.5m", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for huge in [
            "18446744073709551615h",
            "3000000000000000h",
            "3000000000000000000s",
            "25h",
            "86401s",
            "86400001ms",
            "1441m",
        ] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too large"),
                "{huge}"
            );
        }
    }

    #[test]
    fn applet_links_select_the_subcommand() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            args_with_applet(os(&["/usr/local/bin/copy", "--dest", "/x"])),
            os(&["apparmor-loader", "copy", "--dest", "/x"])
        );
        assert_eq!(
            args_with_applet(os(&["apparmor-loader", "load"])),
            os(&["apparmor-loader", "load"])
        );
        assert_eq!(
            args_with_applet(os(&["pause"])),
            os(&["apparmor-loader", "pause"])
        );
    }

    #[test]
    fn untaint_defaults_to_both_gate_taints_and_splits_flag_and_env_lists() {
        // The env twin, as the DaemonSet sets it. clap reads the environment while parsing, and
        // changing this process's environment would race the other tests, so a child process
        // (this test binary, running only this test) parses with the variable set.
        const CHILD: &str = "APPARMOR_LOADER_TEST_ENV_LIST_CHILD";
        let env_list = "a=b:NoSchedule,c:NoExecute";
        let parse_untaint = |argv: &[&str]| match Cli::try_parse_from(argv).unwrap().command {
            Command::Untaint(args) => args,
            _ => panic!("not untaint"),
        };
        let shown = |args: &UntaintArgs| -> Vec<String> {
            args.taints.iter().map(ToString::to_string).collect()
        };
        if std::env::var_os(CHILD).is_some() {
            let args = parse_untaint(&["apparmor-loader", "untaint"]);
            assert_eq!(shown(&args), ["a=b:NoSchedule", "c:NoExecute"]);
            return;
        }

        let args = parse_untaint(&["apparmor-loader", "untaint"]);
        assert_eq!(shown(&args), [GATE_TAINT, AUTOSCALER_GATE_TAINT]);
        assert_eq!(args.timeout, Duration::from_secs(300));

        let args = parse_untaint(&["apparmor-loader", "untaint", "--taint", env_list]);
        assert_eq!(shown(&args), ["a=b:NoSchedule", "c:NoExecute"]);

        let err =
            Cli::try_parse_from(["apparmor-loader", "untaint", "--taint", "nope"]).unwrap_err();
        assert!(err.to_string().contains("KEY[=VALUE]:EFFECT"), "{err}");

        let name = "cli::tests::untaint_defaults_to_both_gate_taints_and_splits_flag_and_env_lists";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env(CHILD, "1")
            .env("APPARMOR_LOADER_TAINTS", env_list)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "APPARMOR_LOADER_TAINTS={env_list} in a child process:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn seconds_round_trip(n in 1u64..=86_400) {
            prop_assert_eq!(parse_duration(&format!("{n}s")).unwrap(), Duration::from_secs(n));
        }

        #[test]
        fn accepted_durations_are_bounded(n in any::<u64>(), unit in prop::sample::select(&["", "ms", "s", "m", "h"][..])) {
            if let Ok(d) = parse_duration(&format!("{n}{unit}")) {
                prop_assert!(d > Duration::ZERO && d <= MAX_DURATION);
                // The bound is what keeps a deadline computed from it from overflowing.
                prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            }
        }
    }
}
