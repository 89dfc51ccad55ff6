//! The arm64 executable on a real arm64 AppArmor kernel: Debian trixie's `linux-image-*-cloud-arm64` under
//! `qemu-system-aarch64` (TCG), an initramfs with the arm64 `apparmor-loader` (release build for
//! `aarch64-unknown-linux-gnu`), the arm64 image's parser tree (`build/parser-rootfs.sh --arch arm64`, the
//! versions of `build/debian-packages.lock`) and bookworm's arm64 busybox. The guest (`tests/vm/guest/init`,
//! suite `arm64`) runs `copy` + `load` on three profiles — 3.0 syntax, 4.0 syntax, complain mode — and observes;
//! this test asserts that every profile is in the kernel's list in its mode and that the enforce-mode ones deny the
//! write they do not allow while complain mode does not. It prints its wall time as `METRIC arm64_vm_ms`.
//!
//! Short on purpose: aarch64 under TCG boots in ~20 s on our 2 vCPUs. `tests/run-all` prepares everything first
//! (`tests/vm/prepare-arm64.sh`, `cargo build --release --target aarch64-unknown-linux-gnu`); this test builds and
//! downloads nothing. A missing prerequisite skips it loudly, and fails it under CI (`test-support/src/prereq.rs`).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aapl_test_support::qemu::{self, Arch, Qemu, which};
use aapl_test_support::release_build;
use aapl_test_support::vm::{Boot, Report};

const HINT: &str = "\
to run the arm64 real-kernel test:
  sudo .ci/install-deps                 # qemu-system-arm, qemu-user, gcc-aarch64-linux-gnu, the Rust target
  sudo tests/vm/prepare-arm64.sh        # kernel, busybox and parser tree into /var/cache/aapl-ci/kernel-arm64/
  cargo build --release --locked --target aarch64-unknown-linux-gnu --bin apparmor-loader
  cargo test --test kernel_arm64 -- --nocapture";

/// The Rust target of the arm64 image.
const AARCH64: &str = "aarch64-unknown-linux-gnu";
/// ELF `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;
/// ELF program header type of the interpreter (a dynamic executable has one).
const PT_INTERP: u32 = 3;

struct Prereqs {
    qemu: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
    tree: PathBuf,
    loader: PathBuf,
    repo: PathBuf,
}

/// `(e_machine, has PT_INTERP)` of a 64-bit little-endian ELF file.
fn elf_machine_and_interp(path: &Path) -> Result<(u16, bool), String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |o: usize| {
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(format!(
            "{} is not a 64-bit little-endian ELF file",
            path.display()
        ));
    }
    let bad = || format!("{}: truncated ELF header", path.display());
    let machine = u16_at(18).ok_or_else(bad)?;
    let phoff = u64_at(32).ok_or_else(bad)? as usize;
    let phentsize = u16_at(54).ok_or_else(bad)? as usize;
    let phnum = u16_at(56).ok_or_else(bad)? as usize;
    let mut interp = false;
    for i in 0..phnum {
        interp |= u32_at(phoff + i * phentsize).ok_or_else(bad)? == PT_INTERP;
    }
    Ok((machine, interp))
}

fn find_prereqs() -> Result<Prereqs, String> {
    let repo = aapl_test_support::repo();
    let cache = std::env::var_os("AAPL_CI_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/aapl-ci"), PathBuf::from)
        .join("kernel-arm64");
    let mut missing = Vec::new();
    let qemu = which("qemu-system-aarch64");
    if qemu.is_none() {
        missing.push("qemu-system-aarch64 (apt-get install qemu-system-arm)".to_string());
    }
    for (tool, package) in [("cpio", "cpio"), ("gzip", "gzip"), ("timeout", "coreutils")] {
        if which(tool).is_none() {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox (apt-get install busybox-static)".into());
    }
    let kernel = cache.join("current/vmlinuz");
    let busybox = cache.join("busybox");
    let tree = cache.join("parser-rootfs");
    for (path, what) in [
        (&kernel, "the arm64 kernel"),
        (&busybox, "arm64 busybox"),
        (
            &tree.join("usr/sbin/apparmor_parser"),
            "the arm64 parser tree",
        ),
    ] {
        if !path.is_file() {
            missing.push(format!(
                "{what}: {} (run tests/vm/prepare-arm64.sh)",
                path.display()
            ));
        }
    }
    let loader = release_build::loader_for(AARCH64)
        .and_then(|loader| match elf_machine_and_interp(&loader)? {
            (EM_AARCH64, false) => Ok(loader),
            (machine, interp) => Err(format!(
                "{} is not a static AArch64 executable (e_machine {machine}, interpreter {interp})",
                loader.display()
            )),
        })
        .map_err(|e| missing.push(format!("the arm64 release executable: {e}")))
        .ok();
    if missing.is_empty() {
        Ok(Prereqs {
            qemu: qemu.unwrap(),
            kernel,
            busybox,
            tree,
            loader: loader.unwrap(),
            repo,
        })
    } else {
        Err(format!("missing: {}\n{HINT}", missing.join("; ")))
    }
}

/// The guest's ConfigMap: the repo's 3.0-syntax enforce and complain examples and a 4.0-syntax probe.
fn write_payload(dir: &Path, repo: &Path) {
    let src = dir.join("src/v1");
    std::fs::create_dir_all(&src).unwrap();
    for name in ["k8s-deny-write", "k8s-audit-only"] {
        std::fs::copy(repo.join("profiles").join(name), src.join(name)).unwrap();
    }
    std::fs::write(
        src.join("aapl-arm64-v4"),
        "# AppArmor 4.0 syntax as Ubuntu 24.04 writes it: everything but one write.\n\
         abi <abi/4.0>,\n\
         include <tunables/global>\n\
         \n\
         profile aapl-arm64-v4 flags=(attach_disconnected) {\n\
         \x20 include <abstractions/base>\n\
         \x20 file,\n\
         \x20 userns,\n\
         \x20 deny /tmp/aapl-arm64-v4-denied w,\n\
         }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("expected")).unwrap();
    std::fs::write(
        dir.join("expected/v1"),
        "k8s-deny-write enforce\nk8s-audit-only complain\naapl-arm64-v4 enforce\n",
    )
    .unwrap();
    std::fs::write(dir.join("suite"), "arm64\n").unwrap();
}

/// Packs the initramfs (the builder of `aapl_test_support::vm`, with the arm64 pieces) and boots it under `qemu-system-aarch64 -M virt
/// -cpu max` (TCG on an x86 host), bounded by `timeout` (the shared launcher, `test-support/src/qemu.rs`).
fn boot(p: &Prereqs, payload: &Path) -> Result<Boot, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let initrd = dir.path().join("initrd.cpio.gz");
    aapl_test_support::vm::build_initramfs(
        &p.repo,
        &initrd,
        &p.loader,
        payload,
        dir.path(),
        &[
            ("BUSYBOX", &p.busybox),
            ("BUSYBOX_LIST", Path::new("/bin/busybox")),
            ("PARSER_ROOTFS", &p.tree),
        ],
    )?;
    let started = Instant::now();
    let accel = qemu::accel(Arch::Aarch64, &p.qemu, &p.kernel);
    let mut vm = Qemu::new(Arch::Aarch64, accel, &p.kernel, &initrd);
    vm.program = p.qemu.clone();
    vm.memory_mb = 768;
    vm.append = "console=ttyAMA0 apparmor=1 security=apparmor panic=-1 quiet".into();
    vm.timeout = qemu::timeout_from_env(600);
    let run = vm.run()?;
    let wall = started.elapsed();
    let console = run.console;
    if let Some(tmp) = option_env!("CARGO_TARGET_TMPDIR") {
        let log = Path::new(tmp).join("kernel_arm64.console.log");
        if std::fs::write(&log, &console).is_ok() {
            eprintln!("console in {}", log.display());
        }
    }
    Ok(Boot {
        report: Report::parse(&console),
        console,
        wall,
        accel,
        timed_out: run.timed_out,
        status: run.status,
    })
}

#[test]
fn arm64_executable_loads_and_enforces_3_0_4_0_and_complain_profiles_on_an_arm64_kernel() {
    let Some(p) = aapl_test_support::vm::require(
        "arm64 real-kernel test (tests/kernel_arm64.rs)",
        find_prereqs(),
    ) else {
        return;
    };
    let payload = tempfile::tempdir().unwrap();
    write_payload(payload.path(), &p.repo);
    let started = Instant::now();
    let boot = boot(&p, payload.path()).unwrap_or_else(|e| panic!("{e}"));
    let total = started.elapsed();
    eprintln!(
        "arm64 boot: {:.1}s in qemu ({}), {:.1}s with the initramfs",
        boot.wall.as_secs_f64(),
        boot.status,
        total.as_secs_f64()
    );
    println!("METRIC arm64_vm_ms {}", total.as_millis());
    if let Some(gate) = boot.report.metric("arm64_gate_ms") {
        println!("METRIC arm64_gate_ms {gate}");
    }
    boot.assert_scenario("arm64");
    assert!(
        boot.report.ended(),
        "the guest did not reach the end of its suite"
    );
}

#[test]
fn elf_reader_tells_a_static_aarch64_executable_from_a_host_one() {
    // this test binary itself: the host's architecture, dynamic or not per its own flags
    let me = std::env::current_exe().unwrap();
    let (machine, _) = elf_machine_and_interp(&me).unwrap();
    assert_eq!(machine == EM_AARCH64, cfg!(target_arch = "aarch64"));
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"#!/bin/sh\n").unwrap();
    assert!(elf_machine_and_interp(&junk).is_err());
    let short = dir.path().join("short");
    std::fs::write(&short, b"\x7fELF\x02\x01\x01\0").unwrap();
    assert!(elf_machine_and_interp(&short).is_err());
}
