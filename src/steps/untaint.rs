//! `untaint`: removes the gate taint from this pod's own node, and nothing else; with
//! `--node-report` it labels the node with what `load` proved loaded, and with `--node-condition`
//! it also sets the node condition `AppArmorProfilesLoaded` (`kube::condition`), through
//! `nodes/status`, before the taint goes: a gate that waits for the condition (the
//! node-readiness-controller) and the taint lift on the same proof.
//!
//! This module reads the options and the report, runs `kube::node_update` under a deadline and
//! the signals, and logs the summary; the requests, retries and patches are in `kube/`.

use std::time::Duration;

use crate::kube::condition::LoadedCondition;
use crate::kube::taint::Taint;
use crate::profile::node_labels::{Desired, LabelPrefix, NodeReport};

pub use crate::kube::client::client;
pub use crate::kube::node_update::{
    UntaintError, UntaintOutcome, Wanted, run, run_labelled, run_with,
};

/// What the `untaint` step needs, whoever parsed it (`app` builds it from the arguments).
#[derive(Debug, Clone)]
pub struct UntaintOptions {
    /// This pod's node (`NODE_NAME`, from the downward API); unset or empty is an error.
    pub node: Option<String>,
    /// The gate taints; every taint with one of their keys is removed.
    pub taints: Vec<Taint>,
    /// A kubeconfig instead of the in-cluster service account.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Give up after this long.
    pub timeout: Duration,
    /// `load`'s report; when set, the node's labels follow it in the same patch.
    pub node_report: Option<std::path::PathBuf>,
    /// Prefix of the node labels and annotation.
    pub label_prefix: LabelPrefix,
    /// Also set the node condition `AppArmorProfilesLoaded` (needs `node_report`).
    pub node_condition: bool,
}

/// The `untaint` step as the init container runs it: a current-thread runtime, the removal
/// bounded by `--timeout`, and ended early (exit 6) by SIGTERM or SIGINT so a stopping pod
/// never reports success. Logs the summary line.
pub fn run_step(args: UntaintOptions) -> Result<UntaintOutcome, UntaintError> {
    use tokio::signal::unix::{SignalKind, signal};
    let node = args
        .node
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or(UntaintError::NoNodeName)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| UntaintError::Runtime {
            action: "start the runtime",
            source,
        })?;
    let report = match &args.node_report {
        Some(path) => Some(NodeReport::load(path).map_err(UntaintError::Report)?),
        None => None,
    };
    let desired = report
        .as_ref()
        .map(|r| desired_labels(args.label_prefix.clone(), r));
    let condition = match (&report, args.node_condition) {
        (_, false) => None,
        (Some(r), true) => Some(LoadedCondition::from_report(r)),
        (None, true) => return Err(UntaintError::ConditionWithoutReport),
    };
    let wanted = Wanted {
        taints: &args.taints,
        labels: desired.as_ref(),
        condition: condition.as_ref(),
    };
    let outcome = runtime.block_on(async {
        let client = client(args.kubeconfig.as_deref()).await?;
        let mut term = signal(SignalKind::terminate()).map_err(|source| UntaintError::Runtime {
            action: "handle SIGTERM",
            source,
        })?;
        let mut int = signal(SignalKind::interrupt()).map_err(|source| UntaintError::Runtime {
            action: "handle SIGINT",
            source,
        })?;
        tokio::select! {
            r = run_with(client, &node, &wanted, args.timeout) => r,
            _ = term.recv() => Err(UntaintError::Stopped("SIGTERM")),
            _ = int.recv() => Err(UntaintError::Stopped("SIGINT")),
        }
    })?;
    log_outcome(&node, &outcome, desired.as_ref());
    Ok(outcome)
}

/// The node labels `load`'s report asks for; warns about the profiles whose name cannot be a
/// label.
fn desired_labels(prefix: LabelPrefix, report: &NodeReport) -> Desired {
    let desired = Desired::from_report(prefix, report);
    for name in &desired.unlabelled {
        tracing::warn!(profile = %name,
            "profile {name:?} cannot be a node label name (at most 63 letters, digits, \
             '-', '_' or '.'); it is listed in the annotation {} only",
            desired.prefix.annotation_key());
    }
    desired
}

/// The summary line of a run, and a warning per near miss removed.
fn log_outcome(node: &str, outcome: &UntaintOutcome, desired: Option<&Desired>) {
    for near in &outcome.near_misses {
        tracing::warn!(
            taint = %near,
            "removed {near}: its key is a gate key but its value or effect is not one of the \
             --taint values; whoever set it gated this node the same way"
        );
    }
    let labels = match (desired, outcome.label_ops) {
        (None, _) => String::new(),
        (Some(d), 0) => format!("; labels under {}/ already up to date", d.prefix),
        (Some(d), n) => format!(
            "; {n} change(s) to the labels and annotation under {}/",
            d.prefix
        ),
    };
    let condition = if outcome.condition_written {
        format!("; condition {} set", crate::kube::condition::CONDITION_TYPE)
    } else {
        String::new()
    };
    let labels = labels + &condition;
    let nothing = if outcome.label_ops == 0 && !outcome.condition_written {
        ", nothing to do"
    } else {
        ""
    };
    if outcome.removed.is_empty() {
        tracing::info!(api_requests = outcome.api_requests, removed = ?outcome.removed,
              label_ops = outcome.label_ops,
              "untaint complete: no gate taint on node {node}{labels}{nothing}");
    } else {
        tracing::info!(api_requests = outcome.api_requests, removed = ?outcome.removed,
              label_ops = outcome.label_ops,
              "untaint complete: removed {} from node {node}{labels}", outcome.removed.join(", "));
    }
}
