//! `untaint`: removes the gate taint from this pod's own node, and nothing else; with
//! `--node-report` it labels the node with what `load` proved loaded, and with `--node-condition`
//! it also sets the node condition `AppArmorProfilesLoaded` (`kube::condition`), through
//! `nodes/status`, before the taint goes: a gate that waits for the condition (the
//! node-readiness-controller) and the taint lift on the same proof. With
//! `--require-admission-policy` it first proves that the admission policy confines it
//! (`kube::admission_probe`).
//!
//! This module reads the options and the report and runs `kube::node_update` under a deadline
//! and the signals; the requests, retries and patches are in `kube/`, the summary line in `app`.

use std::time::Duration;

use crate::kube::condition::LoadedCondition;
use crate::kube::taint::Taint;
use crate::profile::node_labels::{Desired, LabelPrefix, NodeReport};

use crate::kube::client::client;
pub use crate::kube::node_update::{UntaintError, UntaintOutcome};
use crate::kube::node_update::{Wanted, run_with};

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
    /// Before writing, prove by a dry run that the admission policy confines the loader.
    pub require_admission_policy: bool,
}

/// What a run did, for the summary line `app` logs.
#[derive(Debug)]
pub struct UntaintReport {
    pub node: String,
    pub outcome: UntaintOutcome,
    /// The prefix of the labels it kept in line (`--node-report` given).
    pub labelled_under: Option<LabelPrefix>,
}

/// The `untaint` step as the init container runs it: a current-thread runtime, the removal
/// bounded by `--timeout`, and ended early (exit 6) by SIGTERM or SIGINT so a stopping pod
/// never reports success.
pub fn run(args: &UntaintOptions) -> Result<UntaintReport, UntaintError> {
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
        require_admission_policy: args.require_admission_policy,
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
    Ok(UntaintReport {
        node,
        outcome,
        labelled_under: desired.map(|d| d.prefix),
    })
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
