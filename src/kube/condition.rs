//! The node condition `AppArmorProfilesLoaded`: what a readiness gate that is not a taint of
//! ours (the node-readiness-controller's `NodeReadinessRule`) waits for.
//!
//! `untaint` writes it through `nodes/status` with a strategic-merge patch, whose merge key for
//! `status.conditions` is `type`: the kubelet's own conditions (Ready, MemoryPressure, …) and
//! those of other agents stay as they are, whatever they write meanwhile. The admission policy
//! lets the loader change this one condition type of its own node and nothing else in its
//! status.

use crate::profile::node_labels::NodeReport;
use crate::profile::source::sha256_hex;
use k8s_openapi::api::core::v1::Node;

/// The condition's type. Fixed, so that the admission policy and a `NodeReadinessRule` can name
/// it without reading our configuration.
pub const CONDITION_TYPE: &str = "AppArmorProfilesLoaded";

/// The reason it carries when `True`.
pub const REASON: &str = "ProfilesLoaded";

/// The condition this node should carry: `True`, with the loaded set's digest in its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCondition {
    pub message: String,
}

impl LoadedCondition {
    /// The condition for what `load` proved loaded. The message names how many profiles and a
    /// digest of the whole set (each profile's name and file digest, in name order), so two
    /// nodes with the same message enforce the same files; every profile's own digest is in the
    /// node's annotation.
    pub fn from_report(report: &NodeReport) -> Self {
        let lines: String = report
            .profiles
            .iter()
            .map(|(name, digest)| format!("{name}\t{digest}\n"))
            .collect();
        let n = report.profiles.len();
        let message = format!(
            "{n} AppArmor profile{} loaded and proven in the kernel by apparmor-profile-loader {}; set sha256:{}",
            if n == 1 { "" } else { "s" },
            report.loader,
            sha256_hex(lines.as_bytes())
        );
        LoadedCondition { message }
    }

    /// Whether `node` already carries this condition: type, status `True`, reason and message
    /// equal (heartbeat and transition times are not compared, so a re-run writes nothing).
    pub fn is_on(&self, node: &Node) -> bool {
        current(node).is_some_and(|c| {
            c.status == "True"
                && c.reason.as_deref() == Some(REASON)
                && c.message.as_deref() == Some(self.message.as_str())
        })
    }

    /// The strategic-merge patch of `nodes/status` that sets it at `now` (RFC 3339). The
    /// transition time moves only when the status changes from what `node` shows.
    pub fn status_patch(&self, node: &Node, now: &str) -> serde_json::Value {
        let transition = current(node)
            .filter(|c| c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| serde_json::Value::String(now.to_string()));
        serde_json::json!({
            "status": {
                "conditions": [{
                    "type": CONDITION_TYPE,
                    "status": "True",
                    "reason": REASON,
                    "message": self.message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": transition,
                }]
            }
        })
    }
}

fn current(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(profiles: &[(&str, &str)]) -> NodeReport {
        NodeReport {
            loader: "0.1.0".into(),
            profiles: profiles
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
            ..NodeReport::default()
        }
    }

    fn node(conditions: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn the_message_is_the_sets_digest_and_changes_with_any_file() {
        let a = LoadedCondition::from_report(&report(&[("a", "sha256:01"), ("b", "sha256:02")]));
        assert_eq!(
            a.message,
            format!(
                "2 AppArmor profiles loaded and proven in the kernel by apparmor-profile-loader \
                 0.1.0; set sha256:{}",
                sha256_hex(b"a\tsha256:01\nb\tsha256:02\n")
            )
        );
        let changed =
            LoadedCondition::from_report(&report(&[("a", "sha256:01"), ("b", "sha256:03")]));
        let renamed =
            LoadedCondition::from_report(&report(&[("a", "sha256:01"), ("c", "sha256:02")]));
        assert_ne!(a, changed);
        assert_ne!(a, renamed);
        assert_ne!(changed, renamed);
        let one = LoadedCondition::from_report(&report(&[("a", "sha256:01")]));
        assert!(
            one.message.starts_with("1 AppArmor profile loaded"),
            "{}",
            one.message
        );
    }

    #[test]
    fn on_only_when_true_with_this_message() {
        let c = LoadedCondition::from_report(&report(&[("a", "sha256:01")]));
        let with = |status: &str, message: &str| {
            node(serde_json::json!([
                {"type": "Ready", "status": "True"},
                {"type": CONDITION_TYPE, "status": status, "reason": REASON, "message": message,
                 "lastTransitionTime": "2026-12-01T00:00:00Z"},
            ]))
        };
        assert!(c.is_on(&with("True", &c.message)));
        assert!(!c.is_on(&with("False", &c.message)));
        assert!(!c.is_on(&with("True", "another set")));
        assert!(!c.is_on(&node(
            serde_json::json!([{"type": "Ready", "status": "True"}])
        )));
        assert!(!c.is_on(&Node::default()));
    }

    #[test]
    fn the_patch_sets_only_our_type_and_keeps_the_transition_while_true() {
        let c = LoadedCondition::from_report(&report(&[("a", "sha256:01")]));
        let now = "2026-12-06T10:00:00Z";
        let fresh = c.status_patch(&Node::default(), now);
        assert_eq!(
            fresh,
            serde_json::json!({"status": {"conditions": [{
                "type": "AppArmorProfilesLoaded", "status": "True", "reason": "ProfilesLoaded",
                "message": c.message, "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})
        );
        let was_true = node(
            serde_json::json!([{"type": CONDITION_TYPE, "status": "True",
            "message": "older set", "lastTransitionTime": "2026-12-01T00:00:00Z"}]),
        );
        assert_eq!(
            c.status_patch(&was_true, now)["status"]["conditions"][0]["lastTransitionTime"],
            "2026-12-01T00:00:00Z"
        );
        let was_false = node(
            serde_json::json!([{"type": CONDITION_TYPE, "status": "False",
            "lastTransitionTime": "2026-12-01T00:00:00Z"}]),
        );
        assert_eq!(
            c.status_patch(&was_false, now)["status"]["conditions"][0]["lastTransitionTime"],
            now
        );
    }
}
