//! Command-line interface. Every flag has an `APPARMOR_LOADER_…` environment twin so the
//! DaemonSet can configure containers with `env:`; `--help` is the reference.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::kernel::{DEFAULT_ENABLED_FILE, DEFAULT_SECURITYFS};
use crate::logging::LogFormat;
use crate::taint::{AUTOSCALER_GATE_TAINT, GATE_TAINT, Taint};

/// Loads AppArmor profiles from a ConfigMap onto a Kubernetes node before any workload can be
/// scheduled there.
///
/// New nodes carry the taint WaitingForAppArmorProfiles=true:NoSchedule. The DaemonSet's pod
/// runs `copy`, `load` and `untaint` as init containers and `pause` as its only container. Any
/// invalid or unproven profile stops the sequence with a non-zero exit code, so the taint stays
/// and the kubelet retries. Exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid profiles
/// (nothing changed), 4 AppArmor unavailable on this node, 5 profiles not provably loaded,
/// 6 Kubernetes API error.
///
/// The executable is also a multicall binary: a link named `copy`, `load`, `untaint`, `pause`
/// or `validate` runs that step.
#[derive(Debug, Parser)]
#[command(name = "apparmor-loader", version, verbatim_doc_comment)]
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
    /// Compile, load and verify the profiles `copy` wrote, then unload the ones a previous run
    /// loaded that left the ConfigMap.
    ///
    /// Every profile is compiled before the kernel is touched; all are loaded in one
    /// `apparmor_parser --replace` call with a compile cache; the kernel's own profile list must
    /// then show every profile in the mode its flags ask for.
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
    #[arg(long, env = "APPARMOR_LOADER_MAX_SIZE", default_value_t = crate::profile_files::DEFAULT_MAX_SIZE)]
    pub max_size: u64,

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

    /// Where securityfs is mounted.
    #[arg(long, env = "APPARMOR_LOADER_SECURITYFS", default_value = DEFAULT_SECURITYFS)]
    pub securityfs: PathBuf,

    /// The file that says whether AppArmor is enabled (`Y`).
    #[arg(long, env = "APPARMOR_LOADER_ENABLED_FILE", default_value = DEFAULT_ENABLED_FILE)]
    pub enabled_file: PathBuf,

    /// Also replace loaded profiles that belong to someone else: names another file of the
    /// profile directory defines, or a container runtime's default profile. Off by default:
    /// replacing them reconfines every process that uses them.
    #[arg(long, env = "APPARMOR_LOADER_ADOPT_LOADED")]
    pub adopt_loaded: bool,

    #[command(flatten)]
    pub parser: ParserArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UntaintArgs {
    /// Taint to remove, as KEY[=VALUE]:EFFECT (without a value any value matches). Repeat the
    /// flag or separate with commas; each one present is removed.
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

    /// Give up (exit 6, the kubelet restarts the container) after this long: e.g. 90s, 5m, 1h.
    #[arg(long, env = "APPARMOR_LOADER_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Profile files, or directories read like a ConfigMap volume (top level only).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Largest accepted profile file, in bytes.
    #[arg(long, env = "APPARMOR_LOADER_MAX_SIZE", default_value_t = crate::profile_files::DEFAULT_MAX_SIZE)]
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

/// Parses `500ms`, `90s`, `5m`, `1h`, or a bare number of seconds.
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
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s).unwrap(), d, "{s}");
        }
        for bad in ["", "m", "5x", "-5s", "0s", "1.5m", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(
            parse_duration("18446744073709551615h")
                .unwrap_err()
                .contains("too large")
        );
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
        fn seconds_round_trip(n in 1u64..1_000_000) {
            prop_assert_eq!(parse_duration(&format!("{n}s")).unwrap(), Duration::from_secs(n));
        }
    }
}
