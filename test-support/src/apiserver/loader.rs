//! Running `untaint`: the built binary as the DaemonSet runs it, and the library through a client
//! whose requests pass through the test.

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::NS;

/// How one run of the binary ended: exit code, its stderr (JSON log lines), wall time.
pub struct LoaderRun {
    pub code: Option<i32>,
    pub stderr: String,
    pub wall: Duration,
}

impl LoaderRun {
    /// The last JSON log line.
    pub fn last_json(&self) -> Value {
        self.stderr
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| panic!("no JSON log line in:\n{}", self.stderr))
    }

    pub fn field(&self, name: &str) -> Value {
        let line = self.last_json();
        line.get("fields")
            .and_then(|f| f.get(name))
            .or_else(|| line.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    }
}

/// `apparmor-loader --log-format json untaint --node-name NODE --kubeconfig FILE`, with no
/// loader settings inherited from the environment.
pub fn run_untaint(kubeconfig: &Path, node: &str) -> LoaderRun {
    run_untaint_with(kubeconfig, node, &[])
}

/// [`run_untaint`] with extra arguments (e.g. `--node-report FILE`).
pub fn run_untaint_with(kubeconfig: &Path, node: &str, extra: &[&str]) -> LoaderRun {
    let mut cmd = Command::new(crate::loader_exe());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("APPARMOR_LOADER_") || k == "NODE_NAME" || k == "KUBECONFIG" {
            cmd.env_remove(&*k);
        }
    }
    cmd.args([
        "--log-format",
        "json",
        "untaint",
        "--node-name",
        node,
        "--kubeconfig",
    ])
    .arg(kubeconfig)
    .args(["--timeout", "60s"])
    .args(extra);
    let started = Instant::now();
    let out = cmd.output().expect("run apparmor-loader");
    let run = LoaderRun {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        wall: started.elapsed(),
    };
    eprintln!(
        "untaint --node-name {node}: exit {:?}, wall {:.1?} (process start to exit)",
        run.code, run.wall
    );
    run
}

// ---------------------------------------------------------------------------------------------
// a client whose requests pass through the test (tower-test mock as a proxy)

/// One request the library sent: method, path, status (0: no response) and, for errors, the
/// response body.
pub type Exchange = (String, String, u16, String);

/// A client for `node_update::run` that forwards every request to `real` and records what went
/// through. `after_first_get` runs once, after the first GET's response arrived and before the
/// library sees it (i.e. between its GET and its PATCH).
pub fn proxied_client<F, Fut>(
    real: kube::Client,
    after_first_get: F,
) -> (kube::Client, Arc<Mutex<Vec<Exchange>>>)
where
    F: FnOnce() -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    type Req = http::Request<kube::client::Body>;
    type Resp = http::Response<kube::client::Body>;
    let (service, mut handle) = tower_test::mock::pair::<Req, Resp>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let mut hook = Some(after_first_get);
    // The hook need not be Send: the proxy runs on the test's LocalSet (see run_local).
    tokio::task::spawn_local(async move {
        while let Some((req, respond)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let resp = match real.send(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    seen.lock().unwrap().push((method, path, 0, e.to_string()));
                    respond.send_error(e);
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let resp = if resp.status().is_success() {
                seen.lock()
                    .unwrap()
                    .push((method.clone(), path, status, String::new()));
                resp
            } else {
                let (parts, body) = resp.into_parts();
                let bytes = body
                    .collect_bytes()
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                seen.lock()
                    .unwrap()
                    .push((method.clone(), path, status, text));
                http::Response::from_parts(parts, kube::client::Body::from(bytes))
            };
            if method == "GET"
                && let Some(hook) = hook.take()
            {
                hook().await;
            }
            respond.send_response(resp);
        }
    });
    (kube::Client::new(service, NS), log)
}
