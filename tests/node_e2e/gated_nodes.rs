//! Nodes B and C: a broken ConfigMap keeps the gate shut (scenario 3); the autoscaler-prefixed gate taint (scenario 6).

use super::*;

// === node B: a broken ConfigMap keeps the gate shut ==============================================

/// Scenario 3: a broken ConfigMap keeps node `b` (an AppArmor 3 node) tainted with the reason in the
/// pod status, so does a 4.0-only profile; fixing the ConfigMap releases it.
pub(crate) fn scenario_3(c: &Cluster, f: &mut Findings, b: &str) -> Result<(), String> {
    let good = configmap(c)?;
    let mut broken = good.clone();
    broken["data"]["aapl-broken"] = Value::String(
        "abi <abi/3.0>,\n#include <tunables/global>\nprofile aapl-broken {\n  /etc/** rw\n  this is not a rule,\n}\n"
            .into(),
    );
    strip_meta(&mut broken);
    c.cp.apply(&[broken])?;
    // node B boots AppArmor 3 (Ubuntu 22.04, single-quoted as os-release(5) allows, behind Ubuntu's link)
    c.guest.out(UBUNTU_2204);
    let pods_before = c.pods.len();
    let (ni, _) = register(c, b, &format!("{GATE}=true:NoSchedule"))?;
    // copy fails; the kubelet restarts it with back-off: wait for the second failure
    let failed = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p) && on_node(p, b) && copy_failures(p) >= 2
    });
    let Some((_, _, lp)) = failed else {
        return Err(format!(
            "the loader pod on {b} never failed twice; {}",
            loader_pod_summary(c, b)
        ));
    };
    let node = c.cp.get_json(&["node", b])?;
    f.check(
        "3",
        taint_keys(&node).iter().any(|k| k == GATE),
        format!(
            "{b} keeps the gate taint while the ConfigMap is broken (taints {:?})",
            taint_keys(&node)
        ),
    );
    let wl = c.cp.get_json(&["pods", "-n", WORKLOAD_NS])?;
    let wl_items = wl["items"].as_array().cloned().unwrap_or_default();
    f.check(
        "3",
        !wl_items.is_empty()
            && wl_items
                .iter()
                .all(|p| p["status"]["phase"] == "Pending" && p["spec"]["nodeName"].is_null()),
        format!(
            "the workload stays Pending and unbound: {:?}",
            wl_items
                .iter()
                .map(|p| format!(
                    "{} {} {}",
                    name(p),
                    p["status"]["phase"],
                    p["spec"]["nodeName"]
                ))
                .collect::<Vec<_>>()
        ),
    );
    let msg = copy_message(&lp);
    f.check(
        "3",
        msg.contains("aapl-broken"),
        format!("the loader pod's status names the broken key without kubectl logs: {msg:?}"),
    );
    let describe =
        c.cp.kubectl(&["describe", "pod", "-n", "kube-system", name(&lp)], None)
            .unwrap_or_default();
    f.check(
        "3",
        describe.contains("aapl-broken"),
        "`kubectl describe pod` shows the reason",
    );
    // The operator fixes the syntax, but the profile now asks for AppArmor 4 (`userns,`): the image's 4.1
    // parser compiles it, the node's own AppArmor 3 boot could not. copy refuses it, the node stays gated.
    let lp = scenario_3_reboot_parity(c, f, b, &good, &lp)?;
    // the operator fixes the ConfigMap and restarts the pod
    let mut fixed = good;
    strip_meta(&mut fixed);
    c.cp.kubectl(&["replace", "-f", "-"], Some(&fixed.to_string()))?;
    c.cp.kubectl(
        &[
            "delete",
            "pod",
            "-n",
            "kube-system",
            name(&lp),
            "--wait=false",
        ],
        None,
    )?;
    let released = c.nodes.wait(ni, *WAIT, gate_released(b, GATE));
    if released.is_none() {
        save_guest_diag(c, b);
    }
    f.check(
        "3",
        released.is_some(),
        format!("fixing the ConfigMap and restarting the pod released {b}"),
    );
    workload_runs_on(c, f, "3", pods_before, b);

    Ok(())
}

/// The guest's release as one of AKS's node images, or back to its own (Debian 13, AppArmor 4.1):
/// what the DaemonSet's `/etc/os-release` mount shows `copy` (Ubuntu's link to
/// `../usr/lib/os-release`, single-quoted values as os-release(5) allows).
pub(crate) const UBUNTU_2204: &str =
    "printf \"NAME='Ubuntu'\\nID='ubuntu'\\nVERSION_ID='22.04'\\n\" >/usr/lib/os-release";
pub(crate) const DEBIAN_13: &str = "printf 'ID=debian\\nVERSION_ID=\"13\"\\n' >/usr/lib/os-release";
pub(crate) const AZURE_LINUX_3: &str = "printf 'NAME=\"Microsoft Azure Linux\"\\nID=azurelinux\\nVERSION_ID=\"3.0\"\\n' >/usr/lib/os-release";
pub(crate) const UBUNTU_2404: &str = "printf 'NAME=\"Ubuntu\"\\nID=ubuntu\\nVERSION_ID=\"24.04\"\\nUBUNTU_CODENAME=noble\\n' >/usr/lib/os-release";

/// Scenario 3, second half: on an AppArmor 3 node, a profile only AppArmor 4 can read keeps the
/// gate shut, with the reason in `kubectl describe pod`. Returns the pod that refused it.
pub(crate) fn scenario_3_reboot_parity(
    c: &Cluster,
    f: &mut Findings,
    node: &str,
    good: &Value,
    failed_pod: &Value,
) -> Result<Value, String> {
    let mut v4_only = good.clone();
    v4_only["data"]["aapl-userns"] = Value::String(
        "abi <abi/4.0>,\ninclude <tunables/global>\nprofile aapl-userns {\n  userns,\n  /tmp/** rw,\n}\n"
            .into(),
    );
    strip_meta(&mut v4_only);
    c.cp.kubectl(&["replace", "-f", "-"], Some(&v4_only.to_string()))?;
    let lp =
        restart_until_copy_refuses(c, node, failed_pod, &["aapl-userns"], "the AppArmor 3 node")?;
    let n = c.cp.get_json(&["node", node])?;
    f.check(
        "3",
        taint_keys(&n).iter().any(|k| k == GATE),
        format!(
            "{node} (Ubuntu 22.04) keeps the gate taint while a profile needs AppArmor 4 (taints {:?})",
            taint_keys(&n)
        ),
    );
    let describe =
        c.cp.kubectl(&["describe", "pod", "-n", "kube-system", name(&lp)], None)
            .unwrap_or_default();
    f.check(
        "3",
        describe.contains("ubuntu 22.04") && describe.contains("AppArmor 3"),
        format!(
            "`kubectl describe pod` says the node's own AppArmor 3 boot cannot load it: {:?}",
            copy_message(&lp)
        ),
    );
    // The same node as Azure Linux 3 (AppArmor 3.1): refused just the same, and said so.
    c.guest.out(AZURE_LINUX_3);
    let lp = restart_until_copy_refuses(
        c,
        node,
        &lp,
        &["aapl-userns", "azurelinux 3.0 (AppArmor 3.1)"],
        "the Azure Linux 3 node",
    )?;
    let n = c.cp.get_json(&["node", node])?;
    f.check(
        "3",
        taint_keys(&n).iter().any(|k| k == GATE),
        format!(
            "as Azure Linux 3 (AppArmor 3.1), {node} keeps the gate too, and the pod says why: {:?}",
            copy_message(&lp)
        ),
    );
    Ok(lp)
}

/// Deletes the loader pod `pod` on `node`, as an operator restarting it would, and waits for the
/// DaemonSet's new pod to fail in `copy` with a message holding each of `says` (`what` names the
/// node in the error when it never does). Returns that pod.
fn restart_until_copy_refuses(
    c: &Cluster,
    node: &str,
    pod: &Value,
    says: &[&str],
    what: &str,
) -> Result<Value, String> {
    let pods_before = c.pods.len();
    c.cp.kubectl(
        &[
            "delete",
            "pod",
            "-n",
            "kube-system",
            name(pod),
            "--wait=false",
        ],
        None,
    )?;
    let refused = c.pods.wait(pods_before, *WAIT, |p| {
        is_loader(p)
            && on_node(p, node)
            && copy_failures(p) >= 1
            && says.iter().all(|s| copy_message(p).contains(s))
    });
    match refused {
        Some((_, _, lp)) => Ok(lp),
        None => Err(format!(
            "copy on {what} {node} never refused the 4.0-only profile; {}",
            loader_pod_summary(c, node)
        )),
    }
}

// === node C: the autoscaler-prefixed gate taint ==================================================

/// Scenario 6: the autoscaler-prefixed gate taint on node `cn` is released the same way.
pub(crate) fn scenario_6(c: &Cluster, f: &mut Findings, cn: &str) -> Result<(), String> {
    let pods_before = c.pods.len();
    let (ni, reg) = register(c, cn, &format!("{AUTOSCALER_GATE}=true:NoSchedule"))?;
    let released = registered_with_then_released(c, f, "6", ni, cn, AUTOSCALER_GATE);
    if released.is_none() {
        save_guest_diag(c, cn);
    }
    f.check(
        "6",
        released.is_some(),
        format!(
            "the prefixed gate taint was removed from {cn}{}",
            released
                .as_ref()
                .map(|(_, at, _)| format!(" after {:.1}s", (*at - reg).as_secs_f64()))
                .unwrap_or_default()
        ),
    );
    // Node C runs as Ubuntu 24.04 (AppArmor 4.0): copy checks with 4.1 only, and the node's
    // annotation says what copy found.
    let annotation = c.cp.get_json(&["node", cn]).ok().and_then(|n| {
        n["metadata"]["annotations"]["apparmor-profile-loader/profiles"]
            .as_str()
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
    });
    let node_os = annotation
        .as_ref()
        .map(|a| a["nodeOS"].clone())
        .unwrap_or_default();
    f.check(
        "6",
        node_os == "ubuntu 24.04 (AppArmor 4.0)",
        format!("{cn}'s annotation names the release copy found through the DaemonSet's os-release mount: {node_os}"),
    );
    let wl = workload_runs_on(c, f, "6", pods_before, cn);
    if let (Some((_, rel_at, _)), Some((_, _, _))) = (&released, &wl) {
        let early = c
            .pods
            .between(pods_before, c.pods.len())
            .iter()
            .zip(pods_before..)
            .any(|(p, i)| {
                is_workload(p) && p["spec"]["nodeName"] == cn && c.pods_event_time(i) < *rel_at
            });
        f.check(
            "6",
            !early,
            "no workload pod was bound to the node while the prefixed taint was there",
        );
    }

    Ok(())
}
