//! Proving, by the API server's own answer, that the admission policy confines the loader before
//! `untaint` writes to its node (`--require-admission-policy`, set by
//! `manifests/daemonset.yaml`).
//!
//! RBAC lets the loader patch every node; only the ValidatingAdmissionPolicy narrows that to its
//! own node's gate taint, labels and annotation. Whether the policy is in force for this account
//! depends on objects `untaint` never sees (the policy, its binding, the binding's param, the
//! account's name), so it asks the server: a dry-run patch of its own node that adds a label
//! outside any prefix the loader may use. A policy that confines it refuses that patch; a
//! server that accepts it would have let the loader change any node, and `untaint` stops there,
//! the taint kept. Dry run: nothing is written, whatever the answer.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

/// The label the probe asks to add: under `k8s.io`, a domain the loader's label prefix may
/// never be, so no version of the policy lets the loader write it.
pub const PROBE_LABEL: &str = "admission-probe.apparmor-profile-loader.k8s.io/dry-run";

/// The dry-run merge patch the policy must refuse.
pub fn probe_patch() -> Patch<Value> {
    Patch::Merge(json!({"metadata": {"labels": {PROBE_LABEL: "must-be-refused"}}}))
}

/// The probe is a dry run: admission judges it, nothing is persisted.
pub fn probe_params() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..Default::default()
    }
}

/// What the server's answer to the probe says.
#[derive(Debug)]
pub enum Verdict {
    /// A ValidatingAdmissionPolicy of this installation refused it (its message).
    Confined(String),
    /// The server would have written it: nothing confines the loader.
    NotConfined,
    /// Neither (the network, the server, RBAC): handled like any failed request.
    Unanswered(kube::Error),
}

/// Judges the answer to [`probe_patch`]: refused by a ValidatingAdmissionPolicy whose message
/// names the loader (403, or 422 when its binding has no param), or accepted.
pub fn verdict(answer: Result<Node, kube::Error>) -> Verdict {
    match answer {
        Ok(_) => Verdict::NotConfined,
        Err(kube::Error::Api(status))
            if matches!(status.code, 403 | 422) && is_our_policy(&status.message) =>
        {
            Verdict::Confined(status.message)
        }
        Err(e) => Verdict::Unanswered(e),
    }
}

/// Whether a denial came from this installation's admission policy: the API server names the
/// policy (`ValidatingAdmissionPolicy '<name>' with binding '<name>' denied request: …`), and
/// ours is `apparmor-profile-loader-untaint`, or that with an overlay's prefix and suffix.
fn is_our_policy(message: &str) -> bool {
    message
        .split_once("ValidatingAdmissionPolicy '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .is_some_and(|(name, _)| name.contains("apparmor-profile-loader-untaint"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, message: &str) -> kube::Error {
        let mut status = Status::failure(message, "Forbidden");
        status.code = code;
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn the_probe_is_a_dry_run_of_a_label_no_prefix_may_hold() {
        assert!(probe_params().dry_run);
        let Patch::Merge(body) = probe_patch() else {
            panic!("a merge patch")
        };
        assert_eq!(body["metadata"]["labels"][PROBE_LABEL], "must-be-refused");
        // The loader's prefix may not be k8s.io or a subdomain of it (node_labels refuses it).
        assert!(
            "apparmor-profile-loader.k8s.io"
                .parse::<crate::profile::node_labels::LabelPrefix>()
                .is_err()
        );
    }

    #[test]
    fn only_a_refusal_by_the_loaders_policy_is_confinement() {
        let ours = "nodes \"n\" is forbidden: ValidatingAdmissionPolicy \
                    'apparmor-profile-loader-untaint' with binding 'apparmor-profile-loader-untaint' \
                    denied request: apparmor-profile-loader may not change labels or annotations";
        assert!(matches!(verdict(Err(api(403, ours))), Verdict::Confined(m) if m == ours));
        let no_param = "nodes \"n\" is forbidden: ValidatingAdmissionPolicy \
                        'prod-apparmor-profile-loader-untaint' with binding \
                        'prod-apparmor-profile-loader-untaint' denied request: failed to \
                        configure binding: no params found";
        assert!(matches!(
            verdict(Err(api(422, no_param))),
            Verdict::Confined(_)
        ));
        assert!(matches!(verdict(Ok(Node::default())), Verdict::NotConfined));
        // RBAC, another project's policy, a server error: not an answer about our policy.
        for (code, message) in [
            (
                403,
                "nodes \"n\" is forbidden: User \"x\" cannot patch resource \"nodes\"",
            ),
            (
                403,
                "ValidatingAdmissionPolicy 'no-labels' with binding 'no-labels' denied request: \
                 system:serviceaccount:kube-system:apparmor-profile-loader may not label nodes",
            ),
            (
                500,
                "ValidatingAdmissionPolicy 'apparmor-profile-loader-untaint'",
            ),
        ] {
            assert!(
                matches!(verdict(Err(api(code, message))), Verdict::Unanswered(_)),
                "{code} {message}"
            );
        }
    }
}
