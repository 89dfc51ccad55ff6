//! Bringing a node to what `untaint` wants of it, through the API server: the gate taints gone
//! (a JSON Patch that `test`s each at its index, then `remove`s it), the labels and annotation
//! under the prefix in line, and the node condition set (through `nodes/status`), with re-reads
//! on conflicts and backoff on transient errors until a deadline.
//!
//! `spec.taints` is an atomic list without a merge key: a strategic-merge or merge patch
//! replaces the whole list, which is how `kubectl taint` can drop a taint another controller
//! added a moment earlier. The `test` makes a moved list fail the patch (422 or 409), and we read
//! the node again.
//!
//! A gate key is removed whatever its value and effect (a near miss gates the node just the
//! same); success therefore always means no gate key is left on the node.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint as ApiTaint};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::time::Instant;

use crate::exit_code::{self, ExitStatus};
use crate::kube::admission_probe::{self, Verdict};
use crate::kube::condition::LoadedCondition;
use crate::kube::taint::Taint;
use crate::profile::node_labels::Desired;

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
         patch on nodes, and patch on nodes/status for --node-condition (ClusterRole \
         apparmor-profile-loader; the component manifests/node-condition grants it), and the \
         admission policy only lets a pod untaint its own node"
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
    #[error(
        "gave up on node {node:?} after {timeout:?} and {attempts} attempts; last error: {last}"
    )]
    TimedOut {
        node: String,
        timeout: Duration,
        attempts: u32,
        last: String,
    },
    #[error(
        "NODE_NAME is not set: untaint needs this node's name (env NODE_NAME from the downward \
         API fieldRef spec.nodeName, or --node-name)"
    )]
    NoNodeName,
    #[error(
        "--node-condition needs --node-report: the condition's message carries the digest of \
         what load reported it loaded"
    )]
    ConditionWithoutReport,
    #[error("cannot {action}: {source}")]
    Runtime {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the admission policy does not confine this loader: the API server would have let it \
         label node {node:?} outside its prefix (a dry-run patch adding {label}), so its token \
         could change any node; nothing was written and the taint stays. Check that the \
         ValidatingAdmissionPolicy apparmor-profile-loader-untaint and its binding exist, and \
         that this pod's ServiceAccount has a name holding apparmor-profile-loader (the policy \
         judges no other account) and is the one the param ConfigMap \
         apparmor-profile-loader-config names in serviceAccountName. On a cluster \
         without the policy (Kubernetes < 1.30) set APPARMOR_LOADER_REQUIRE_ADMISSION_POLICY=false \
         (manifests/daemonset.yaml; the chart's admissionPolicy.enabled=false does it)"
    )]
    NotConfined { node: String, label: &'static str },
    #[error("stopped by {0} before the taint was removed")]
    Stopped(&'static str),
    #[error(transparent)]
    Report(crate::profile::node_labels::ReportError),
}

impl ExitStatus for UntaintError {
    fn exit_code(&self) -> u8 {
        match self {
            UntaintError::NoNodeName | UntaintError::ConditionWithoutReport => exit_code::USAGE,
            UntaintError::Runtime { .. } | UntaintError::Report(_) => exit_code::INTERNAL,
            // The API server: unreachable, refusing, or not answering before the deadline (or a
            // signal) ended the retries.
            UntaintError::Client(_)
            | UntaintError::NodeNotFound(_)
            | UntaintError::Unauthorized(_)
            | UntaintError::Forbidden { .. }
            | UntaintError::Rejected { .. }
            | UntaintError::TimedOut { .. }
            | UntaintError::NotConfined { .. }
            | UntaintError::Stopped(_) => exit_code::KUBERNETES_API,
        }
    }
}

/// What a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UntaintOutcome {
    /// The taints removed, in `KEY=VALUE:EFFECT` form; empty when none was present.
    pub removed: Vec<String>,
    /// Those of `removed` whose key is a gate key but whose value or effect differs from every
    /// `--taint` given (near misses).
    pub near_misses: Vec<String>,
    /// API requests sent (a GET and a PATCH on the happy path, one GET when already untainted).
    pub api_requests: u32,
    /// JSON Patch operations on the node's labels and annotation under the prefix (0 when they
    /// already showed what was loaded).
    pub label_ops: usize,
    /// Whether the node's status got the condition `AppArmorProfilesLoaded` (false when it
    /// already showed it, or `--node-condition` was not given).
    pub condition_written: bool,
    /// The admission policy's refusal of the probe (`--require-admission-policy`, before the
    /// first write); `None` when nothing was probed.
    pub confined_by: Option<String>,
}

/// What a run brings the node to: gate taints gone, and the labels and condition it is given.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The gate taints; every taint with one of their keys is removed.
    pub taints: &'a [Taint],
    /// The labels and annotation under the prefix.
    pub labels: Option<&'a Desired>,
    /// The node condition, written through `nodes/status`.
    pub condition: Option<&'a LoadedCondition>,
    /// Before the first write, prove that the admission policy confines the loader
    /// (`kube::admission_probe`); stop with [`UntaintError::NotConfined`] if it does not.
    pub require_admission_policy: bool,
}

/// How one failed request is handled.
enum Next {
    /// Re-read the node right away: the taint list changed under us (the status code that said
    /// so, and why).
    Reread(u16, String),
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
    run_labelled(client, node, taints, None, timeout).await
}

/// [`run`], and in the same JSON Patch brings the node's labels and annotation under the prefix
/// in line with `labels` (when given). Nothing is sent when there is nothing to change.
pub async fn run_labelled(
    client: Client,
    node: &str,
    taints: &[Taint],
    labels: Option<&Desired>,
    timeout: Duration,
) -> Result<UntaintOutcome, UntaintError> {
    let wanted = Wanted {
        taints,
        labels,
        condition: None,
        require_admission_policy: false,
    };
    run_with(client, node, &wanted, timeout).await
}

/// Brings `node` to `wanted`: the admission probe first (when required, and only when there is
/// something to write), then the condition (through `nodes/status`, when asked for and not
/// there yet), then the taints and labels in one JSON Patch. Nothing is sent for what the node
/// already shows; conflicts and transient errors are retried until `timeout` has passed.
pub async fn run_with(
    client: Client,
    node: &str,
    wanted: &Wanted<'_>,
    timeout: Duration,
) -> Result<UntaintOutcome, UntaintError> {
    let Wanted {
        taints,
        labels,
        condition,
        require_admission_policy,
    } = *wanted;
    let nodes: Api<Node> = Api::all(client);
    let deadline = Instant::now() + timeout;
    let mut outcome = UntaintOutcome::default();
    let mut attempts = 0u32;
    let mut failures = 0u32;
    // Failed `test`s in a row: the first re-read is at once (someone wrote between our GET and
    // PATCH), later ones back off, so a node some controller writes all the time is not read
    // and patched in a tight loop.
    let mut rereads = 0u32;
    let mut last = String::from("none");
    // The resourceVersion a failed patch `test` was made against, and the status the server
    // answered. If the node is unchanged when read again, the test did not fail because of a
    // concurrent update: give up, do not spin.
    let mut refused_at: Option<(Option<String>, u16)> = None;
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
            Ok(Ok(current)) => 'attempt: {
                let version = current.metadata.resource_version.clone();
                if let Some((at, code)) = refused_at.take()
                    && at.is_some()
                    && at == version
                {
                    return Err(UntaintError::Rejected {
                        action: "patch",
                        node: node.into(),
                        code,
                        message: format!(
                            "{last}; the node did not change since, so this is not a concurrent update"
                        ),
                    });
                }
                let new_condition = condition.filter(|c| !c.is_on(&current));
                let present = matching(&current, taints);
                let label_ops = labels.map(|d| d.patch_ops(&current)).unwrap_or_default();
                if new_condition.is_none() && present.is_empty() && label_ops.is_empty() {
                    return Ok(outcome);
                }
                if require_admission_policy && outcome.confined_by.is_none() {
                    outcome.api_requests += 1;
                    let (params, probe) = (
                        admission_probe::probe_params(),
                        admission_probe::probe_patch(),
                    );
                    let sent = nodes.patch(node, &params, &probe);
                    match tokio::time::timeout_at(deadline, sent).await {
                        Err(_) => {
                            break 'attempt Next::Retry(
                                "the dry-run PATCH (admission probe) timed out".into(),
                                Duration::ZERO,
                            );
                        }
                        Ok(answer) => match admission_probe::verdict(answer) {
                            Verdict::Confined(message) => {
                                tracing::info!(
                                    "the admission policy confines this loader: it refused a \
                                     dry-run label outside its prefix ({message})"
                                );
                                outcome.confined_by = Some(message);
                            }
                            Verdict::NotConfined => {
                                break 'attempt Next::Fail(UntaintError::NotConfined {
                                    node: node.into(),
                                    label: admission_probe::PROBE_LABEL,
                                });
                            }
                            Verdict::Unanswered(e) => {
                                break 'attempt classify(
                                    e,
                                    "dry-run patch (admission probe)",
                                    node,
                                );
                            }
                        },
                    }
                }
                if let Some(c) = new_condition {
                    outcome.api_requests += 1;
                    let body = c.status_patch(&current, &now_rfc3339());
                    let params = PatchParams::default();
                    let body = Patch::Strategic(body);
                    let sent = nodes.patch_status(node, &params, &body);
                    match tokio::time::timeout_at(deadline, sent).await {
                        Err(_) => {
                            break 'attempt Next::Retry(
                                "PATCH of the status timed out".into(),
                                Duration::ZERO,
                            );
                        }
                        Ok(Err(e)) => break 'attempt classify(e, "patch the status of", node),
                        Ok(Ok(_)) => outcome.condition_written = true,
                    }
                }
                if present.is_empty() && label_ops.is_empty() {
                    return Ok(outcome);
                }
                outcome.api_requests += 1;
                let mut ops = removal_ops(&present);
                let n_label_ops = label_ops.len();
                ops.extend(label_ops);
                let patch = Patch::Json::<()>(
                    serde_json::from_value(serde_json::Value::Array(ops))
                        .expect("valid JSON Patch operations"),
                );
                let params = PatchParams::default();
                let sent = nodes.patch(node, &params, &patch);
                match tokio::time::timeout_at(deadline, sent).await {
                    Err(_) => Next::Retry("PATCH timed out".into(), Duration::ZERO),
                    Ok(Err(e)) => {
                        let next = classify(e, "patch", node);
                        if let Next::Reread(code, _) = next {
                            refused_at = Some((version, code));
                        }
                        next
                    }
                    Ok(Ok(_)) => {
                        outcome.label_ops = n_label_ops;
                        outcome.removed = present.iter().map(|(_, t)| taint_text(t)).collect();
                        outcome.near_misses = present
                            .iter()
                            .filter(|(_, t)| !taints.iter().any(|w| w.matches(t)))
                            .map(|(_, t)| taint_text(t))
                            .collect();
                        return Ok(outcome);
                    }
                }
            }
        };
        match next {
            Next::Fail(e) => return Err(e),
            Next::Reread(_, why) => {
                let pause = match rereads {
                    0 => Duration::ZERO,
                    n => backoff(n - 1),
                };
                rereads += 1;
                tracing::info!(
                    attempt = attempts,
                    retry_in_ms = pause.as_millis() as u64,
                    "taints changed while we patched ({why}); reading the node again"
                );
                last = why;
                tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
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

/// Now, as the API server writes times (RFC 3339, seconds, UTC).
fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now().to_string())
}

/// The taints present on the node whose key is a gate key (whatever their value and effect),
/// with their index in `spec.taints`.
fn matching(node: &Node, wanted: &[Taint]) -> Vec<(usize, ApiTaint)> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|taints| {
            taints
                .iter()
                .enumerate()
                .filter(|(_, t)| wanted.iter().any(|w| w.key == t.key))
                .map(|(i, t)| (i, t.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// `test` + `remove` per taint, highest index first so earlier removals do not shift later ones.
fn removal_ops(present: &[(usize, ApiTaint)]) -> Vec<serde_json::Value> {
    let mut ops = Vec::new();
    for (index, taint) in present.iter().rev() {
        let path = format!("/spec/taints/{index}");
        ops.push(serde_json::json!({"op": "test", "path": path, "value": taint}));
        ops.push(serde_json::json!({"op": "remove", "path": path}));
    }
    ops
}

/// A taint in the `kubectl taint` form `KEY[=VALUE]:EFFECT`, for logs.
fn taint_text(t: &ApiTaint) -> String {
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
                409 => Next::Reread(409, format!("409 conflict: {message}")),
                // A failed JSON Patch `test` (or a `remove` of an index that no longer exists)
                // is a bare 422 Invalid: the API server drops the patch library's message and
                // sends no causes. A validation or admission denial names its causes or the
                // policy; those are final.
                422 if is_bare_invalid(&status) => Next::Reread(
                    422,
                    format!("422, our JSON Patch test no longer matched: {message}"),
                ),
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

    /// The spec, in numbers rather than the formula: the first pause is 125–250 ms, each
    /// failure doubles the range, pauses never exceed 10 s, the jitter spreads each pause over
    /// the upper half of its range, and the default 5-minute timeout leaves room for at least
    /// 30 attempts.
    #[test]
    fn backoff_follows_the_spec_bounds() {
        let ms = Duration::from_millis;
        let spec = [
            (0, ms(125), ms(250)),
            (1, ms(250), ms(500)),
            (2, ms(500), ms(1000)),
            (3, ms(1000), ms(2000)),
            (4, ms(2000), ms(4000)),
            (5, ms(4000), ms(8000)),
            (6, ms(5000), ms(10_000)),
            (7, ms(5000), ms(10_000)),
            (20, ms(5000), ms(10_000)),
            (u32::MAX, ms(5000), ms(10_000)),
        ];
        for (failures, low, high) in spec {
            for _ in 0..50 {
                let b = backoff(failures);
                assert!(low <= b && b <= high, "{failures} failures: {b:?}");
            }
        }
        // Jittered: two nodes failing together do not retry together. Over 200 draws both
        // halves of the range are hit (all in one half: chance 2^-199).
        let draws: Vec<Duration> = (0..200).map(|_| backoff(5)).collect();
        assert!(draws.iter().any(|d| *d < ms(6000)), "{draws:?}");
        assert!(draws.iter().any(|d| *d >= ms(6000)), "{draws:?}");
        // Total: 30 pauses fit in the default 5-minute timeout, so a node retries at least 30
        // times before it gives up (and waits long enough not to hammer the server).
        let total: Duration = (0..30).map(backoff).sum();
        assert!(
            Duration::from_secs(100) < total && total < Duration::from_secs(300),
            "{total:?}"
        );
    }

    #[test]
    fn patch_tests_then_removes_from_the_end() {
        let t = |k: &str| ApiTaint {
            key: k.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let ops = removal_ops(&[(1, t("a")), (3, t("b"))]);
        // A valid JSON Patch, as the request sends it.
        serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops.clone())).unwrap();
        assert_eq!(
            serde_json::Value::Array(ops),
            serde_json::json!([
                {"op": "test", "path": "/spec/taints/3", "value": {"key": "b", "value": "true", "effect": "NoSchedule"}},
                {"op": "remove", "path": "/spec/taints/3"},
                {"op": "test", "path": "/spec/taints/1", "value": {"key": "a", "value": "true", "effect": "NoSchedule"}},
                {"op": "remove", "path": "/spec/taints/1"},
            ])
        );
    }
}
