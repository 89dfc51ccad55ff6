//! The real kube-apiserver + etcd harness (tests/apiserver/, Go) for Rust integration tests:
//! finding the built binary, starting it, waiting for "ready" with a bound, and stopping it.
//! Submodules: `shared` (the one server a test file shares, manifests applied), `objects`
//! (render, strict apply, JSON Patch), `cluster` (nodes, loader pods, pod-bound tokens),
//! `loader` (running `untaint`). Nodes and taints come from `crate::fixtures` (shared with the mock
//! tests), the skip-or-fail rule from `crate::prereq`.
//!
//! The harness is built once per machine by `tests/apiserver/build.sh`. Its path comes from env
//! `APPARMOR_LOADER_TEST_APISERVER`, or else from `build.sh --path`. A missing harness fails the
//! test under CI; otherwise the test prints how to build it and returns early (`prereq`).
//!
//! Cleanup: the harness runs in its own process group with our pipe as its stdin, and stops
//! (SIGTERM to itself: kube-apiserver's graceful shutdown, then etcd) when that pipe closes.
//! Dropping a [`Harness`] closes the pipe and SIGKILLs the group if it is still there after a
//! bound. A harness kept in a `static` is never dropped; it stops by itself when this process
//! exits for any reason (even SIGKILL), since the kernel then closes the pipe. Either way it
//! removes its state directory.

use crate::prereq;

pub mod cluster;
pub mod loader;
pub mod objects;
pub mod shared;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// The executable under test.
/// Where the DaemonSet, its ServiceAccount and the loader pods live.
pub const NS: &str = "kube-system";
/// The loader's ServiceAccount.
pub const SA: &str = "apparmor-profile-loader";
/// The ValidatingAdmissionPolicy (and binding) of manifests/admission-policy/.
pub const POLICY: &str = "apparmor-profile-loader-untaint";
/// Field manager of the tests' server-side applies.
pub const FIELD_MANAGER: &str = "apiserver-e2e";
/// Bound for conditions the API server reaches asynchronously (informers, controllers).
pub const SETTLE: Duration = Duration::from_secs(60);

/// Env var naming a built harness binary (skips `build.sh --path`).
pub const ENV_BINARY: &str = "APPARMOR_LOADER_TEST_APISERVER";
/// Startup bound: etcd + kube-apiserver are usually ready in a few seconds.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a stopping harness may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn repo_root() -> PathBuf {
    crate::repo()
}

/// The harness binary, or why it is not there and how to build it.
pub fn locate() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(ENV_BINARY) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{ENV_BINARY}={} is not a file; unset it or build the harness with tests/apiserver/build.sh",
                p.display()
            ))
        };
    }
    let script = repo_root().join("tests/apiserver/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--path")
        .output()
        .map_err(|e| format!("cannot run {} --path: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --path failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "the kube-apiserver test harness is not built ({} is missing). Build it once per machine \
             with `tests/apiserver/build.sh` (needs Go >= 1.26 and the Go module proxy; the first \
             build compiles kube-apiserver and takes several minutes, later runs reuse it), or set \
             {ENV_BINARY} to a built harness",
            p.display()
        ))
    }
}

/// The harness binary; when it is missing, `None` after printing how to build it, or a panic
/// under CI (the shared rule, [`prereq::strict`]).
pub fn binary_or_skip(test: &str) -> Option<PathBuf> {
    prereq::require(&format!("kube-apiserver harness, {test}"), locate())
}

/// A running etcd + kube-apiserver.
pub struct Harness {
    child: Mutex<Option<Child>>,
    stdin: Mutex<Option<ChildStdin>>,
    pgid: u32,
    /// The harness' state directory (removed when it stops).
    pub dir: PathBuf,
    pub binary: PathBuf,
    /// Admin (system:masters) kubeconfig.
    pub kubeconfig: PathBuf,
    pub server_url: String,
    /// The CA that signed the serving certificate.
    pub ca_file: PathBuf,
    /// Process start to "ready".
    pub startup: Duration,
    log: PathBuf,
}

impl Harness {
    /// Starts the harness and waits (at most [`READY_TIMEOUT`]) for its "ready" line.
    pub fn start(binary: &Path) -> Result<Harness, String> {
        let dir = tempfile::Builder::new()
            .prefix("aapl-apiserver-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        let log = dir.join("harness.log");
        let log_file = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--dir")
            .arg(&dir)
            .arg("--cleanup")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let pgid = child.id();
        let mut h = Harness {
            child: Mutex::new(Some(child)),
            stdin: Mutex::new(stdin),
            pgid,
            kubeconfig: dir.join("kubeconfig"),
            ca_file: dir.join("ca.crt"),
            dir,
            binary: binary.to_path_buf(),
            server_url: String::new(),
            startup: Duration::ZERO,
            log,
        };
        // From here on, an early return drops `h`, which stops the process.
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = started + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.trim() == "ready" => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "harness not ready within {READY_TIMEOUT:?}; its log ends with:\n{}",
                        h.log_tail(60)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = h.child.lock().unwrap().as_mut().map(|c| c.wait());
                    return Err(format!(
                        "harness exited before it was ready ({status:?}); its log ends with:\n{}",
                        h.log_tail(60)
                    ));
                }
            }
        }
        h.startup = started.elapsed();
        h.server_url = std::fs::read_to_string(h.dir.join("server-url"))
            .map_err(|e| format!("server-url: {e}"))?
            .trim()
            .to_string();
        Ok(h)
    }

    /// The last `lines` lines of the harness' log (etcd + kube-apiserver stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Writes a kubeconfig for this server that authenticates with `token`.
    pub fn write_token_kubeconfig(&self, token: &str, path: &Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: token\n  user:\n    token: {token}\n\
             contexts:\n- name: token@harness\n  context:\n    cluster: harness\n    user: token\n\
             current-context: token@harness\n",
            self.server_url,
            self.ca_file.display()
        );
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    /// Runs the harness binary with `args` (e.g. `render`, `expire-token`), `stdin` as input.
    pub fn tool(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(stdin.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "harness {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Stops the harness: EOF on its stdin (it then SIGTERMs itself and shuts down cleanly),
    /// SIGKILL to its process group if it is still there after [`STOP_TIMEOUT`]. Idempotent.
    pub fn stop(&self) {
        drop(self.stdin.lock().unwrap().take());
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let (tx, rx) = mpsc::channel();
            let waiter = std::thread::spawn(move || {
                let status = child.wait();
                let _ = tx.send(());
                status
            });
            if rx.recv_timeout(STOP_TIMEOUT).is_err() {
                signal_group("KILL", self.pgid);
            }
            let _ = waiter.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(signal: &str, pgid: u32) {
    // std has no kill(2); /usr/bin/kill (procps) or the shell's builtin does it.
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A kube client for a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).expect("kube client")
}

/// Polls `check` every 100 ms until it returns `Ok`, at most `limit`; the last `Err` note is
/// reported on timeout. For conditions the API server reaches asynchronously (informers).
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(v) => return v,
            Err(note) => note,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {limit:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
