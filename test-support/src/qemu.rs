//! The one QEMU launcher of the harnesses (`vm` for `kernel_e2e`/`kernel_fail_closed`,
//! `kernel_arm64`, `node` for `node_e2e`): the command line per architecture, the accelerator
//! (KVM only when a tiny guest really boots with it, else TCG), and every run bounded by `timeout`.
//!

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The guest's architecture: which `qemu-system-*`, machine and console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The emulator's name (looked up on `PATH`).
    pub fn program(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The serial console's device name in the guest kernel.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    fn machine(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[],
            Arch::Aarch64 => &["-M", "virt", "-cpu", "max"],
        }
    }

    fn is_host(self) -> bool {
        match self {
            Arch::X86_64 => cfg!(target_arch = "x86_64"),
            Arch::Aarch64 => cfg!(target_arch = "aarch64"),
        }
    }
}

/// A program on `PATH` or in the usual system directories.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Env `AAPL_VM_TIMEOUT` (seconds), else `default`: the bound of one boot.
pub fn timeout_from_env(default: u64) -> Duration {
    Duration::from_secs(
        std::env::var("AAPL_VM_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// One QEMU guest: kernel, initramfs and command line, plus what a suite adds (disks, network, a
/// second serial port). `-nographic -no-reboot -nodefaults`, first serial port on stdio.
pub struct Qemu {
    pub arch: Arch,
    /// The emulator: a path, or [`Arch::program`] to look it up on `PATH`.
    pub program: PathBuf,
    pub accel: &'static str,
    pub memory_mb: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    /// Further QEMU arguments, after the first serial port.
    pub extra: Vec<OsString>,
    /// QEMU gets TERM at this bound and KILL 10 s later.
    pub timeout: Duration,
    /// `timeout --foreground`: QEMU stays in the caller's process group, so a Ctrl-C of `cargo test`
    /// ends it too (for a QEMU the caller puts in a process group of its own, leave it off).
    pub foreground: bool,
}

/// What a run to its end left: the serial console (QEMU's stderr appended) and how it ended.
pub struct Run {
    pub console: String,
    /// The status `timeout qemu-system-* ...` exited with.
    pub status: String,
    pub timed_out: bool,
}

impl Qemu {
    /// A guest of `arch` with 2 vCPUs and the emulator found on `PATH`.
    pub fn new(arch: Arch, accel: &'static str, kernel: &Path, initrd: &Path) -> Qemu {
        Qemu {
            arch,
            program: PathBuf::from(arch.program()),
            accel,
            memory_mb: 512,
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            append: String::new(),
            extra: Vec::new(),
            timeout: Duration::from_secs(900),
            foreground: true,
        }
    }

    /// `timeout ... qemu-system-* ...`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("timeout");
        self.add_args(&mut cmd);
        cmd
    }

    /// Adds `timeout`'s arguments and the QEMU command line to `cmd`, a command that runs `timeout`
    /// (directly, or through a wrapper such as `setpriv ... -- timeout`).
    pub fn add_args(&self, cmd: &mut Command) {
        if self.foreground {
            cmd.arg("--foreground");
        }
        cmd.args(["--kill-after=10", &self.timeout.as_secs().to_string()])
            .arg(&self.program)
            .args(self.arch.machine())
            .args(["-accel", self.accel, "-smp", "2"])
            .args(["-m", &self.memory_mb.to_string()])
            .args(["-nographic", "-no-reboot", "-nodefaults"])
            .args(["-serial", "stdio"])
            .args(&self.extra)
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(&self.append);
    }

    /// Runs the guest to its end, collecting the console (echoed as `vm| ...` with env
    /// `AAPL_VM_VERBOSE`).
    pub fn run(&self) -> Result<Run, String> {
        let verbose = std::env::var_os("AAPL_VM_VERBOSE").is_some();
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start timeout/{}: {e}", self.arch.program()))?;
        let stderr = child.stderr.take().unwrap();
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut console = String::new();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    if verbose {
                        eprint!("vm| {line}");
                    }
                    console.push_str(&line);
                }
                Err(e) => return Err(format!("reading the serial console: {e}")),
            }
        }
        let status = child.wait().map_err(|e| format!("waiting for qemu: {e}"))?;
        let stderr = err_thread.join().unwrap_or_default();
        if !stderr.trim().is_empty() {
            console.push_str("\n[qemu stderr]\n");
            console.push_str(&stderr);
        }
        Ok(Run {
            console,
            status: status.to_string(),
            timed_out: matches!(status.code(), Some(124) | Some(137)),
        })
    }
}

/// The accelerator for a guest of `arch` booting `kernel` with `program`: env `AAPL_VM_ACCEL`
/// (`kvm`|`tcg`) if set; `tcg` for another architecture than this machine's; otherwise `kvm` when
/// /dev/kvm opens and a tiny guest really boots with it within seconds, else `tcg`. (On some hosts
/// /dev/kvm exists but the guest spins forever, or KVM has no hardware support, so opening it is not
/// proof.) Decided once per test process.
pub fn accel(arch: Arch, program: &Path, kernel: &Path) -> &'static str {
    if !arch.is_host() {
        return "tcg";
    }
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| {
        match std::env::var("AAPL_VM_ACCEL").as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !rw {
            return "tcg";
        }
        let started = Instant::now();
        let ok = probe_kvm(arch, program, kernel).unwrap_or_else(|e| {
            eprintln!("kvm probe: {e}");
            false
        });
        eprintln!(
            "kvm probe: {} after {:.1}s",
            if ok {
                "works"
            } else {
                "does not work, using tcg"
            },
            started.elapsed().as_secs_f64()
        );
        if ok { "kvm" } else { "tcg" }
    })
}

/// Boots a busybox-only initramfs under KVM (10 s bound): does it print its marker?
fn probe_kvm(arch: Arch, program: &Path, kernel: &Path) -> Result<bool, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).map_err(|e| e.to_string())?;
    std::fs::write(
        root.join("init"),
        "#!/bin/busybox sh\n/bin/busybox echo AAPL-PROBE-OK\n/bin/busybox poweroff -f\n",
    )
    .map_err(|e| e.to_string())?;
    set_mode(&root.join("init"), 0o755)?;
    let initrd = dir.path().join("probe.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > \"$2\"")
        .arg("sh")
        .arg(&root)
        .arg(&initrd)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("cannot pack the probe initramfs".into());
    }
    let mut probe = Qemu::new(arch, "kvm", kernel, &initrd);
    probe.program = program.to_path_buf();
    probe.append = format!("console={} panic=-1 quiet", arch.console());
    probe.timeout = Duration::from_secs(10);
    Ok(probe.run()?.console.contains("AAPL-PROBE-OK"))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}
