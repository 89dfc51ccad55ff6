//! ConfigMap keys: which may become files in the host's profile directory. A key becomes a
//! top-level file name there, which the host's boot-time `apparmor_parser` must also read; the
//! same rules check the keys of the volume and the records read back from the host.

/// Suffixes `apparmor_parser` skips when it loads a directory (as Ubuntu's `apparmor.service`
/// does at boot). A file with such a name would be loaded by us but not after a reboot.
const PARSER_SKIPPED_SUFFIXES: &[&str] = &[
    ".dpkg-new",
    ".dpkg-old",
    ".dpkg-dist",
    ".dpkg-bak",
    ".dpkg-remove",
    ".pacsave",
    ".pacnew",
    ".rpmnew",
    ".rpmsave",
    ".orig",
    ".rej",
];

/// Longest key a ConfigMap accepts; also keeps file names well below NAME_MAX.
const MAX_KEY_LEN: usize = 253;

/// A ConfigMap key that passed [`validate_key`]: safe as a top-level file name in the host's
/// profile directory, and one the host's boot-time parser reads. Made only through
/// `TryFrom<String>`, so a record read back from the host is checked as it is parsed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

/// A string that is not a [`Key`], and the first rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key:?} is not a file name this tool writes: {reason}")]
pub struct BadKey {
    pub key: String,
    pub reason: String,
}

crate::profile::validated_string!(Key, BadKey { key }, validate_key);

/// A key is a file name in the profile directory.
impl AsRef<std::path::Path> for Key {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

/// Checks that a ConfigMap key can safely become a top-level file name in the host's
/// profile directory, and that `apparmor_parser` will read it when the host boots.
///
/// Returns the reason for the first rule the key breaks.
fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the name is empty".into());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("the name is longer than {MAX_KEY_LEN} bytes"));
    }
    if key.contains('/') {
        return Err("the name contains '/': profiles are written as top-level files only".into());
    }
    if key.contains("..") {
        return Err("the name contains '..'".into());
    }
    let first = key.chars().next().unwrap_or('.');
    if !first.is_ascii_alphanumeric() {
        return Err(
            "the name must start with a letter or digit (apparmor_parser skips dot-files)".into(),
        );
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the name contains {bad:?}; allowed are letters, digits, '.', '_' and '-'"
        ));
    }
    match parser_skips(key) {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

/// Why `apparmor_parser` skips a file of this name when it loads a directory (as the host's
/// boot-time `apparmor.service` does), or `None` when it reads it.
pub fn parser_skips(name: &str) -> Option<String> {
    if name.starts_with('.') {
        return Some("apparmor_parser skips dot-files when it loads a directory".into());
    }
    if name.ends_with('~') {
        return Some("apparmor_parser skips backup files ending in ~".into());
    }
    if name == "README" {
        return Some("apparmor_parser skips a file named README when it loads a directory".into());
    }
    PARSER_SKIPPED_SUFFIXES
        .iter()
        .find(|s| name.ends_with(*s))
        .map(|suffix| {
            format!(
                "apparmor_parser skips files ending in {suffix} when it loads a directory at boot"
            )
        })
}

/// Keys that are Kubernetes manifests living beside the profiles (this repository keeps
/// `profiles.yaml` and `kustomization.yaml` in `profiles/`), not profiles.
pub fn is_manifest_key(key: &str) -> bool {
    key.ends_with(".yaml") || key.ends_with(".yml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    #[test]
    fn key_rules() {
        let cases: &[(&str, bool)] = &[
            ("k8s-nginx", true),
            ("usr.bin.foo", true),
            ("A_1-b.c", true),
            ("", false),
            (".hidden", false),
            ("..data", false),
            ("../x", false),
            ("a/b", false),
            ("/etc/passwd", false),
            ("a..b", false),
            ("-flag", false),
            ("_x", false),
            ("sp ace", false),
            ("tilde~", false),
            ("README", false),
            ("x.dpkg-new", false),
            ("x.dpkg-old", false),
            ("x.rpmnew", false),
            ("x.orig", false),
            ("x.rej", false),
            ("x.pacsave", false),
            ("ümlaut", false),
        ];
        for (key, ok) in cases {
            assert_eq!(validate_key(key).is_ok(), *ok, "key {key:?}");
        }
        assert!(validate_key(&"a".repeat(254)).is_err());
        assert!(validate_key(&"a".repeat(253)).is_ok());
        assert_eq!(Key::try_from("k8s-nginx").unwrap().as_str(), "k8s-nginx");
        let err = Key::try_from("../x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"../x\" is not a file name this tool writes: the name contains '/': profiles \
             are written as top-level files only"
        );
    }

    #[test]
    fn boot_loader_skip_rule() {
        for skipped in [
            ".hidden",
            "x~",
            "README",
            "x.dpkg-new",
            "x.rpmsave",
            "x.pacnew",
            "x.rej",
        ] {
            assert!(parser_skips(skipped).is_some(), "{skipped}");
        }
        // Read by the boot loader even though copy would not accept them as keys.
        for read in ["usr.bin.foo+bar", "README.md", "x.orig.d", "_private"] {
            assert_eq!(parser_skips(read), None, "{read}");
        }
    }

    proptest! {
        #[test]
        fn accepted_keys_are_plain_top_level_names(key in "\\PC{0,40}") {
            if validate_key(&key).is_ok() {
                prop_assert!(!key.contains('/'));
                prop_assert!(!key.contains(".."));
                prop_assert!(!key.starts_with('.'));
                let joined = Path::new("/dest").join(&key);
                prop_assert_eq!(joined.parent(), Some(Path::new("/dest")));
            }
        }

        #[test]
        fn keys_from_the_allowed_alphabet_are_accepted(key in "[A-Za-z0-9][A-Za-z0-9_-]{0,30}") {
            prop_assume!(key != "README");
            prop_assert!(validate_key(&key).is_ok());
        }
    }
}
