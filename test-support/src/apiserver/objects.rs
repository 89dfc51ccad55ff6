//! Objects as the tests send them: the manifests rendered like `kubectl apply` would, applied
//! with strict field validation, and JSON Patches.

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::Value;

use super::{FIELD_MANAGER, Harness, POLICY, SA};

/// A JSON Patch from its JSON form, e.g. `json_patch(json!([{"op": "remove", "path": …}]))`.
pub fn json_patch<P: serde::Serialize>(ops: Value) -> Patch<P> {
    Patch::Json(serde_json::from_value(ops).expect("a JSON Patch"))
}

/// YAML files of manifests/ (recursively), kustomize's own files (`kustomization.yaml`, the
/// transformer configuration `kustomizeconfig.yaml`), `examples/` (objects of other projects'
/// CRDs, which this server does not serve; `tests/deploy/test_gate_examples.py` validates them
/// against those CRDs) and `node-condition/` (an opt-in component, not in the default build:
/// its RBAC is what the default build must not grant) excluded.
pub fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if name != "examples" && name != "node-condition" {
                out.extend(manifest_files(&p));
            }
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && !name.starts_with("kustomization.")
            && !name.starts_with("kustomizeconfig.")
        {
            out.push(p);
        }
    }
    out
}

/// Objects of a kustomization directory (built by kustomize's library, as `kubectl kustomize`)
/// or of a YAML file, via the harness' `render`.
pub fn render(h: &Harness, path: &Path) -> Vec<Value> {
    let out = h
        .tool(&["render", &path.to_string_lossy()], "")
        .unwrap_or_else(|e| panic!("render {}: {e}", path.display()));
    match serde_json::from_str(&out) {
        Ok(Value::Array(objs)) => objs,
        other => panic!("render {}: not a JSON array: {other:?}", path.display()),
    }
}

/// An operator's overlay of manifests/: `namespace: <namespace>`, `resources: [<repo>/manifests]`,
/// `components` of manifests/ (e.g. `node-condition`) and, when not empty, `namePrefix` and
/// `nameSuffix`; nothing else.
#[derive(Clone, Copy, Debug)]
pub struct Overlay<'a> {
    pub namespace: &'a str,
    pub components: &'a [&'a str],
    pub name_prefix: &'a str,
    pub name_suffix: &'a str,
}

impl<'a> Overlay<'a> {
    /// The overlay that only moves the installation to `namespace`.
    pub fn in_namespace(namespace: &'a str) -> Overlay<'a> {
        Overlay {
            namespace,
            components: &[],
            name_prefix: "",
            name_suffix: "",
        }
    }

    /// An object of manifests/ named `name` there, as this overlay names it.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}{}", self.name_prefix, self.name_suffix)
    }

    /// The loader's ServiceAccount as this overlay names it.
    pub fn service_account(&self) -> String {
        self.name(SA)
    }

    /// The admission policy as this overlay names it.
    pub fn policy(&self) -> String {
        self.name(POLICY)
    }

    fn kustomization(&self, base: &Path) -> String {
        let mut k = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             namespace: {}\nresources:\n  - {}\n",
            self.namespace,
            base.display()
        );
        if !self.name_prefix.is_empty() {
            k.push_str(&format!("namePrefix: {}\n", self.name_prefix));
        }
        if !self.name_suffix.is_empty() {
            k.push_str(&format!("nameSuffix: {}\n", self.name_suffix));
        }
        if !self.components.is_empty() {
            k.push_str("components:\n");
            for c in self.components {
                k.push_str(&format!("  - {}\n", base.join(c).display()));
            }
        }
        k
    }
}

/// The objects of manifests/ as `overlay` renders them.
pub fn render_overlay(h: &Harness, overlay: &Overlay) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifests = super::repo_root().join("manifests");
    // kustomize takes a base by relative path only.
    let up = dir.path().components().count() - 1;
    let base = Path::new(&"../".repeat(up)).join(manifests.strip_prefix("/").expect("absolute"));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        overlay.kustomization(&base),
    )
    .expect("overlay");
    render(h, dir.path())
}

/// `Kind/namespace/name` (or `Kind/name`) of an object, for messages.
pub fn object_ref(obj: &Value) -> String {
    let m = &obj["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{}/{ns}/{}", obj["kind"].as_str().unwrap_or("?"), m["name"]),
        None => format!("{}/{}", obj["kind"].as_str().unwrap_or("?"), m["name"]),
    }
    .replace('"', "")
}

/// The group, version and kind an object states.
pub fn gvk_of(obj: &Value) -> GroupVersionKind {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, obj["kind"].as_str().unwrap_or_default())
}

/// Whether the server serves this kind per namespace (discovery).
pub async fn is_namespaced(client: &kube::Client, obj: &Value) -> bool {
    kube::discovery::pinned_kind(client, &gvk_of(obj))
        .await
        .map(|(_, caps)| caps.scope == Scope::Namespaced)
        .unwrap_or(false)
}

/// Server-side apply with fieldValidation=Strict (unknown or duplicate fields are errors).
pub async fn apply(client: &kube::Client, obj: &Value) -> Result<DynamicObject, String> {
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk_of(obj))
        .await
        .map_err(|e| format!("discovery: {e}"))?;
    let name = obj["metadata"]["name"].as_str().ok_or("no metadata.name")?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .ok_or("namespaced object without metadata.namespace")?;
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let pp = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .map_err(|e| e.to_string())
}
