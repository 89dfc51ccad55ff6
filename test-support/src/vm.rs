//! QEMU harness for the real-kernel end-to-end tests (`tests/kernel_e2e.rs`).
//!
//! A boot: lay out a payload directory (profiles, expectations), pack it with our static executable,
//! `apparmor_parser`, its libraries, the AppArmor include tree and busybox into an initramfs
//! (`tests/vm/build-initramfs.sh`), boot the Debian cloud kernel cached by `tests/vm/prepare.sh` under
//! `qemu-system-x86_64`, bounded by `timeout`, and parse the `AAPL-*` lines that `tests/vm/guest/init` prints
//! on the serial console.

use crate::{prereq, qemu, release_build};
/// The shared rule for a missing prerequisite (fail under CI, skip loudly elsewhere), for checks
/// of kernel_e2e's own (e.g. a host-side test that needs only `apparmor_parser`).
#[allow(unused_imports)]
pub use prereq::{require, skip_or_fail, strict};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use qemu::{Arch, Qemu, which};
use std::time::{Duration, Instant};

/// How to get what the harness needs, printed when something is missing.
pub const INSTALL_HINT: &str = "\
to run the real-kernel tests:
  sudo apt-get update
  sudo apt-get install -y apparmor qemu-system-x86 busybox-static cpio
  sudo tests/vm/prepare.sh        # fetches the Debian cloud kernel into /var/cache/aapl-ci/kernel/
  cargo test --test kernel_e2e -- --nocapture
(AAPL_VM_KERNEL=<vmlinuz> overrides the kernel, AAPL_VM_ACCEL=kvm|tcg the accelerator,
 AAPL_VM_TIMEOUT=<seconds> the boot timeout, AAPL_VM_VERBOSE=1 echoes the serial console)";

/// Everything a boot needs on the host.
#[derive(Debug, Clone)]
pub struct Prereqs {
    pub kernel: PathBuf,
    pub qemu: PathBuf,
    pub loader: PathBuf,
    pub repo: PathBuf,
}

fn default_kernel() -> PathBuf {
    match std::env::var_os("AAPL_VM_KERNEL") {
        Some(k) => PathBuf::from(k),
        None => std::env::var_os("AAPL_CI_CACHE")
            .map_or_else(|| PathBuf::from("/var/cache/aapl-ci"), PathBuf::from)
            .join("kernel/current/vmlinuz"),
    }
}

/// The prerequisites, or `None` (after printing how to install them) when some are missing outside CI.
/// Under CI ([`strict`]) a missing prerequisite panics: the suite must not pass by skipping.
pub fn prerequisites() -> Option<Prereqs> {
    static PREREQS: OnceLock<Result<Prereqs, Vec<String>>> = OnceLock::new();
    let found = PREREQS.get_or_init(|| {
        let mut missing = Vec::new();
        let kernel = default_kernel();
        if !kernel.is_file() {
            missing.push(format!(
                "kernel {} (run tests/vm/prepare.sh)",
                kernel.display()
            ));
        }
        let qemu = which("qemu-system-x86_64");
        if qemu.is_none() {
            missing.push("qemu-system-x86_64 (apt-get install qemu-system-x86)".into());
        }
        for (tool, package) in [
            ("apparmor_parser", "apparmor"),
            ("cpio", "cpio"),
            ("gzip", "gzip"),
            ("timeout", "coreutils"),
        ] {
            if which(tool).is_none() {
                missing.push(format!("{tool} (apt-get install {package})"));
            }
        }
        if !Path::new("/usr/sbin/apparmor_parser").is_file() {
            missing.push("/usr/sbin/apparmor_parser (apt-get install apparmor)".into());
        }
        if !Path::new("/etc/apparmor.d/abstractions/base").is_file() {
            missing.push("/etc/apparmor.d/abstractions (apt-get install apparmor)".into());
        }
        if !Path::new("/bin/busybox").is_file() {
            missing.push("/bin/busybox (apt-get install busybox-static)".into());
        }
        let loader = release_build::loader()
            .map_err(|e| missing.push(format!("the release apparmor-loader executable: {e}")))
            .ok();
        if missing.is_empty() {
            Ok(Prereqs {
                kernel,
                qemu: qemu.unwrap(),
                loader: loader.unwrap(),
                repo: crate::repo(),
            })
        } else {
            Err(missing)
        }
    });
    let found = found
        .clone()
        .map_err(|missing| format!("missing: {}\n{INSTALL_HINT}", missing.join("; ")));
    prereq::require(
        "real-kernel tests (QEMU harness, tests/kernel_e2e.rs)",
        found,
    )
}

// ---------------------------------------------------------------------------------------------------------------
// the serial console report

/// One `AAPL-*` line of the serial console.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Begin(String),
    Done(String),
    Result {
        scenario: String,
        pass: bool,
        detail: String,
    },
    Info {
        scenario: String,
        text: String,
    },
    Run {
        scenario: String,
        step: String,
        command: String,
    },
    Out {
        scenario: String,
        step: String,
        stream: String,
        text: String,
    },
    Exit {
        scenario: String,
        step: String,
        code: i32,
    },
    Metric {
        name: String,
        value: f64,
    },
    End(String),
}

impl Line {
    fn scenario(&self) -> Option<&str> {
        match self {
            Line::Begin(s) | Line::Done(s) => Some(s),
            Line::Result { scenario, .. }
            | Line::Info { scenario, .. }
            | Line::Run { scenario, .. }
            | Line::Out { scenario, .. }
            | Line::Exit { scenario, .. } => Some(scenario),
            _ => None,
        }
    }

    /// Parses the `AAPL-` record in a console line (kernel messages or `\r` around it are ignored).
    pub fn parse(raw: &str) -> Option<Line> {
        let at = raw.find("AAPL-")?;
        let rec = raw[at + 5..].trim_end_matches(['\r', '\n']);
        let (kind, rest) = rec.split_once(' ').unwrap_or((rec, ""));
        let mut words = rest.splitn(4, ' ');
        let mut next = || words.next().unwrap_or("").to_string();
        Some(match kind {
            "BEGIN" => Line::Begin(next()),
            "DONE" => Line::Done(next()),
            "END" => Line::End(next()),
            "RESULT" => {
                let scenario = next();
                let status = next();
                let detail = [next(), next()].join(" ").trim().to_string();
                Line::Result {
                    scenario,
                    pass: status == "PASS",
                    detail,
                }
            }
            "INFO" => {
                let (scenario, text) = rest.split_once(' ').unwrap_or((rest, ""));
                Line::Info {
                    scenario: scenario.into(),
                    text: text.into(),
                }
            }
            "RUN" => {
                let mut w = rest.splitn(3, ' ');
                Line::Run {
                    scenario: w.next().unwrap_or("").into(),
                    step: w.next().unwrap_or("").into(),
                    command: w.next().unwrap_or("").into(),
                }
            }
            "OUT" => Line::Out {
                scenario: next(),
                step: next(),
                stream: next(),
                text: next(),
            },
            "EXIT" => Line::Exit {
                scenario: next(),
                step: next(),
                code: next().parse().ok()?,
            },
            "METRIC" => Line::Metric {
                name: next(),
                value: next().parse().ok()?,
            },
            _ => return None,
        })
    }
}

/// What a boot printed.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
}

impl Report {
    pub fn parse(console: &str) -> Report {
        Report {
            lines: console.lines().filter_map(Line::parse).collect(),
        }
    }

    pub fn done(&self, scenario: &str) -> bool {
        self.lines
            .iter()
            .any(|l| matches!(l, Line::Done(s) if s == scenario))
    }

    pub fn ended(&self) -> bool {
        self.lines.iter().any(|l| matches!(l, Line::End(_)))
    }

    /// (pass, detail) of every check of a scenario.
    pub fn results(&self, scenario: &str) -> Vec<(bool, &str)> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Result {
                    scenario: s,
                    pass,
                    detail,
                } if s == scenario => Some((*pass, detail.as_str())),
                _ => None,
            })
            .collect()
    }

    pub fn exit(&self, scenario: &str, step: &str) -> Option<i32> {
        self.lines.iter().find_map(|l| match l {
            Line::Exit {
                scenario: s,
                step: t,
                code,
            } if s == scenario && t == step => Some(*code),
            _ => None,
        })
    }

    /// Lines a step printed on `stream` ("stdout" or "stderr").
    pub fn output(&self, scenario: &str, step: &str, stream: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Out {
                    scenario: s,
                    step: t,
                    stream: st,
                    text,
                } if s == scenario && t == step && st == stream => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The JSON log lines a step wrote to stderr (`--log-format json`).
    pub fn json_logs(&self, scenario: &str, step: &str) -> Vec<serde_json::Value> {
        self.output(scenario, step, "stderr")
            .into_iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        self.lines.iter().find_map(|l| match l {
            Line::Metric { name: n, value } if n == name => Some(*value),
            _ => None,
        })
    }

    /// Every line of a scenario, as the guest printed it, for a failure message.
    pub fn transcript(&self, scenario: &str) -> String {
        let mut out = String::new();
        for l in self.lines.iter().filter(|l| l.scenario() == Some(scenario)) {
            let _ = match l {
                Line::Result { pass, detail, .. } => {
                    writeln!(out, "  {} {detail}", if *pass { "PASS" } else { "FAIL" })
                }
                Line::Info { text, .. } => writeln!(out, "  info: {text}"),
                Line::Run { step, command, .. } => writeln!(out, "  [{step}] $ {command}"),
                Line::Out {
                    step, stream, text, ..
                } => writeln!(out, "  [{step}] {stream}: {text}"),
                Line::Exit { step, code, .. } => writeln!(out, "  [{step}] exit {code}"),
                Line::Begin(_) => writeln!(out, "  (begin)"),
                Line::Done(_) => writeln!(out, "  (done)"),
                _ => Ok(()),
            };
        }
        out
    }
}

/// A finished boot.
#[derive(Debug)]
pub struct Boot {
    pub report: Report,
    pub console: String,
    pub wall: Duration,
    pub accel: &'static str,
    /// The status `timeout qemu-system-x86_64 ...` exited with.
    pub status: String,
    pub timed_out: bool,
}

impl Boot {
    fn console_tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self.console.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics (naming the scenario and showing its transcript) unless the scenario ran to its end and every one
    /// of its checks passed.
    pub fn assert_scenario(&self, scenario: &str) {
        let results = self.report.results(scenario);
        let failed: Vec<&str> = results
            .iter()
            .filter(|(p, _)| !p)
            .map(|(_, d)| *d)
            .collect();
        let done = self.report.done(scenario);
        if done && !results.is_empty() && failed.is_empty() {
            eprintln!("scenario {scenario}: {} checks passed", results.len());
            return;
        }
        let mut why = String::new();
        if !failed.is_empty() {
            let _ = writeln!(why, "failed checks:\n    {}", failed.join("\n    "));
        }
        if results.is_empty() {
            why.push_str("no checks reported\n");
        }
        if !done {
            let _ = writeln!(
                why,
                "the scenario did not run to its end (boot: {}, timed out: {})\nconsole tail:\n{}",
                self.status,
                self.timed_out,
                self.console_tail(60)
            );
        }
        panic!(
            "scenario {scenario} failed\n{why}transcript:\n{}",
            self.report.transcript(scenario)
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// booting

/// One boot at a time: the timings printed are only comparable on a quiet machine, and 2 vCPUs are all we have.
static BOOT_LOCK: Mutex<()> = Mutex::new(());

/// Where a boot's whole serial console is kept for reading after the run (`target/tmp/`).
fn console_log_path(label: &str) -> PathBuf {
    let dir = crate::target_tmpdir();
    dir.join(format!("kernel_e2e-{label}.console.log"))
}

/// Packs `payload` into an initramfs and boots it with `extra_append` added to the kernel command line.
/// `label` names the console log kept in `target/tmp/kernel_e2e-<label>.console.log`.
pub fn boot(p: &Prereqs, label: &str, payload: &Path, extra_append: &str) -> Result<Boot, String> {
    let _guard = BOOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let initrd = dir.path().join("initrd.cpio.gz");
    let started = Instant::now();
    build_initramfs(&p.repo, &initrd, &p.loader, payload, dir.path(), &[])?;
    let size = std::fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "initramfs: {:.1} MiB, built in {:.1}s",
        size as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    let accel = qemu::accel(Arch::X86_64, &p.qemu, &p.kernel);
    let mut vm = Qemu::new(Arch::X86_64, accel, &p.kernel, &initrd);
    vm.program = p.qemu.clone();
    vm.append = format!("console=ttyS0 panic=-1 quiet {extra_append}");
    vm.timeout = qemu::timeout_from_env(900);
    let started = Instant::now();
    let qemu::Run {
        console,
        status,
        timed_out,
    } = vm.run()?;
    let wall = started.elapsed();
    let log = console_log_path(label);
    let kept = std::fs::write(&log, &console).is_ok();
    eprintln!(
        "boot {label} ({accel}, {extra_append}): {:.1}s, {status}{}",
        wall.as_secs_f64(),
        if kept {
            format!(", console in {}", log.display())
        } else {
            String::new()
        }
    );
    let report = Report::parse(&console);
    for l in &report.lines {
        if let Line::Metric { name, value } = l {
            eprintln!("METRIC {label} {name} {value}");
        }
    }
    Ok(Boot {
        report,
        console,
        wall,
        accel,
        status,
        timed_out,
    })
}

/// Packs `payload` with `loader` into the initramfs `initrd` (`tests/vm/build-initramfs.sh`, temporary
/// files under `tmp`); `env` picks another architecture's pieces (`BUSYBOX`, `BUSYBOX_LIST`,
/// `PARSER_ROOTFS`, see the script).
pub fn build_initramfs(
    repo: &Path,
    initrd: &Path,
    loader: &Path,
    payload: &Path,
    tmp: &Path,
    env: &[(&str, &Path)],
) -> Result<(), String> {
    let out = Command::new(repo.join("tests/vm/build-initramfs.sh"))
        .arg(initrd)
        .arg(loader)
        .arg(payload)
        .env("TMPDIR", tmp)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("cannot run tests/vm/build-initramfs.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tests/vm/build-initramfs.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
