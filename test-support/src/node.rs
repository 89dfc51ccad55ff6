//! Harness of the node end-to-end suite (`tests/node_e2e/`): a real control plane on this machine
//! (the kube-apiserver + etcd harness of `tests/apiserver`, kube-scheduler, kube-controller-manager) and a
//! QEMU guest that is a real node (containerd, runc, CNI, kube-proxy, kubelet; `tests/node/guest/init`).
//!
//! Pieces, one job each: [`Prereqs`] (what must exist, built by `tests/node/prepare.sh`), [`ControlPlane`]
//! (processes on 127.0.0.1, stopped on drop), [`Watch`] (a `kubectl get -w` stream, every event stamped on
//! arrival: the clock of the METRIC lines), [`Guest`] (the VM, its console and its command channel).

use crate::{prereq, qemu, release_build};

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use qemu::{Arch, Qemu};
use serde_json::Value;

pub const HINT: &str = "\
to run the node end-to-end suite:
  sudo .ci/install-deps             # qemu, busybox-static, cpio, buildah, apparmor, runc, nftables, kubectl
  sudo tests/vm/prepare.sh          # the AppArmor kernel
  sudo tests/apiserver/build.sh     # kube-apiserver + etcd harness
  sudo tests/node/prepare.sh        # kubelet, kube-proxy, scheduler, controller-manager, containerd, modules
  cargo test --test node_e2e -- --nocapture --test-threads 1";

pub fn repo() -> PathBuf {
    crate::repo()
}

fn run_script(script: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(repo().join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{script} {args:?} failed ({})", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().last().unwrap_or("").trim().to_string())
}

/// Everything a run needs on this machine.
#[derive(Debug, Clone)]
pub struct Prereqs {
    pub kernel: PathBuf,
    pub apiserver: PathBuf,
    /// kubelet, kube-proxy, kube-scheduler, kube-controller-manager
    pub k8s_bin: PathBuf,
    /// node-base.cpio.gz
    pub guest_base: PathBuf,
    pub loader: PathBuf,
}

/// The prerequisites (building the cached ones when needed), or `None` outside CI when some cannot be had.
/// Under CI a missing prerequisite panics, elsewhere the suite skips loudly: the shared rule of `crate::prereq`.
pub fn prerequisites() -> Option<Prereqs> {
    let mut missing = Vec::new();
    for tool in [
        "qemu-system-x86_64",
        "kubectl",
        "buildah",
        "cpio",
        "gzip",
        "timeout",
    ] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            missing.push(format!("command {tool}"));
        }
    }
    for f in [
        "/usr/sbin/runc",
        "/usr/sbin/nft",
        "/usr/sbin/apparmor_parser",
        "/bin/busybox",
    ] {
        if !Path::new(f).is_file() {
            missing.push(f.to_string());
        }
    }
    let loader = release_build::loader()
        .map_err(|e| missing.push(format!("the release apparmor-loader executable: {e}")))
        .ok();
    let cache = std::env::var_os("AAPL_CI_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/aapl-ci"), PathBuf::from);
    let kernel = cache.join("kernel/current/vmlinuz");
    let get =
        |missing: &mut Vec<String>, script: &str, args: &[&str]| match run_script(script, args) {
            Ok(p) if Path::new(&p).exists() => Some(PathBuf::from(p)),
            Ok(p) => {
                missing.push(format!("{p} (run {script})"));
                None
            }
            Err(e) => {
                missing.push(e);
                None
            }
        };
    let apiserver = get(&mut missing, "tests/apiserver/build.sh", &["--path"]);
    let k8s_bin = get(&mut missing, "tests/node/build-k8s.sh", &["--path"]);
    // prepare.sh builds what is missing (cold: long); only when the rest is there
    let guest = if missing.is_empty() {
        get(&mut missing, "tests/node/prepare.sh", &[])
    } else {
        None
    };
    if !kernel.is_file() {
        missing.push(format!("{} (run tests/vm/prepare.sh)", kernel.display()));
    }
    if missing.is_empty() {
        return Some(Prereqs {
            kernel,
            apiserver: apiserver.unwrap(),
            k8s_bin: k8s_bin.unwrap(),
            guest_base: guest.unwrap().join("node-base.cpio.gz"),
            loader: loader.unwrap(),
        });
    }
    let msg = format!("missing:\n  {}\n{HINT}", missing.join("\n  "));
    prereq::require("node end-to-end suite (tests/node_e2e/)", Err(msg))
}

// === processes ==================================================================================

/// A child process in its own process group, killed (group and all) on drop; its output goes to `log`.
pub struct Proc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Proc, String> {
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| e.to_string())?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let stdin = child.stdin.take();
        Ok(Proc {
            name: name.into(),
            child,
            stdin,
            log,
        })
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(
            &std::fs::read_to_string(&self.log).unwrap_or_default(),
            lines,
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let pgid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A command that is sent SIGTERM when the thread that started it ends (`setpriv --pdeathsig`): the
/// session runs in one thread, so nothing it started outlives it, even when the test process is killed.
/// (The API server harness stops by itself when its stdin closes.)
pub fn orphan_safe(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--pdeathsig", "TERM", "--"]).arg(program);
    c
}

// === control plane ==============================================================================

/// kube-apiserver + etcd (tests/apiserver harness, advertising 10.0.2.2 so the `kubernetes` Service points
/// at the guest's view of this machine's loopback), kube-scheduler, kube-controller-manager.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server_url: String,
    pub port: u16,
    pub ca: PathBuf,
    harness: PathBuf,
    // dropped in reverse order of start: controllers first, the API server last
    pub procs: Vec<Proc>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

impl ControlPlane {
    pub fn start(p: &Prereqs, dir: &Path) -> Result<ControlPlane, String> {
        let state = dir.join("apiserver");
        let mut api = Proc::spawn(
            "apiserver-harness",
            Command::new(&p.apiserver)
                .arg("serve")
                .arg("--dir")
                .arg(&state)
                .args(["--advertise-address", "10.0.2.2"]),
            dir.join("apiserver.log"),
        )?;
        let ready = state.join("server-url");
        let deadline = Instant::now() + Duration::from_secs(180);
        while !ready.is_file() {
            if !api.alive() || Instant::now() > deadline {
                return Err(format!(
                    "the API server harness did not become ready:\n{}",
                    api.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let server_url = std::fs::read_to_string(&ready)
            .map_err(|e| e.to_string())?
            .trim()
            .to_string();
        let port: u16 = server_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("no port in {server_url}"))?;
        let kubeconfig = state.join("kubeconfig");
        let ca = state.join("ca.crt");
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            kubeconfig: kubeconfig.clone(),
            server_url,
            port,
            ca: ca.clone(),
            harness: p.apiserver.clone(),
            procs: vec![api],
        };
        let sched = Proc::spawn(
            "kube-scheduler",
            orphan_safe(&p.k8s_bin.join("kube-scheduler"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["--leader-elect=false", "--secure-port=0", "--v=1"]),
            dir.join("kube-scheduler.log"),
        )?;
        cp.procs.push(sched);
        let kcm = Proc::spawn(
            "kube-controller-manager",
            orphan_safe(&p.k8s_bin.join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!("--root-ca-file={}", ca.display()))
                .args([
                    "--leader-elect=false",
                    "--secure-port=0",
                    "--use-service-account-credentials=false",
                    "--controllers=*",
                    "--v=1",
                ]),
            dir.join("kube-controller-manager.log"),
        )?;
        cp.procs.push(kcm);
        Ok(cp)
    }

    /// Which control-plane process has exited, with its log tail.
    pub fn dead(&mut self) -> Option<String> {
        self.procs
            .iter_mut()
            .find_map(|p| (!p.alive()).then(|| format!("{} exited:\n{}", p.name, p.log_tail(30))))
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("kubectl: {e}"))?;
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input
                .write_all(s.as_bytes())
                .map_err(|e| format!("kubectl stdin: {e}"))?;
        }
        drop(input);
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    pub fn get_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&a, None)?;
        serde_json::from_str(&out).map_err(|e| format!("kubectl get {args:?}: {e}"))
    }

    /// Objects of PATH (a kustomization or a YAML file) as the harness renders them.
    pub fn render(&self, path: &Path) -> Result<Value, String> {
        let out = Command::new(&self.harness)
            .arg("render")
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "render {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    pub fn apply(&self, items: &[Value]) -> Result<String, String> {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.kubectl(&["apply", "-f", "-"], Some(&list.to_string()))
    }

    /// A client certificate (CN user, O group) signed by the API server's client CA: (cert PEM, key PEM).
    pub fn issue_cert(&self, cn: &str, org: &str) -> Result<(String, String), String> {
        let prefix = self.dir.join(cn.replace(':', "_"));
        let out = Command::new(&self.harness)
            .arg("issue-cert")
            .arg("--dir")
            .arg(self.dir.join("apiserver"))
            .args(["--cn", cn, "--org", org, "--out"])
            .arg(&prefix)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "issue-cert {cn}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let read = |ext: &str| {
            std::fs::read_to_string(prefix.with_extension(ext)).map_err(|e| e.to_string())
        };
        Ok((read("crt")?, read("key")?))
    }

    /// A kubeconfig for the guest: the API server at 10.0.2.2 (QEMU's user network forwards it to this
    /// machine's 127.0.0.1), authenticating with a client certificate.
    pub fn guest_kubeconfig(&self, cn: &str, org: &str) -> Result<String, String> {
        let encode = |data: &str| STANDARD.encode(data);
        let (cert, key) = self.issue_cert(cn, org)?;
        let ca = std::fs::read_to_string(&self.ca).map_err(|e| e.to_string())?;
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster:\n    server: https://10.0.2.2:{}\n    \
             certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    \
             client-key-data: {}\ncontexts:\n- name: c\n  context:\n    cluster: harness\n    user: u\n\
             current-context: c\n",
            self.port,
            encode(&ca),
            encode(&cert),
            encode(&key)
        ))
    }
}

// === watches ====================================================================================

/// One `kubectl get RESOURCE -A -w --output-watch-events -o json` stream; each event is stamped with the
/// instant it arrived. Waiting is on a condition variable, not on a timer.
/// Watch events with their arrival time, and the condition variable that signals a new one.
pub type Events = Arc<(Mutex<Vec<(Instant, Value)>>, Condvar)>;

pub struct Watch {
    pub events: Events,
    _proc: Proc,
}

impl Watch {
    pub fn start(cp: &ControlPlane, resource: &str) -> Result<Watch, String> {
        let events: Events = Arc::default();
        let log = cp.dir.join(format!("watch-{resource}.log"));
        let mut child = orphan_safe(Path::new("kubectl"))
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .args([
                "get",
                resource,
                "-A",
                "-w",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("kubectl watch {resource}: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let sink = events.clone();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter();
            for v in stream {
                let Ok(v) = v else { break };
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push((Instant::now(), v));
                cv.notify_all();
            }
        });
        let stdin = child.stdin.take();
        Ok(Watch {
            events,
            _proc: Proc {
                name: format!("watch {resource}"),
                child,
                stdin,
                log,
            },
        })
    }

    /// The first event (index, arrival, object) at or after index `from` whose object satisfies `pred`,
    /// waiting at most `timeout`.
    pub fn wait(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<(usize, Instant, Value)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.events;
        let mut evs = lock.lock().unwrap();
        let mut next = from;
        loop {
            while next < evs.len() {
                let (at, ev) = &evs[next];
                if pred(&ev["object"]) {
                    return Some((next, *at, ev["object"].clone()));
                }
                next += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            evs = cv.wait_timeout(evs, left).unwrap().0;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.events.0.lock().unwrap().len()
    }

    /// Objects of the events in [from, to).
    pub fn between(&self, from: usize, to: usize) -> Vec<Value> {
        let evs = self.events.0.lock().unwrap();
        evs[from.min(evs.len())..to.min(evs.len())]
            .iter()
            .map(|(_, v)| v["object"].clone())
            .collect()
    }
}

// === the guest ==================================================================================

/// The QEMU guest: serial console (ttyS0) collected into `console`, command channel on ttyS1.
pub struct Guest {
    pub console: Arc<(Mutex<String>, Condvar)>,
    ctl: Mutex<Option<BufReader<UnixStream>>>,
    next_id: Mutex<u32>,
    pub started: Instant,
    _proc: Proc,
}

impl Guest {
    /// Boots KERNEL with INITRD (the base tree and the run's payload, concatenated) and DISK (a raw ext4
    /// image: the node's disk, kept across boots) and waits for the init's "ready" event.
    pub fn boot(
        p: &Prereqs,
        initrd: &Path,
        disk: &Path,
        dir: &Path,
        memory_mb: u32,
        timeout: Duration,
    ) -> Result<Guest, String> {
        let sock = dir.join("ctl.sock");
        // a previous boot's socket (QEMU creates its own)
        let _ = std::fs::remove_file(&sock);
        let accel = qemu::accel(Arch::X86_64, Path::new(Arch::X86_64.program()), &p.kernel);
        let mut vm = Qemu::new(Arch::X86_64, accel, &p.kernel, initrd);
        vm.memory_mb = memory_mb;
        vm.timeout = timeout;
        // its own process group (below), killed as a group on drop; not in ours
        vm.foreground = false;
        vm.append = "console=ttyS0 panic=-1 quiet apparmor=1 security=apparmor".into();
        vm.extra = vec![
            "-serial".into(),
            format!("unix:{},server=on,wait=off", sock.display()).into(),
            "-netdev".into(),
            "user,id=n0".into(),
            "-device".into(),
            "virtio-net-pci,netdev=n0".into(),
            "-drive".into(),
            format!("file={},format=raw,if=virtio", disk.display()).into(),
        ];
        eprintln!("node guest: qemu with -accel {accel}");
        let mut cmd = orphan_safe(Path::new("timeout"));
        vm.add_args(&mut cmd);
        let log = dir.join("qemu.stderr");
        let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start qemu: {e}"))?;
        let stdout = child.stdout.take().unwrap();
        let console: Arc<(Mutex<String>, Condvar)> = Arc::default();
        let sink = console.clone();
        let verbose = std::env::var_os("AAPL_VM_VERBOSE").is_some();
        let console_file = dir.join("console.log");
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(console_file).ok();
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).into_owned();
                if verbose {
                    eprint!("vm| {line}");
                }
                if let Some(f) = f.as_mut() {
                    let _ = f.write_all(line.as_bytes());
                }
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push_str(&line);
                cv.notify_all();
            }
            let (lock, cv) = &*sink;
            lock.lock().unwrap().push_str("\nAAPL-EVENT qemu exited\n");
            cv.notify_all();
        });
        let g = Guest {
            console,
            ctl: Mutex::new(None),
            next_id: Mutex::new(0),
            started: Instant::now(),
            _proc: Proc {
                name: "qemu".into(),
                child,
                stdin: None,
                log,
            },
        };
        g.wait_console("AAPL-EVENT ready", Duration::from_secs(900))?;
        let stream = UnixStream::connect(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
        *g.ctl.lock().unwrap() = Some(BufReader::new(stream));
        Ok(g)
    }

    /// Waits until the console shows `needle`; fails early if qemu exited.
    pub fn wait_console(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut text = lock.lock().unwrap();
        loop {
            if text.contains(needle) {
                return Ok(());
            }
            if text.contains("AAPL-EVENT qemu exited") {
                return Err(format!(
                    "the guest stopped before '{needle}'; console:\n{}",
                    tail(&text, 60)
                ));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no '{needle}' within {timeout:?}; console:\n{}",
                    tail(&text, 60)
                ));
            }
            text = cv.wait_timeout(text, left).unwrap().0;
        }
    }

    pub fn console_text(&self) -> String {
        self.console.0.lock().unwrap().clone()
    }

    /// `AAPL-EVENT` lines so far.
    pub fn events(&self) -> Vec<String> {
        self.console_text()
            .lines()
            .filter_map(|l| {
                l.find("AAPL-EVENT ")
                    .map(|i| l[i + 11..].trim().to_string())
            })
            .collect()
    }

    /// Runs a shell command in the guest (its init's functions are in scope): (exit code, output).
    pub fn sh(&self, command: &str, timeout: Duration) -> Result<(i32, String), String> {
        let id = {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            *n
        };
        let mut guard = self.ctl.lock().unwrap();
        let ctl = guard.as_mut().ok_or("no command channel")?;
        let line = format!("{id} {}\n", STANDARD.encode(command));
        ctl.get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("command channel: {e}"))?;
        ctl.get_mut()
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = ctl
                .read_line(&mut buf)
                .map_err(|e| format!("no answer to `{command}` within {timeout:?}: {e}"))?;
            if n == 0 {
                return Err(format!("command channel closed during `{command}`"));
            }
            let rec = buf.trim_end_matches(['\r', '\n']);
            let Some(at) = rec.find("AAPL-CTL ") else {
                continue;
            };
            let mut w = rec[at + 9..].splitn(3, ' ');
            if w.next() != Some(&id.to_string()) {
                continue;
            }
            let rc = w.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
            let out = STANDARD
                .decode(w.next().unwrap_or(""))
                .map_err(|e| format!("undecodable answer to `{command}`: {e}"))?;
            return Ok((rc, String::from_utf8_lossy(&out).into_owned()));
        }
    }

    /// Like [`Guest::sh`], the output only (failures folded into the text).
    pub fn out(&self, command: &str) -> String {
        match self.sh(command, Duration::from_secs(120)) {
            Ok((_, o)) => o,
            Err(e) => format!("(guest command failed: {e})"),
        }
    }
}

/// Reads a file into a string, for the cases where an io::Read is handier.
pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}
