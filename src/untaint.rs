//! `untaint`: removes the gate taint from this pod's own node, and nothing else.
//!
//! `spec.taints` is an atomic list without a merge key: a strategic-merge or merge patch
//! replaces the whole list, which is how `kubectl taint` can drop a taint another controller
//! added a moment earlier. We send a JSON Patch that first `test`s each gate taint at its index
//! (exactly as we read it) and then `remove`s it. If the list moved meanwhile the test fails,
//! the server answers 422 (or 409), and we read the node again.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint as ApiTaint};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::time::Instant;

use crate::exit_code::{self, ExitStatus};
use crate::taint::Taint;

/// First pause after a transient error; doubles up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum UntaintError {
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
    #[error(
        "node {0:?} does not exist (404). NODE_NAME must be the pod's spec.nodeName (downward API)"
    )]
    NodeNotFound(String),
    #[error(
        "the API server rejected our credentials (401): {0}. The service-account token is \
         missing, expired or not trusted; check the projected token volume of the untaint container"
    )]
    Unauthorized(String),
    #[error(
        "forbidden (403) to {action} node {node:?}: {message}. The service account needs get and \
         patch on nodes (ClusterRole apparmor-profile-loader), and the admission policy only lets \
         a pod untaint its own node"
    )]
    Forbidden {
        action: &'static str,
        node: String,
        message: String,
    },
    #[error("the API server refused to {action} node {node:?} ({code}): {message}")]
    Rejected {
        action: &'static str,
        node: String,
        code: u16,
        message: String,
    },
    #[error("stopped by {0} before the taint was removed")]
    Stopped(&'static str),
    #[error(
        "gave up on node {node:?} after {timeout:?} and {attempts} attempts; last error: {last}"
    )]
    TimedOut {
        node: String,
        timeout: Duration,
        attempts: u32,
        last: String,
    },
}

impl ExitStatus for UntaintError {
    fn exit_code(&self) -> u8 {
        exit_code::KUBERNETES_API
    }
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UntaintOutcome {
    /// The taints removed, in `KEY=VALUE:EFFECT` form; empty when none was present.
    pub removed: Vec<String>,
    /// API requests sent (a GET and a PATCH on the happy path, one GET when already untainted).
    pub api_requests: u32,
}

/// Builds a client from an explicit kubeconfig (tests, debugging) or the in-cluster config
/// (the projected service-account token at the standard path).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, UntaintError> {
    let err = |e: &dyn std::fmt::Display| UntaintError::Client(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => Config::infer().await.map_err(|e| err(&e))?,
    };
    Client::try_from(config).map_err(|e| err(&e))
}

/// How one failed request is handled.
enum Next {
    /// Re-read the node right away: the taint list changed under us.
    Reread(String),
    /// Back off (at least as long as the server asked), then try again: the server or network
    /// is having a moment.
    Retry(String, Duration),
    Fail(UntaintError),
}

/// Removes every listed taint present on `node`, retrying conflicts and transient errors until
/// `timeout` has passed.
pub async fn run(
    client: Client,
    node: &str,
    taints: &[Taint],
    timeout: Duration,
) -> Result<UntaintOutcome, UntaintError> {
    let nodes: Api<Node> = Api::all(client);
    let deadline = Instant::now() + timeout;
    let mut outcome = UntaintOutcome::default();
    let mut attempts = 0u32;
    let mut failures = 0u32;
    let mut last = String::from("none");
    // The resourceVersion a failed patch `test` was made against. If the node is unchanged when
    // read again, the test did not fail because of a concurrent update: give up, do not spin.
    let mut refused_at: Option<String> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(UntaintError::TimedOut {
                node: node.into(),
                timeout,
                attempts,
                last,
            });
        }
        attempts += 1;
        outcome.api_requests += 1;
        let next = match tokio::time::timeout_at(deadline, nodes.get(node)).await {
            Err(_) => Next::Retry("GET timed out".into(), Duration::ZERO),
            Ok(Err(e)) => classify(e, "get", node),
            Ok(Ok(current)) => {
                let version = current.metadata.resource_version.clone();
                if refused_at.is_some() && refused_at == version {
                    return Err(UntaintError::Rejected {
                        action: "patch",
                        node: node.into(),
                        code: 422,
                        message: format!(
                            "{last}; the node did not change since, so this is not a concurrent update"
                        ),
                    });
                }
                refused_at = None;
                let present = matching(&current, taints);
                if present.is_empty() {
                    return Ok(outcome);
                }
                outcome.api_requests += 1;
                let patch = Patch::Json::<()>(removal_patch(&present));
                let params = PatchParams::default();
                let sent = nodes.patch(node, &params, &patch);
                match tokio::time::timeout_at(deadline, sent).await {
                    Err(_) => Next::Retry("PATCH timed out".into(), Duration::ZERO),
                    Ok(Err(e)) => {
                        let next = classify(e, "patch", node);
                        if matches!(next, Next::Reread(_)) {
                            refused_at = version;
                        }
                        next
                    }
                    Ok(Ok(_)) => {
                        outcome.removed = present.iter().map(|(_, t)| describe(t)).collect();
                        return Ok(outcome);
                    }
                }
            }
        };
        match next {
            Next::Fail(e) => return Err(e),
            Next::Reread(why) => {
                tracing::info!(
                    attempt = attempts,
                    "taints changed while we patched ({why}); reading the node again"
                );
                last = why;
            }
            Next::Retry(why, at_least) => {
                let pause = backoff(failures).max(at_least);
                failures += 1;
                tracing::warn!(
                    attempt = attempts,
                    retry_in_ms = pause.as_millis() as u64,
                    "transient error: {why}"
                );
                last = why;
                tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
            }
        }
    }
}

/// The gate taints present on the node, with their index in `spec.taints`.
fn matching(node: &Node, wanted: &[Taint]) -> Vec<(usize, ApiTaint)> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|taints| {
            taints
                .iter()
                .enumerate()
                .filter(|(_, t)| wanted.iter().any(|w| w.matches(t)))
                .map(|(i, t)| (i, t.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `test` + `remove` per taint, highest index first so earlier removals do not shift later ones.
pub fn removal_patch(present: &[(usize, ApiTaint)]) -> json_patch::Patch {
    let mut ops = Vec::new();
    for (index, taint) in present.iter().rev() {
        let path = format!("/spec/taints/{index}");
        ops.push(serde_json::json!({"op": "test", "path": path, "value": taint}));
        ops.push(serde_json::json!({"op": "remove", "path": path}));
    }
    serde_json::from_value(serde_json::Value::Array(ops)).expect("valid JSON Patch operations")
}

fn describe(t: &ApiTaint) -> String {
    match &t.value {
        Some(v) => format!("{}={}:{}", t.key, v, t.effect),
        None => format!("{}:{}", t.key, t.effect),
    }
}

/// Sorts an API error into re-read, retry later, or give up with a message that says what to fix.
fn classify(error: kube::Error, action: &'static str, node: &str) -> Next {
    match error {
        kube::Error::Api(status) => {
            let message = status.message.clone();
            match status.code {
                404 => Next::Fail(UntaintError::NodeNotFound(node.into())),
                401 => Next::Fail(UntaintError::Unauthorized(message)),
                403 => Next::Fail(UntaintError::Forbidden {
                    action,
                    node: node.into(),
                    message,
                }),
                409 => Next::Reread(format!("409 conflict: {message}")),
                // A failed JSON Patch `test` (or a `remove` of an index that no longer exists)
                // is a bare 422 Invalid: the API server drops the patch library's message and
                // sends no causes. A validation or admission denial names its causes or the
                // policy; those are final.
                422 if is_bare_invalid(&status) => Next::Reread(format!(
                    "422, our JSON Patch test no longer matched: {message}"
                )),
                429 | 500..=599 => {
                    let asked = status.details.as_ref().map_or(0, |d| d.retry_after_seconds);
                    Next::Retry(
                        format!("{}: {message}", status.code),
                        Duration::from_secs(asked.into()),
                    )
                }
                code => Next::Fail(UntaintError::Rejected {
                    action,
                    node: node.into(),
                    code,
                    message,
                }),
            }
        }
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
            Next::Retry(e.to_string(), Duration::ZERO)
        }
        e => Next::Fail(UntaintError::Client(e.to_string())),
    }
}

/// Whether a 422 is the API server's bare answer to a JSON Patch whose `test` failed.
fn is_bare_invalid(status: &kube::core::Status) -> bool {
    status.reason == "Invalid"
        && !status.message.contains("ValidatingAdmissionPolicy")
        && status.details.as_ref().is_none_or(|d| d.causes.is_empty())
}

/// Exponential backoff with jitter: between half and all of `BASE * 2^failures`, capped, so
/// the nodes of a freshly scaled pool do not retry against the API server in lockstep.
fn backoff(failures: u32) -> Duration {
    let full = BASE_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF);
    let jitter = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = full / 2;
    half + Duration::from_nanos(jitter % (half.as_nanos() as u64 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        for failures in 0..40 {
            let full = BASE_BACKOFF
                .saturating_mul(2u32.saturating_pow(failures.min(16)))
                .min(MAX_BACKOFF);
            let b = backoff(failures);
            assert!(b >= full / 2 && b <= full, "{failures}: {b:?}");
        }
        assert!(backoff(0) <= Duration::from_millis(250));
        assert!(backoff(30) >= Duration::from_secs(5));
    }

    #[test]
    fn patch_tests_then_removes_from_the_end() {
        let t = |k: &str| ApiTaint {
            key: k.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let patch = removal_patch(&[(1, t("a")), (3, t("b"))]);
        let json = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"op": "test", "path": "/spec/taints/3", "value": {"key": "b", "value": "true", "effect": "NoSchedule"}},
                {"op": "remove", "path": "/spec/taints/3"},
                {"op": "test", "path": "/spec/taints/1", "value": {"key": "a", "value": "true", "effect": "NoSchedule"}},
                {"op": "remove", "path": "/spec/taints/1"},
            ])
        );
    }
}
