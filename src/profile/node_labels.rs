//! What a node tells the scheduler and the operator about the profiles it enforces: one label per
//! profile `load` loaded (`<prefix>/<profile>` = a short digest of the file it came from), and one
//! annotation (`<prefix>/profiles`) with every profile's full digest, the retired ones and the
//! loader's version.
//!
//! `load` writes what it loaded to a pod-local file (the [`NodeReport`]); `untaint`, which has no
//! host mount, reads it and brings the node's labels and annotation in line in the same JSON
//! Patch that removes the gate taint. A workload that selects `<prefix>/<profile>` therefore never
//! lands on a node before its profile is loaded, with or without a taint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

use crate::host::host_file;
use crate::profile;
use crate::profile::names::ProfileName;

/// The default label prefix.
pub const DEFAULT_PREFIX: &str = "apparmor-profile-loader";

/// Characters of a profile file's digest a label carries: enough to tell versions apart during
/// a rollout, short enough to read in `kubectl get nodes -L`.
const LABEL_DIGEST_LEN: usize = 12;

/// The annotation's name under the prefix.
const ANNOTATION_NAME: &str = "profiles";

/// The most bytes our annotation (its key and value) may take on a node: half of what the API
/// server allows all of an object's annotations together (256 KiB, `TotalAnnotationSizeLimitB`
/// in apimachinery), so the node's other annotations keep the rest. A set whose annotation
/// would not fit is refused where it enters (`validate`, `copy`, `load`): `untaint` could never
/// write it, and every new node would stay tainted.
pub const ANNOTATION_BUDGET: usize = 128 * 1024;

/// The most characters of the node's release the report carries ([`NodeReport::with_node_os`]);
/// the annotation's size is counted as if it had that many, so `copy`'s check of a set and
/// `load`'s agree.
const NODE_OS_MAX: usize = 128;

/// The longest label prefix (a DNS subdomain), which the annotation's key is counted with:
/// the steps that check the budget do not know the prefix `untaint` will be given.
const MAX_PREFIX_LEN: usize = 253;

/// Domains whose labels belong to Kubernetes or AKS (`kubernetes.io/hostname`,
/// `node.kubernetes.io/instance-type`, `node-restriction.kubernetes.io/…`,
/// `kubernetes.azure.com/agentpool`): a prefix equal to one or under one is refused, since
/// `untaint` owns what is under its prefix.
const RESERVED_DOMAINS: [&str; 3] = ["kubernetes.io", "k8s.io", "kubernetes.azure.com"];

/// A label prefix (a DNS subdomain, as Kubernetes requires of the part before `/`), validated
/// where it enters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelPrefix(String);

impl std::str::FromStr for LabelPrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !(s.len() <= 253 && s.split('.').all(label_ok)) {
            return Err(format!(
                "invalid label prefix {s:?}: a DNS subdomain is expected (lowercase letters, \
                 digits, '-' and '.', each dot-separated part 1 to 63 characters, at most 253 in \
                 all), e.g. {DEFAULT_PREFIX}"
            ));
        }
        let reserved = RESERVED_DOMAINS
            .iter()
            .find(|d| s == **d || s.strip_suffix(**d).is_some_and(|r| r.ends_with('.')));
        if let Some(domain) = reserved {
            return Err(format!(
                "label prefix {s:?} is refused: {domain} and its subdomains are reserved for the \
                 labels of Kubernetes and AKS (kubernetes.io/hostname, kubernetes.azure.com/\
                 agentpool, ...), and untaint would take labels under its prefix for its own; \
                 choose a domain of yours, e.g. {DEFAULT_PREFIX} or profiles.example.com"
            ));
        }
        Ok(LabelPrefix(s.to_string()))
    }
}

impl std::fmt::Display for LabelPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl LabelPrefix {
    /// The node label for a profile, or `None` when the profile name cannot be a label name
    /// (more than 63 characters, or characters a label name may not have, such as `/`).
    pub fn label_key(&self, profile: &str) -> Option<String> {
        let ok = !profile.is_empty()
            && profile.len() <= 63
            && profile
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && profile.as_bytes()[0].is_ascii_alphanumeric()
            && profile.as_bytes()[profile.len() - 1].is_ascii_alphanumeric();
        ok.then(|| format!("{}/{profile}", self.0))
    }

    /// The annotation that lists everything.
    pub fn annotation_key(&self) -> String {
        format!("{}/{ANNOTATION_NAME}", self.0)
    }

    fn owns(&self, key: &str) -> bool {
        key.strip_prefix(&self.0)
            .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// What `load` hands to `untaint`: the top-level profiles it verified in the kernel, each with
/// the SHA-256 of the file it came from, and the retired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub loader: String,
    pub profiles: BTreeMap<String, String>,
    #[serde(default)]
    pub retired: BTreeSet<String>,
    /// The node's release and the AppArmor `copy` checked our files for, as `copy` found it
    /// (`ubuntu 22.04 (AppArmor 3.0)`, or a release it does not know): empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_os: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "cannot read {path}, where load reports what it loaded: {reason}. The load init \
         container writes it into the pod-local volume both containers mount; check that load \
         ran in this pod with the same --node-report"
    )]
    Read { path: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl crate::exit_code::ExitStatus for ReportError {
    fn exit_code(&self) -> u8 {
        crate::exit_code::INTERNAL
    }
}

/// A set whose node annotation would exceed [`ANNOTATION_BUDGET`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the node annotation that lists these {profiles} profiles{retired_text} would take {bytes} \
     bytes, over the {ANNOTATION_BUDGET} this tool allows it (the API server refuses a node \
     whose annotations together exceed 262144 bytes, and every node has others): untaint could \
     never write it, so nothing was changed. Split the profiles across pools, shorten their \
     names{reboot}"
)]
pub struct ReportTooLarge {
    pub bytes: usize,
    pub profiles: usize,
    retired_text: String,
    reboot: &'static str,
}

impl NodeReport {
    /// The report for a set of files, each with its SHA-256 and the profiles it defines: every
    /// top-level profile with its file's digest (children are not reported).
    pub fn of<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a [ProfileName])>,
        retired: BTreeSet<String>,
    ) -> Self {
        NodeReport {
            loader: env!("CARGO_PKG_VERSION").into(),
            profiles: files
                .into_iter()
                .flat_map(|(sha256, names)| {
                    names
                        .iter()
                        .filter(|n| !n.is_child())
                        .map(move |n| (n.to_string(), format!("sha256:{sha256}")))
                })
                .collect(),
            retired,
            node_os: String::new(),
        }
    }

    /// This report with the node's release, as printable ASCII (anything else shown as `?`, no
    /// quote or backslash to escape) and at most [`NODE_OS_MAX`] characters.
    pub fn with_node_os(mut self, os: &str) -> Self {
        self.node_os = os
            .chars()
            .map(|c| match c {
                ' ' => ' ',
                '"' | '\\' => '?',
                c if c.is_ascii_graphic() => c,
                _ => '?',
            })
            .take(NODE_OS_MAX)
            .collect();
        self
    }

    /// The bytes the annotation takes on a node at most (key and value, as the API server
    /// counts them): with the longest prefix and the longest node release.
    pub fn annotation_bytes(&self) -> usize {
        let mut longest = self.clone();
        longest.node_os = "x".repeat(NODE_OS_MAX);
        MAX_PREFIX_LEN + 1 + ANNOTATION_NAME.len() + annotation_text(&longest).len()
    }

    /// Refuses a report whose annotation would not fit in [`ANNOTATION_BUDGET`].
    pub fn fits(&self) -> Result<(), ReportTooLarge> {
        let bytes = self.annotation_bytes();
        if bytes <= ANNOTATION_BUDGET {
            return Ok(());
        }
        let retired = self.retired.len();
        Err(ReportTooLarge {
            bytes,
            profiles: self.profiles.len(),
            retired_text: if retired > 0 {
                format!(" and {retired} retired ones")
            } else {
                String::new()
            },
            reboot: if retired > 0 {
                ", or reboot the node (drained) to clear the retired ones"
            } else {
                ""
            },
        })
    }

    /// Writes the report atomically (the directory is pod-local).
    pub fn save(&self, path: &Path) -> Result<(), ReportError> {
        let write_err = |source| ReportError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| write_err(std::io::Error::other("not a file name")))?;
        let json = serde_json::to_vec_pretty(self).expect("report serializes");
        crate::host::atomic_file::write(dir, name, &json, 0o644).map_err(write_err)
    }

    /// Reads a report, checking every name as `load` checked it.
    pub fn load(path: &Path) -> Result<Self, ReportError> {
        let read_err = |reason: String| ReportError::Read {
            path: path.display().to_string(),
            reason,
        };
        let bytes = host_file::read(path).map_err(|e| read_err(e.to_string()))?;
        let report: NodeReport =
            serde_json::from_slice(&bytes).map_err(|e| read_err(e.to_string()))?;
        for name in report.profiles.keys().chain(&report.retired) {
            profile::names::check_profile_name(name)
                .map_err(|e| read_err(format!("profile {name:?}: {e}")))?;
        }
        Ok(report)
    }
}

/// The labels and annotation a node should carry under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub prefix: LabelPrefix,
    pub labels: BTreeMap<String, String>,
    pub annotation: String,
    /// Profiles whose name cannot be a label name: in the annotation only.
    pub unlabelled: Vec<String>,
}

impl Desired {
    pub fn from_report(prefix: LabelPrefix, report: &NodeReport) -> Self {
        let mut labels = BTreeMap::new();
        let mut unlabelled = Vec::new();
        for (name, digest) in &report.profiles {
            let short: String = digest
                .trim_start_matches("sha256:")
                .chars()
                .take(LABEL_DIGEST_LEN)
                .collect();
            match prefix.label_key(name) {
                Some(key) => {
                    labels.insert(key, short);
                }
                None => unlabelled.push(name.clone()),
            }
        }
        let annotation = annotation_text(report);
        Desired {
            prefix,
            labels,
            annotation,
            unlabelled,
        }
    }

    /// JSON Patch operations that bring `node`'s labels and annotation under the prefix in
    /// line: labels of profiles that left go, changed digests change, the annotation is set.
    /// Empty when the node already shows exactly this. Labels and annotations outside the
    /// prefix are never touched, and a label under it is removed only when the node's current
    /// annotation (what an earlier `untaint` wrote with it, in the same patch) lists its
    /// profile: a label someone else put under the prefix stays.
    pub fn patch_ops(&self, node: &Node) -> Vec<serde_json::Value> {
        let mut ops = Vec::new();
        let have_labels = node.metadata.labels.clone().unwrap_or_default();
        let have_annotations = node.metadata.annotations.clone().unwrap_or_default();
        let changed_labels: Vec<(&String, &String)> = self
            .labels
            .iter()
            .filter(|(k, v)| have_labels.get(*k) != Some(*v))
            .collect();
        if node.metadata.labels.is_none() && !changed_labels.is_empty() {
            ops.push(serde_json::json!({"op": "add", "path": "/metadata/labels", "value": {}}));
        }
        for (k, v) in changed_labels {
            ops.push(serde_json::json!({"op": "add", "path": label_path("labels", k), "value": v}));
        }
        let ours = self.labelled_before(&have_annotations);
        for k in have_labels.keys() {
            if self.prefix.owns(k) && !self.labels.contains_key(k) && ours.contains(k) {
                ops.push(serde_json::json!({"op": "remove", "path": label_path("labels", k)}));
            }
        }
        let key = self.prefix.annotation_key();
        if have_annotations.get(&key) != Some(&self.annotation) {
            if node.metadata.annotations.is_none() {
                ops.push(
                    serde_json::json!({"op": "add", "path": "/metadata/annotations", "value": {}}),
                );
            }
            ops.push(serde_json::json!({
                "op": "add", "path": label_path("annotations", &key), "value": self.annotation,
            }));
        }
        ops
    }

    /// The labels an earlier `untaint` wrote under the prefix: those of the profiles its
    /// annotation lists. None when the annotation is missing or not ours to read.
    fn labelled_before(&self, annotations: &BTreeMap<String, String>) -> BTreeSet<String> {
        #[derive(Deserialize)]
        struct Written {
            #[serde(default)]
            profiles: BTreeMap<String, serde_json::Value>,
        }
        annotations
            .get(&self.prefix.annotation_key())
            .and_then(|text| serde_json::from_str::<Written>(text).ok())
            .map(|w| {
                w.profiles
                    .keys()
                    .filter_map(|name| self.prefix.label_key(name))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The annotation's value: the whole report, as JSON.
fn annotation_text(report: &NodeReport) -> String {
    let mut text = serde_json::json!({
        "loader": report.loader,
        "profiles": report.profiles,
        "retired": report.retired,
    });
    if !report.node_os.is_empty() {
        text["nodeOS"] = report.node_os.clone().into();
    }
    text.to_string()
}

/// A JSON Pointer to one key of `metadata.<map>` (RFC 6901: `~` → `~0`, `/` → `~1`).
fn label_path(map: &str, key: &str) -> String {
    format!(
        "/metadata/{map}/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn prefix() -> LabelPrefix {
        DEFAULT_PREFIX.parse().unwrap()
    }

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Node {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
        };
        Node {
            metadata: ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    fn report(profiles: &[(&str, &str)], retired: &[&str]) -> NodeReport {
        NodeReport {
            loader: "0.1.0".into(),
            profiles: profiles
                .iter()
                .map(|(n, d)| (n.to_string(), d.to_string()))
                .collect(),
            retired: retired.iter().map(|s| s.to_string()).collect(),
            node_os: String::new(),
        }
    }

    #[test]
    fn prefixes_and_label_names_table() {
        for ok in ["apparmor-profile-loader", "profiles.example.com", "a"] {
            assert!(ok.parse::<LabelPrefix>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "a/b",
            "-a",
            "a-",
            "a..b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<LabelPrefix>().is_err(), "{bad}");
        }
        assert!(
            format!("{}.example.com", "a".repeat(63))
                .parse::<LabelPrefix>()
                .is_ok()
        );
        for reserved in [
            "kubernetes.io",
            "node-restriction.kubernetes.io",
            "node.kubernetes.io",
            "k8s.io",
            "x.k8s.io",
            "kubernetes.azure.com",
        ] {
            let err = reserved.parse::<LabelPrefix>().unwrap_err();
            assert!(err.contains("reserved"), "{reserved}: {err}");
        }
        // Only the domain and its subdomains: a name that merely ends alike is someone's own.
        for own in ["mykubernetes.io", "notk8s.io", "kubernetes.io.example.com"] {
            assert!(own.parse::<LabelPrefix>().is_ok(), "{own}");
        }
        let p = prefix();
        assert_eq!(
            p.label_key("k8s-nginx").as_deref(),
            Some("apparmor-profile-loader/k8s-nginx")
        );
        for unlabelable in ["/usr/bin/foo", "a b", "-x", &"x".repeat(64), "p//hat", ""] {
            assert_eq!(p.label_key(unlabelable), None, "{unlabelable:?}");
        }
    }

    #[test]
    fn patch_adds_changes_and_removes_only_under_the_prefix() {
        let want = Desired::from_report(
            prefix(),
            &report(
                &[
                    ("k8s-a", "sha256:aaaaaaaaaaaaaaaa"),
                    ("/usr/bin/x", "sha256:bbbb"),
                ],
                &["k8s-old"],
            ),
        );
        assert_eq!(want.unlabelled, ["/usr/bin/x"]);
        // A fresh node without labels or annotations.
        let ops = want.patch_ops(&Node::default());
        let paths: Vec<_> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/metadata/labels",
                "/metadata/labels/apparmor-profile-loader~1k8s-a",
                "/metadata/annotations",
                "/metadata/annotations/apparmor-profile-loader~1profiles",
            ]
        );
        assert_eq!(ops[1]["value"], "aaaaaaaaaaaa");
        let annotation: serde_json::Value =
            serde_json::from_str(ops[3]["value"].as_str().unwrap()).unwrap();
        assert_eq!(annotation["retired"], serde_json::json!(["k8s-old"]));
        assert_eq!(annotation["profiles"]["/usr/bin/x"], "sha256:bbbb");

        // A node that shows exactly this: nothing to do.
        let current = node(
            &[
                ("apparmor-profile-loader/k8s-a", "aaaaaaaaaaaa"),
                ("kubernetes.io/os", "linux"),
            ],
            &[("apparmor-profile-loader/profiles", &want.annotation)],
        );
        assert!(want.patch_ops(&current).is_empty());

        // A profile left, another changed; other labels stay, and so does a label under the
        // prefix that the earlier annotation does not list (someone else's).
        let before = Desired::from_report(
            prefix(),
            &report(
                &[("k8s-a", "sha256:0000"), ("k8s-gone", "sha256:1111")],
                &[],
            ),
        );
        let stale = node(
            &[
                ("apparmor-profile-loader/k8s-a", "000000000000"),
                ("apparmor-profile-loader/k8s-gone", "111111111111"),
                ("apparmor-profile-loader/team", "payments"),
                ("apparmor-profile-loader-other/x", "1"),
                ("kubernetes.io/os", "linux"),
            ],
            &[("apparmor-profile-loader/profiles", &before.annotation)],
        );
        let ops = want.patch_ops(&stale);
        assert_eq!(
            &ops[..2],
            [
                serde_json::json!({"op": "add", "path": "/metadata/labels/apparmor-profile-loader~1k8s-a", "value": "aaaaaaaaaaaa"}),
                serde_json::json!({"op": "remove", "path": "/metadata/labels/apparmor-profile-loader~1k8s-gone"}),
            ]
        );
        assert_eq!(ops.len(), 3, "and the annotation: {ops:?}");
        // Without our annotation nothing under the prefix is ours to remove.
        let unknown = node(&[("apparmor-profile-loader/k8s-gone", "1")], &[]);
        assert!(
            want.patch_ops(&unknown)
                .iter()
                .all(|op| op["op"] != "remove"),
        );
    }

    #[test]
    fn reports_round_trip_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loaded-profiles.json");
        let r = report(&[("k8s-a", "sha256:aa")], &["k8s-old"]);
        r.save(&path).unwrap();
        assert_eq!(NodeReport::load(&path).unwrap(), r);
        std::fs::write(
            &path,
            r#"{"loader":"x","profiles":{"unconfined":"sha256:aa"}}"#,
        )
        .unwrap();
        assert!(NodeReport::load(&path).is_err());
        let err = NodeReport::load(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("--node-report"), "{err}");
    }

    #[test]
    fn a_report_fits_up_to_the_budget_byte_for_byte() {
        let name = |i: usize, len: usize| {
            let stem = format!("/opt/app/{i:05}/");
            ProfileName::try_from(format!("{stem}{}", "b".repeat(len - stem.len()))).unwrap()
        };
        let sha = "a".repeat(64);
        let report_of = |n: usize, last_len: usize| {
            let names: Vec<Vec<ProfileName>> = (0..n)
                .map(|i| vec![name(i, if i == n - 1 { last_len } else { 200 })])
                .collect();
            NodeReport::of(
                names.iter().map(|v| (sha.as_str(), v.as_slice())),
                BTreeSet::new(),
            )
        };
        // Find the set whose annotation is exactly the budget: grow the last name byte by byte.
        let per_entry = report_of(2, 200).annotation_bytes() - report_of(1, 200).annotation_bytes();
        let mut n = (ANNOTATION_BUDGET - report_of(1, 100).annotation_bytes()) / per_entry;
        while report_of(n + 1, 100).annotation_bytes() <= ANNOTATION_BUDGET {
            n += 1;
        }
        let base = report_of(n, 100).annotation_bytes();
        let exact = report_of(n, 100 + ANNOTATION_BUDGET - base);
        assert_eq!(exact.annotation_bytes(), ANNOTATION_BUDGET);
        assert!(exact.fits().is_ok());
        let over = report_of(n, 101 + ANNOTATION_BUDGET - base);
        let err = over.fits().unwrap_err().to_string();
        assert!(
            err.contains(&format!("{} bytes", ANNOTATION_BUDGET + 1)),
            "{err}"
        );
        // Retired names count too, and the message says how to clear them.
        let mut with_retired = exact.clone();
        with_retired.retired.insert("k8s-old".into());
        let err = with_retired.fits().unwrap_err().to_string();
        assert!(err.contains("1 retired") && err.contains("reboot"), "{err}");
        // The key counted is the longest one a prefix can make.
        let longest = [63, 63, 63, 61].map(|n| "a".repeat(n)).join(".");
        assert_eq!(longest.len(), MAX_PREFIX_LEN);
        let p: LabelPrefix = longest.parse().unwrap();
        let desired =
            Desired::from_report(p.clone(), &exact.clone().with_node_os(&"o".repeat(500)));
        assert_eq!(
            p.annotation_key().len() + desired.annotation.len(),
            ANNOTATION_BUDGET
        );
    }
}
