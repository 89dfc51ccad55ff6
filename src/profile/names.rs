//! Which AppArmor profile names this tool handles end to end: it can load them, find them in the
//! kernel's profile list, verify their mode and unload them again.
//!
//! One rule set, used wherever a name enters the tool: `validate` (a name in a profile file),
//! and the records read back from the host (`state`), so a name is never loaded, verified or
//! unloaded unless this tool could have proven it.

/// Longest profile name accepted, in bytes. The kernel has no small limit, but a name this long
/// is a mistake or an attack, and every name is logged and kept in the records.
pub const MAX_PROFILE_NAME_LEN: usize = 1024;

/// Separator between a profile and its child profile or hat in the kernel's names (`p//hat`).
const CHILD_SEPARATOR: &str = "//";

/// The kernel's own name for "no confinement". A profile of that name would make
/// `localhostProfile: unconfined` mean something on our nodes that it means nowhere else.
pub const UNCONFINED: &str = "unconfined";

/// Name prefixes of the default profiles container runtimes load themselves (Docker, containerd's
/// CRI plugin, CRI-O, Podman/Buildah). Loading, replacing or unloading one would change the
/// confinement of every container on the node, so such names are never ours.
pub const RUNTIME_DEFAULT_PROFILES: &[&str] = &[
    "docker-default",
    "cri-containerd.apparmor.d",
    "crio-default",
    "containers-default-",
];

/// A profile name that passed [`check_profile_name`]: one this tool can load, find in the
/// kernel's list, verify and replace. Made only through `TryFrom<String>`, so names from the
/// parser and from the records read back from the host are checked where they enter.
///
/// The kernel's own list holds other people's names too (`docker-default`), so it stays keyed
/// by plain strings; a `ProfileName` looks itself up there as a `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProfileName(String);

/// A string that is not a [`ProfileName`], and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {name:?}, a name this tool never loads: {reason}")]
pub struct BadProfileName {
    pub name: String,
    pub reason: String,
}

crate::profile::validated_string!(ProfileName, BadProfileName { name }, check_profile_name);

impl ProfileName {
    /// Whether this is a child profile or hat (`parent//child`).
    pub fn is_child(&self) -> bool {
        self.0.contains(CHILD_SEPARATOR)
    }
}

/// Why a profile name is one this tool refuses, or `Ok` when it is handled end to end.
///
/// Refused: an empty name; control characters (a newline would split the kernel's profile list
/// and our logs); a policy namespace prefix (`:ns:name` — loading it works, but it is listed
/// and removed through the namespace, which this tool does not manage); an empty `//`
/// segment (`a//`, `//b`, `a////b`), which names no profile; a segment that starts or ends
/// with whitespace (any Unicode space: the kernel keeps it, so `" k8s-web"` is not `k8s-web`,
/// and a person reading logs cannot tell them apart); `unconfined` ([`UNCONFINED`]); the
/// names of container runtimes' own profiles ([`RUNTIME_DEFAULT_PROFILES`]); and names longer
/// than [`MAX_PROFILE_NAME_LEN`] bytes.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the profile name is empty".into());
    }
    if name.len() > MAX_PROFILE_NAME_LEN {
        return Err(format!(
            "the profile name is {} bytes long; at most {MAX_PROFILE_NAME_LEN} are accepted",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the profile name contains the control character {c:?}; names must be printable"
        ));
    }
    if name.starts_with(':') {
        return Err(
            "the profile name starts with ':', a policy namespace (:ns:name); this tool loads \
             profiles into the root namespace only"
                .into(),
        );
    }
    if name.split(CHILD_SEPARATOR).any(str::is_empty) {
        return Err(
            "the profile name has an empty '//' segment; a child profile or hat is written \
             parent//child"
                .into(),
        );
    }
    if name
        .split(CHILD_SEPARATOR)
        .any(|s| s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace))
    {
        return Err(
            "the profile name starts or ends with whitespace; the kernel keeps it as part of \
             the name, so it would be a different profile from the one it looks like. Remove \
             the spaces inside the quotes"
                .into(),
        );
    }
    if name == UNCONFINED {
        return Err(format!(
            "{UNCONFINED:?} is the kernel's own name for no confinement; a profile of that name \
             would make `localhostProfile: {UNCONFINED}` mean something else on these nodes \
             than anywhere else. Choose another name"
        ));
    }
    if let Some(prefix) = RUNTIME_DEFAULT_PROFILES
        .iter()
        .find(|r| name.starts_with(*r))
    {
        return Err(format!(
            "it has the name of a container runtime's default profile ({prefix}…); loading, \
             replacing or unloading it would change the confinement of every container on the \
             node"
        ));
    }
    Ok(())
}

/// Checks that every child (`a//b`, `a//b//c`) has its parent (`a`, `a//b`) in the same set:
/// the kernel only has a child under a loaded parent, so a parentless child can never be
/// verified or removed. Names are assumed to have passed [`check_profile_name`].
pub fn check_name_set<N: AsRef<str>>(names: &[N]) -> Result<(), String> {
    let set: std::collections::BTreeSet<&str> = names.iter().map(AsRef::as_ref).collect();
    for name in names.iter().map(AsRef::as_ref) {
        if let Some((parent, _)) = name.rsplit_once(CHILD_SEPARATOR)
            && !set.contains(parent)
        {
            return Err(format!(
                "{name:?} is a child of {parent:?}, which is not defined alongside it"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_table() {
        let long = "p".repeat(MAX_PROFILE_NAME_LEN);
        let too_long = "p".repeat(MAX_PROFILE_NAME_LEN + 1);
        let cases: &[(&str, Option<&str>)] = &[
            ("p", None),
            ("custom.nginx", None),
            ("/usr/bin/foo", None),
            ("p//hat", None),
            ("p//kid//grandkid", None),
            ("name with spaces", None),
            ("p//^not-a-hat-marker-but-fine", None),
            (&long, None),
            ("", Some("empty")),
            ("a\nb", Some("control character")),
            ("a\tb", Some("control character")),
            ("a\u{7f}", Some("control character")),
            ("a\u{85}b", Some("control character")),
            (":ns1:name", Some("namespace")),
            (":ns1://p", Some("namespace")),
            ("a//", Some("empty '//' segment")),
            ("//b", Some("empty '//' segment")),
            ("a////b", Some("empty '//' segment")),
            (&too_long, Some("at most 1024")),
            (" k8s-web", Some("whitespace")),
            ("k8s-web ", Some("whitespace")),
            ("k8s-web\u{3000}", Some("whitespace")),
            ("\u{a0}k8s-web", Some("whitespace")),
            ("p// hat", Some("whitespace")),
            ("p//hat ", Some("whitespace")),
            ("unconfined", Some("no confinement")),
            ("p//unconfined", None),
            ("unconfined-ish", None),
            ("cri-containerd.apparmor.d", Some("container runtime")),
            ("docker-default", Some("container runtime")),
            ("containers-default-0.50.1", Some("container runtime")),
        ];
        for (name, want) in cases {
            match (check_profile_name(name), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{name:?}: {e}"),
                (got, _) => panic!("{name:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn name_sets_table() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_name_set(&set(&[])).is_ok());
        assert!(check_name_set(&set(&["a", "a//b", "a//b//c", "z"])).is_ok());
        assert!(
            check_name_set(&set(&["a//b", "a"])).is_ok(),
            "order is free"
        );
        let err = check_name_set(&set(&["a//b"])).unwrap_err();
        assert!(err.contains("\"a\""), "{err}");
        let err = check_name_set(&set(&["a", "a//b//c"])).unwrap_err();
        assert!(err.contains("\"a//b\""), "{err}");
        assert!(check_name_set(&set(&["hostprof//x", "mine"])).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_and_refuses_every_control_character(s in "\\PC{0,40}", c in any::<char>()) {
            let _ = check_profile_name(&s);
            let with = format!("{s}{c}");
            if c.is_control() {
                prop_assert!(check_profile_name(&with).is_err());
            }
        }

        #[test]
        fn accepted_names_have_no_namespace_or_empty_segment(s in "[a-z:/\\n]{0,12}") {
            if check_profile_name(&s).is_ok() {
                prop_assert!(!s.is_empty() && !s.starts_with(':') && !s.contains('\n'));
                prop_assert!(s.split("//").all(|seg| !seg.is_empty()));
            }
        }

        #[test]
        fn a_tree_of_valid_names_is_a_valid_set(
            roots in proptest::collection::vec("[a-z][a-z0-9.-]{0,8}", 1..4),
            kids in proptest::collection::vec("[a-z^][a-z0-9]{0,5}", 0..4),
        ) {
            let mut names = roots.clone();
            for (i, k) in kids.iter().enumerate() {
                let parent = &roots[i % roots.len()];
                names.push(format!("{parent}//{k}"));
            }
            for n in &names {
                prop_assert!(check_profile_name(n).is_ok(), "{n:?}");
            }
            prop_assert!(check_name_set(&names).is_ok());
            // Dropping every root leaves each child without a parent.
            let children: Vec<String> = names.iter().filter(|n| n.contains("//")).cloned().collect();
            if !children.is_empty() {
                prop_assert!(check_name_set(&children).is_err());
            }
        }
    }
}
